"""The crawler's own settings from environment variables (the pattern of sightscan.config; shared ones live there).

Every source's base URL is configurable so tests (and mirrors) can point the crawler at a local server; the
defaults are the real public endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from sightscan.config import (
    ServiceSettings,
    boolean,
    consumer_group,
    non_negative_float,
    non_negative_int,
    one_of,
    positive_float,
    positive_int,
)
from sightscan.config import env_field as _env

SIGHT_SOURCES = ("auto", "wikidata", "maps")


def _url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return raw.rstrip("/")


@dataclass(frozen=True)
class CrawlerSettings(ServiceSettings):
    # Sources.
    wikidata_api_url: str = _env("WIKIDATA_API_URL", "https://www.wikidata.org/w/api.php", _url,
                                 "Wikidata MediaWiki API (wbsearchentities: the city's item)")
    wikidata_sparql_url: str = _env("WIKIDATA_SPARQL_URL", "https://query.wikidata.org/sparql", _url,
                                    "Wikidata Query Service (SPARQL: the city's sights)")
    commons_api_url: str = _env("COMMONS_API_URL", "https://commons.wikimedia.org/w/api.php", _url,
                                "Wikimedia Commons MediaWiki API (images, licences, authors)")
    maps_api_url: str = _env("MAPS_API_URL", "https://maps.googleapis.com", _url,
                             "Google Maps Platform base URL (Places Text Search)")
    maps_key: str = _env("MAPS_KEY", "", doc="Google Maps key; set: sight names come from Places Text Search")
    sight_source: str = _env("CRAWLER_SIGHT_SOURCE", "auto", one_of(*SIGHT_SOURCES),
                             "where sight names come from: auto (maps when MAPS_KEY is set, else wikidata), "
                             "wikidata, maps")
    language: str = _env("CRAWLER_LANGUAGE", "en", doc="language of sight names (Wikidata labels, Maps results)")
    user_agent: str = _env("CRAWLER_USER_AGENT", "SightScan/0.1 (sight image crawler; python-scrapy)",
                           doc="User-Agent of every request; Wikimedia asks for contact details in it")

    # Politeness (scrapy's own settings; see producers/spider.py).
    threads: int = _env("CRAWLER_THREADS", 4, positive_int, "concurrent downloads in all (CONCURRENT_REQUESTS)")
    per_host: int = _env("CRAWLER_PER_HOST", 2, positive_int,
                         "concurrent downloads per host (CONCURRENT_REQUESTS_PER_DOMAIN)")
    download_delay_s: float = _env("CRAWLER_DOWNLOAD_DELAY_S", 0.5, non_negative_float,
                                   "least delay between requests to one host (DOWNLOAD_DELAY)")
    autothrottle: bool = _env("CRAWLER_AUTOTHROTTLE", "true", boolean,
                              "adapt the per-host delay to the server's latency (AutoThrottle)")
    max_delay_s: float = _env("CRAWLER_MAX_DELAY_S", 30.0, positive_float,
                              "largest per-host delay AutoThrottle may back off to")
    download_timeout_s: float = _env("CRAWLER_DOWNLOAD_TIMEOUT_S", 30.0, positive_float,
                                     "seconds before a request times out (DOWNLOAD_TIMEOUT)")
    retry_times: int = _env("CRAWLER_RETRY_TIMES", 3, non_negative_int,
                            "retries of a request that failed with 5xx/429/timeout (RETRY_TIMES)")

    # Images.
    thumb_width: int = _env("CRAWLER_THUMB_WIDTH", 640, positive_int,
                            "width of the thumbnails fetched (Commons iiurlwidth) unless --full")
    min_side: int = _env("CRAWLER_MIN_SIDE", 64, positive_int, "reject images with a side shorter than this")
    max_image_bytes: int = _env("CRAWLER_MAX_IMAGE_BYTES", 20_000_000, positive_int,
                                "reject (and stop downloading) images larger than this")
    max_pixels: int = _env("CRAWLER_MAX_PIXELS", 40_000_000, positive_int,
                           "reject images with more pixels than this (decompression bombs)")
    max_pages_per_sight: int = _env("CRAWLER_MAX_PAGES_PER_SIGHT", 5, positive_int,
                                    "Commons result pages read per sight before giving up on reaching the limit")

    # The service (python -m producers serve).
    group_id: str = _env("CRAWLER_GROUP_ID", "", doc="consumer group of crawl requests; default <TOPIC_PREFIX>-crawler")
    crawl_timeout_s: float = _env("CRAWLER_TIMEOUT_S", 3600.0, positive_float,
                                  "the service kills a crawl running longer than this and retries it")
    max_attempts: int = _env("CRAWLER_MAX_ATTEMPTS", 5, positive_int,
                             "a crawl request failing this many times goes to the command dead-letter topic")

    def group(self, topic_prefix: str) -> str:
        return consumer_group(topic_prefix, "crawler", self.group_id)

    @property
    def uses_maps(self) -> bool:
        return self.sight_source == "maps" or (self.sight_source == "auto" and bool(self.maps_key))

    def env(self) -> dict[str, str]:
        """These settings as environment variables, for the crawl child process."""
        return {f.metadata["env"]: str(getattr(self, f.name)) for f in fields(self)}


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every crawler setting, for the README."""
    return CrawlerSettings.describe()
