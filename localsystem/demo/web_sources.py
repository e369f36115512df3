"""A local web (aiohttp) that speaks the crawler's source APIs: the tests' web and the offline demo's sources.

    GET /robots.txt                               Wikimedia-like: disallows the API paths (/w/…) and /private/
    GET /wikidata/w/api.php?action=wbsearchentities&search=CITY&format=json
 -> {"searchinfo": {...}, "search": [{"id": "Q…", "label", "description", ...}], "success": 1}
    GET /wikidata/sparql?query=…wdt:P131+ wd:Q…… LIMIT n&format=json
 -> {"head": {"vars": [...]}, "results": {"bindings": [{"item": {"type": "uri", ...}, "itemLabel": {...}, ...}]}}
    GET /commons/w/api.php?action=query&formatversion=2&generator=search&gsrsearch=…&gsrlimit&gsroffset
        &prop=imageinfo&iiprop=url|size|mime|extmetadata[&iiurlwidth=W]
 -> {"batchcomplete": true, "continue": {"gsroffset": n, "continue": "gsroffset||"}?,
     "query": {"pages": [{"pageid", "ns": 6, "title": "File:…", "index", "imageinfo": [{"url", "thumburl"?, "size",
                          "width", "height", "mime", "descriptionurl", "extmetadata": {"LicenseShortName": {"value"},
                          "Artist": {"value": "<html>"}}}]}]}}
    GET /maps/api/place/textsearch/json?query=sights in CITY&key=K[&pagetoken=T]
 -> {"html_attributions": [], "results": [{"name", "place_id", ...}], "status": "OK"|"ZERO_RESULTS"|"REQUEST_DENIED",
     "next_page_token"?}
    GET /files/<behaviour>/[thumb/<W>px-]<name>   the image files; behaviour: ok, redirect (302 to the ok path),
        slow (answers after `slow_s`), flaky (503 `fails` times, then the file), error (500 always)
    GET /private/<name>                            a file robots.txt disallows (must never be requested)

Every request is recorded in `FakeWeb.requests` (path, query, User-Agent).

    python -m localsystem.demo.web_sources --city Synthetica --port 8766   # alone, serving a synthetic city
    python -m localsystem.demo.web_sources --folder DIR --port 8766       # serving a city rendered before

Run alone it prints the four *_URL settings that point the crawler at it; `sightscan demo` runs it as a service.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image

from localsystem.demo.background import BackgroundServer

ROBOTS_TXT = """User-agent: *
Disallow: /w/
Disallow: /wikidata/
Disallow: /commons/
Disallow: /maps/
Disallow: /private/
"""
BEHAVIOURS = ("ok", "redirect", "slow", "flaky", "error", "private")


def _key(name: str) -> str:
    return " ".join(name.split()).lower()


@dataclass
class FakeFile:
    name: str                      # unique across the fake, e.g. "Old_Tower_1.jpg"
    data: bytes
    behaviour: str = "ok"
    licence: str | None = "CC BY-SA 4.0"
    artist: str | None = '<a href="//commons.wikimedia.org/wiki/User:Jane" title="User:Jane">Jane &amp; Co</a>'
    mime: str = "image/jpeg"
    fails: int = 1                 # flaky: this many 503s first

    def __post_init__(self) -> None:
        assert self.behaviour in BEHAVIOURS, self.behaviour

    def size(self) -> tuple[int, int]:
        try:
            return Image.open(io.BytesIO(self.data)).size
        except Exception:
            return (0, 0)

    def path(self, thumb_width: int | None = None) -> str:
        base = "/private" if self.behaviour == "private" else f"/files/{self.behaviour}"
        return f"{base}/thumb/{thumb_width}px-{self.name}" if thumb_width else f"{base}/{self.name}"


@dataclass
class FakeCity:
    name: str
    qid: str
    sights: list[str]                              # Wikidata's answer, most linked first
    places: list[str] = field(default_factory=list)  # Maps' answer to "sights in CITY"


@dataclass
class FakeWeb:
    maps_key: str = "test-maps-key"
    maps_page_size: int = 20
    slow_s: float = 3.0
    cities: dict[str, FakeCity] = field(default_factory=dict)
    images: dict[str, list[FakeFile]] = field(default_factory=dict)   # by sight name key
    requests: list[dict[str, Any]] = field(default_factory=list)
    hits: Counter[str] = field(default_factory=Counter)               # requests per path
    base_url: str = ""

    def add_city(self, city: FakeCity) -> None:
        self.cities[_key(city.name)] = city

    def add_images(self, sight: str, files: list[FakeFile]) -> None:
        self.images.setdefault(_key(sight), []).extend(files)

    def _file(self, name: str) -> FakeFile:
        for files in self.images.values():
            for f in files:
                if f.name == name:
                    return f
        raise web.HTTPNotFound()

    def requested(self, prefix: str) -> list[str]:
        return [r["path"] for r in self.requests if r["path"].startswith(prefix)]

    # The app ------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/robots.txt", self._robots)
        app.router.add_get("/wikidata/w/api.php", self._wikidata_api)
        app.router.add_get("/wikidata/sparql", self._sparql)
        app.router.add_get("/commons/w/api.php", self._commons)
        app.router.add_get("/maps/api/place/textsearch/json", self._maps)
        app.router.add_get("/files/{behaviour}/{tail:.+}", self._serve_file)
        app.router.add_get("/private/{tail:.+}", self._serve_file)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append({"path": request.path, "query": dict(request.query),
                              "user_agent": request.headers.get("User-Agent", "")})
        self.hits[request.path] += 1
        return await handler(request)

    async def _robots(self, request: web.Request) -> web.Response:
        return web.Response(text=ROBOTS_TXT)

    async def _wikidata_api(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("action") != "wbsearchentities" or q.get("format") != "json":
            return web.json_response({"error": {"code": "badvalue", "info": "unsupported in this fake"}})
        city = self.cities.get(_key(q.get("search", "")))
        hits = [] if city is None else [{"id": city.qid, "title": city.qid, "pageid": 1, "label": city.name,
                                         "description": "city in Testland", "match": {"type": "label"}}]
        return web.json_response({"searchinfo": {"search": q.get("search")}, "search": hits, "success": 1})

    async def _sparql(self, request: web.Request) -> web.Response:
        query = request.query.get("query", "")
        m = re.search(r"wdt:P131\+ wd:(Q\d+)", query)
        limit = re.search(r"LIMIT (\d+)", query)
        if not m or not limit:
            return web.Response(status=400, text="MalformedQueryException")
        city = next((c for c in self.cities.values() if c.qid == m.group(1)), None)
        names = (city.sights if city else [])[: int(limit.group(1))]
        bindings = [{"item": {"type": "uri", "value": f"http://www.wikidata.org/entity/Q{9000 + i}"},
                     "itemLabel": {"xml:lang": "en", "type": "literal", "value": name},
                     "sitelinks": {"datatype": "http://www.w3.org/2001/XMLSchema#integer", "type": "literal",
                                   "value": str(100 - i)}} for i, name in enumerate(names)]
        return web.json_response({"head": {"vars": ["item", "itemLabel", "sitelinks"]},
                                  "results": {"bindings": bindings}},
                                 content_type="application/sparql-results+json")

    async def _commons(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("generator") != "search" or q.get("gsrnamespace") != "6" or q.get("formatversion") != "2":
            return web.json_response({"error": {"code": "badvalue", "info": "unsupported in this fake"}})
        search = _key(q.get("gsrsearch", ""))
        # A sight's search names its city too ("River Gate Fixville 31"): the sight's photos answer it, the city's
        # own (streets with no sight) only a search that names no sight of it; then the longest name wins.
        matches = sorted((k for k in self.images if k in search), key=lambda k: (k not in self.cities, len(k)),
                         reverse=True)
        files = self.images[matches[0]] if matches else []
        offset, limit = int(q.get("gsroffset", 0)), min(50, int(q.get("gsrlimit", 10)))
        width = int(q["iiurlwidth"]) if "iiurlwidth" in q else None
        pages = []
        for i, f in enumerate(files[offset: offset + limit]):
            w, h = f.size()
            info: dict[str, Any] = {"size": len(f.data), "width": w, "height": h,
                                    "url": self.base_url + f.path(), "mime": f.mime,
                                    "descriptionurl": f"https://commons.wikimedia.org/wiki/File:{f.name}",
                                    "extmetadata": {}}
            if width:
                info.update(thumburl=self.base_url + f.path(width), thumbwidth=width, thumbheight=h)
            if f.licence:
                info["extmetadata"]["LicenseShortName"] = {"value": f.licence, "source": "commons-desc-page"}
            if f.artist:
                info["extmetadata"]["Artist"] = {"value": f.artist, "source": "commons-desc-page"}
            pages.append({"pageid": 5000 + offset + i, "ns": 6, "title": f"File:{f.name}",
                          "index": offset + i + 1, "imagerepository": "local", "imageinfo": [info]})
        body: dict[str, Any] = {"batchcomplete": True, "query": {"pages": pages[::-1]}}  # not in rank order
        if offset + limit < len(files):
            body["continue"] = {"gsroffset": offset + limit, "continue": "gsroffset||"}
        if not pages:
            body.pop("query")
        return web.json_response(body)

    async def _maps(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("key") != self.maps_key:
            return web.json_response({"error_message": "The provided API key is invalid.", "html_attributions": [],
                                      "results": [], "status": "REQUEST_DENIED"})
        if "pagetoken" in q:
            _, city_key, offset_s = q["pagetoken"].split("|")
            offset = int(offset_s)
        else:
            query = q.get("query", "")
            if not query.lower().startswith("sights in "):
                return web.json_response({"results": [], "status": "INVALID_REQUEST", "html_attributions": []})
            city_key, offset = _key(query[len("sights in "):]), 0
        city = self.cities.get(city_key)
        places = city.places if city else []
        page = places[offset: offset + self.maps_page_size]
        body: dict[str, Any] = {"html_attributions": [], "status": "OK" if page else "ZERO_RESULTS",
                                "results": [{"name": n, "place_id": f"ChIJ{offset + i}", "types": [
                                    "tourist_attraction", "point_of_interest", "establishment"],
                                    "formatted_address": f"{n}, {city.name if city else ''}"}
                                    for i, n in enumerate(page)]}
        if offset + self.maps_page_size < len(places):
            body["next_page_token"] = f"tok|{city_key}|{offset + self.maps_page_size}"
        return web.json_response(body)

    async def _serve_file(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        name = re.sub(r"^thumb/\d+px-", "", tail)
        f = self._file(name)
        behaviour = request.match_info.get("behaviour", "private")
        if behaviour == "redirect" == f.behaviour:
            raise web.HTTPFound(f"/files/ok/{tail}")
        if behaviour != f.behaviour and not (behaviour == "ok" and f.behaviour == "redirect"):
            raise web.HTTPNotFound()
        if behaviour == "slow":
            await asyncio.sleep(self.slow_s)
        if behaviour == "error":
            return web.Response(status=500, text="Internal Server Error")
        if behaviour == "flaky" and self.hits[request.path] <= f.fails:
            return web.Response(status=503, text="Service Unavailable", headers={"Retry-After": "0"})
        return web.Response(body=f.data, content_type=f.mime)


class WebSources(BackgroundServer):
    """FakeWeb served on 127.0.0.1 from a background thread; `env()` points the crawler at it."""

    def __init__(self, fake: FakeWeb | None = None) -> None:
        super().__init__()
        self.fake = fake or FakeWeb()

    def make_app(self) -> web.Application:
        return self.fake.app()

    def env(self) -> dict[str, str]:
        return sources_env(self.url)

    def start(self) -> WebSources:
        super().start()
        self.fake.base_url = self.url  # the Commons listing gives file URLs on this server
        return self


def from_synthetic_city(folder: Path, city: str, qid: str = "Q4115189") -> FakeWeb:
    """A fake web whose Wikidata knows `city` with the sights of a synthetic city folder (localsystem.demo.city), and
    whose Commons has that folder's photos of each sight (Maps, with its key, lists the same sights), and, under a
    search for the city itself, its photos of streets that show no sight."""
    coco = json.loads((folder / "annotations.json").read_text())
    sights = [c["name"] for c in coco["categories"]]
    fake = FakeWeb()
    fake.add_city(FakeCity(city, qid, sights, places=sights))
    for img in coco["images"]:
        query = img["query_sight"] or city
        name = f"{query.replace(' ', '_')}_{img['id']:05d}.jpg"
        fake.add_images(query, [FakeFile(name, (folder / img["file_name"]).read_bytes())])
    return fake


def sources_env(base_url: str) -> dict[str, str]:
    """The crawler's four source settings for web sources served at `base_url`."""
    return {"WIKIDATA_API_URL": f"{base_url}/wikidata/w/api.php",
            "WIKIDATA_SPARQL_URL": f"{base_url}/wikidata/sparql",
            "COMMONS_API_URL": f"{base_url}/commons/w/api.php", "MAPS_API_URL": base_url}


def main(argv: list[str] | None = None) -> None:
    from localsystem.demo.city import CityInfo, render_city

    p = argparse.ArgumentParser(prog="python -m localsystem.demo.web_sources",
                                description="the crawler's sources, local: a synthetic city on Wikidata and Commons")
    p.add_argument("--folder", type=Path, help="serve this rendered city (default: render one in a temporary folder)")
    p.add_argument("--city", help="the city's name (default: the folder's, or Synthetica)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--sights", type=int, default=4)
    p.add_argument("--per-sight", type=int, default=30)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8766)
    a = p.parse_args(argv)
    if a.folder is not None:
        folder, city = a.folder, a.city or CityInfo.load(a.folder).city
    else:
        city = a.city or "Synthetica"
        folder = render_city(Path(tempfile.mkdtemp(prefix="web-sources-")), city=city, seed=a.seed,
                             sights=a.sights, per_sight=a.per_sight).folder
    fake = from_synthetic_city(folder, city)
    fake.base_url = f"http://127.0.0.1:{a.port}"
    print("export " + " ".join(f"{k}={v}" for k, v in sources_env(fake.base_url).items()), flush=True)
    web.run_app(fake.app(), host=a.host, port=a.port, print=None)


if __name__ == "__main__":
    main()
