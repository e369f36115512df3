"""The offline demo and the synthetic city it runs on (also the tests' and benchmarks' stand-in for the web).

    city         render a synthetic city: photos with boxes (COCO-style) and a webcam clip with per-frame truth
    web_sources  local Wikidata, Commons and Maps APIs serving a rendered city to the crawler
    background   an aiohttp app served from a background thread (the web sources, the tests' Vision server)
    scoring      recognition scored on a clip: is the top detection the sight in view, and where
    system       `sightscan demo`: the whole system learns the city from those sources
"""
