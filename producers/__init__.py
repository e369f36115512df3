"""The crawler: a city's sight names (Wikidata, or Google Maps with MAPS_KEY), then licensed images of each sight
from Wikimedia Commons, checked and stored in the warehouse. See producers/README.md."""
