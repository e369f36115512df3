"""Where sight names and images come from: request builders and JSON parsers for each API, free of scrapy.

A source turns a city (or a sight) into a `Call` (a URL to GET) and parses the JSON answer into names or image
candidates, plus the next call when the answer is paged. The spider does the fetching, so politeness, retries
and timeouts are scrapy's, and these parsers stay plain functions that unit tests can feed with JSON.

Sight names:
- WikidataSights: `wbsearchentities` finds the city's item (first match), then one SPARQL query lists items
  located in it (P131, transitively) that are tourist attractions, museums, monuments or landmarks, or carry a
  heritage designation (P1435), most-linked first (sitelinks: a proxy for notability).
- MapsSights: Google Places Text Search (legacy JSON API) `query=sights in CITY`, as the original crawler did.
Images:
- CommonsImages: MediaWiki search in the File namespace, with imageinfo (URL, size, MIME type, thumbnail URL
  and the licence and author from extmetadata) for each hit; paged with gsroffset.
"""

from __future__ import annotations

import html
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from producers.settings import CrawlerSettings


class SourceError(RuntimeError):
    """An API answered with an error or a shape we do not understand; the message says which."""


@dataclass(frozen=True)
class Call:
    """One GET to an API; `step` and `state` tell the source's parser what the answer is."""
    url: str
    step: str
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Listing:
    names: list[str]
    next: Call | None = None


@dataclass(frozen=True)
class Candidate:
    """An image a search found, with what we need to fetch it and credit it."""
    url: str                 # what is downloaded: the thumbnail, or the original with --full
    title: str
    mime_type: str | None
    size: int | None         # bytes of the original file
    licence: str | None
    author: str | None
    page_url: str | None     # the file's description page (its licence terms in full)


@dataclass(frozen=True)
class ImagePage:
    candidates: list[Candidate]
    next_offset: int | None  # None: no more results


def _get(url: str, params: dict[str, Any]) -> str:
    return f"{url}?{urlencode(params)}"


def plain_text(value: str | None, limit: int = 500) -> str | None:
    """Commons' Artist field is HTML (links, spans): keep its text."""
    if not value:
        return None
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", value)).split())
    return text[:limit] or None


# Sight names -------------------------------------------------------------------------------------------


class SightSource(ABC):
    kind: str  # stored as sights.source

    @abstractmethod
    def start(self, city: str, limit: int) -> Call: ...

    @abstractmethod
    def parse(self, call: Call, payload: Any, limit: int) -> Listing:
        """Names found by this call, and the next call if more are needed; SourceError if the API failed."""


SPARQL = """SELECT ?item ?itemLabel (MAX(?links) AS ?sitelinks) WHERE {{
  ?item wdt:P131+ wd:{qid} .
  {{ VALUES ?kind {{ wd:Q570116 wd:Q33506 wd:Q4989906 wd:Q2319498 }} ?item wdt:P31/wdt:P279? ?kind . }}
  UNION {{ ?item wdt:P1435 ?designation . }}
  ?item wikibase:sitelinks ?links .
  SERVICE wikibase:label {{ bd:serviceParam wikibase:language "{lang},en,mul". }}
}}
GROUP BY ?item ?itemLabel
ORDER BY DESC(?sitelinks)
LIMIT {limit}"""

_QID = re.compile(r"^Q\d+$")


class WikidataSights(SightSource):
    kind = "wikidata"

    def __init__(self, cs: CrawlerSettings) -> None:
        self.api, self.sparql, self.lang = cs.wikidata_api_url, cs.wikidata_sparql_url, cs.language

    def start(self, city: str, limit: int) -> Call:
        return Call(_get(self.api, {"action": "wbsearchentities", "search": city, "language": self.lang,
                                    "uselang": self.lang, "type": "item", "limit": 5, "format": "json"}), "search")

    def parse(self, call: Call, payload: Any, limit: int) -> Listing:
        if not isinstance(payload, dict):
            raise SourceError(f"wikidata {call.step}: expected a JSON object")
        if call.step == "search":
            if "error" in payload:
                raise SourceError(f"wikidata search: {payload['error'].get('info', payload['error'])}")
            hits = payload.get("search")
            if not isinstance(hits, list):
                raise SourceError("wikidata search: no 'search' list in the answer")
            if not hits:
                return Listing([])  # Wikidata does not know the city: no sights, not an outage
            qid = hits[0].get("id", "")
            if not _QID.match(qid):
                raise SourceError(f"wikidata search: {qid!r} is not an item id")
            query = SPARQL.format(qid=qid, lang=self.lang, limit=int(limit))
            # WDQS runs a query for up to 60 s: wait that long for it, whatever the download timeout.
            return Listing([], Call(_get(self.sparql, {"query": query, "format": "json"}), "sparql",
                                    {"qid": qid, "timeout_s": 65.0}))
        try:
            bindings = payload["results"]["bindings"]
            labels = [b["itemLabel"]["value"] for b in bindings if "itemLabel" in b]
        except (KeyError, TypeError) as exc:
            raise SourceError(f"wikidata sparql: unexpected answer ({exc!r})") from exc
        # An item without a label in any asked language comes back labelled with its id: not a usable name.
        return Listing([label for label in labels if label.strip() and not _QID.match(label)])


class MapsSights(SightSource):
    kind = "maps"
    PATH = "/maps/api/place/textsearch/json"

    def __init__(self, cs: CrawlerSettings) -> None:
        self.url, self.key, self.lang = cs.maps_api_url + self.PATH, cs.maps_key, cs.language

    def start(self, city: str, limit: int) -> Call:
        return Call(_get(self.url, {"query": f"sights in {city}", "language": self.lang, "key": self.key}), "page",
                    {"seen": 0})

    def parse(self, call: Call, payload: Any, limit: int) -> Listing:
        if not isinstance(payload, dict):
            raise SourceError("maps: expected a JSON object")
        status = payload.get("status")
        if status == "ZERO_RESULTS":
            return Listing([])
        if status == "INVALID_REQUEST" and "pagetoken" in call.url:
            # A next_page_token takes a moment to become valid; the first page's names are enough then.
            return Listing([])
        if status != "OK":
            raise SourceError(f"maps: {status}: {payload.get('error_message', 'no message')}")
        names = [r["name"] for r in payload.get("results", []) if isinstance(r, dict) and r.get("name")]
        seen = call.state.get("seen", 0) + len(names)
        token = payload.get("next_page_token")
        nxt = None
        if token and seen < limit:
            nxt = Call(_get(self.url, {"pagetoken": token, "key": self.key}), "page", {"seen": seen})
        return Listing(names, nxt)


def sight_source(cs: CrawlerSettings) -> SightSource:
    return MapsSights(cs) if cs.uses_maps else WikidataSights(cs)


# Images ------------------------------------------------------------------------------------------------


def page_size(needed: int) -> int:
    """Ask for a few more candidates than still needed: some are rejected or already stored."""
    return min(50, max(needed + 2, math.ceil(needed * 1.5)))


class CommonsImages:
    kind = "commons"

    def __init__(self, cs: CrawlerSettings, full: bool) -> None:
        self.api, self.full, self.width = cs.commons_api_url, full, cs.thumb_width

    def search(self, sight: str, city: str, count: int, offset: int = 0) -> Call:
        params: dict[str, Any] = {
            "action": "query", "format": "json", "formatversion": 2,
            "generator": "search", "gsrsearch": f"{sight} {city} filetype:bitmap", "gsrnamespace": 6,
            "gsrlimit": count, "gsroffset": offset,
            "prop": "imageinfo", "iiprop": "url|size|mime|extmetadata",
            "iiextmetadatafilter": "LicenseShortName|Artist",
        }
        if not self.full:
            params["iiurlwidth"] = self.width
        return Call(_get(self.api, params), "images", {"sight": sight, "offset": offset})

    def parse(self, call: Call, payload: Any) -> ImagePage:
        if not isinstance(payload, dict):
            raise SourceError("commons: expected a JSON object")
        if "error" in payload:
            raise SourceError(f"commons: {payload['error'].get('info', payload['error'])}")
        pages = (payload.get("query") or {}).get("pages") or []
        if isinstance(pages, dict):  # formatversion=1 answers key pages by id
            pages = list(pages.values())
        candidates = []
        for page in sorted(pages, key=lambda p: p.get("index", 0)):
            info = (page.get("imageinfo") or [None])[0]
            if not isinstance(info, dict) or not info.get("url"):
                continue  # a search hit with no file behind it
            meta = info.get("extmetadata") or {}
            url = info["url"] if self.full else info.get("thumburl") or info["url"]
            candidates.append(Candidate(
                url=url, title=page.get("title", ""), mime_type=info.get("mime"), size=info.get("size"),
                licence=plain_text((meta.get("LicenseShortName") or {}).get("value"), 100),
                author=plain_text((meta.get("Artist") or {}).get("value")),
                page_url=info.get("descriptionurl")))
        cont = payload.get("continue") or {}
        nxt = cont.get("gsroffset")
        return ImagePage(candidates, int(nxt) if isinstance(nxt, int | str) and str(nxt).isdigit() else None)
