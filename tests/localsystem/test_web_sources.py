"""The local web sources serve a rendered city the way the crawler asks for it: in process (tests) and run alone
(the demo's service)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest

from localsystem.demo.city import CityInfo, render_city
from localsystem.demo.web_sources import WebSources, from_synthetic_city, sources_env
from sightscan.children import stop_popen
from tests.support.stack import free_port


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> CityInfo:
    return render_city(tmp_path_factory.mktemp("city"), city="Webton", seed=3, sights=2, per_sight=3)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def _served_city(env: dict[str, str], name: str) -> dict[str, list[bytes]]:
    """What a crawler finds through the four source URLs: each sight's photos, as bytes."""
    found = json.loads(_get(env["WIKIDATA_API_URL"] + "?" + urlencode(
        {"action": "wbsearchentities", "search": name, "format": "json"})))["search"]
    qid = found[0]["id"]
    query = f"SELECT ?item WHERE {{ ?item wdt:P131+ wd:{qid} . }} LIMIT 20"
    bindings = json.loads(_get(env["WIKIDATA_SPARQL_URL"] + "?" + urlencode(
        {"query": query, "format": "json"})))["results"]["bindings"]
    photos: dict[str, list[bytes]] = {}
    for b in bindings:
        sight = b["itemLabel"]["value"]
        body = json.loads(_get(env["COMMONS_API_URL"] + "?" + urlencode(
            {"action": "query", "formatversion": "2", "generator": "search", "gsrnamespace": "6",
             "gsrsearch": sight, "gsrlimit": "50", "prop": "imageinfo", "iiprop": "url|size|mime|extmetadata",
             "format": "json"})))
        photos[sight] = [_get(p["imageinfo"][0]["url"])
                         for p in sorted(body["query"]["pages"], key=lambda p: p["index"])]
    return photos


def _expected(city: CityInfo) -> dict[str, list[bytes]]:
    coco = json.loads(city.annotations.read_text())
    out: dict[str, list[bytes]] = {}
    for img in coco["images"]:
        out.setdefault(img["query_sight"], []).append((city.folder / img["file_name"]).read_bytes())
    return out


def test_the_city_is_served_in_process(city: CityInfo) -> None:
    with WebSources(from_synthetic_city(city.folder, city.city)) as web:
        assert web.env() == sources_env(web.url)
        assert _served_city(web.env(), "webton") == _expected(city)


def test_the_service_serves_a_rendered_folder(city: CityInfo, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "sources.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "localsystem.demo.web_sources", "--folder", str(city.folder),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert b"Disallow: /private/" in _get(f"http://127.0.0.1:{port}/robots.txt")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "sources.log").read_text()
                time.sleep(0.2)
        env = sources_env(f"http://127.0.0.1:{port}")
        assert _served_city(env, "Webton") == _expected(city)  # the folder's own city name
        assert (tmp_path / "sources.log").read_text().startswith(  # it says how to point a crawler at it
            "export " + " ".join(f"{k}={v}" for k, v in env.items()))
    finally:
        stop_popen(proc)
        log.close()


def test_a_sights_search_finds_the_sights_photos_though_its_city_has_a_longer_name(monkeypatch) -> None:
    """The crawler's query names the sight and its city; the city's own photos (streets, no sight) answer only a
    search for the city. A city named longer than its sights ("Fixville 31", "River Gate") once got the streets."""
    from localsystem.demo.web_sources import FakeCity, FakeFile, FakeWeb
    from producers.settings import CrawlerSettings
    from producers.sources import CommonsImages

    fake = FakeWeb()
    fake.add_city(FakeCity("Fixville 31", "Q1", ["River Gate"], places=["River Gate"]))
    fake.add_images("River Gate", [FakeFile("River_Gate_1.jpg", b"gate")])
    fake.add_images("Fixville 31", [FakeFile("Fixville_31_1.jpg", b"street")])
    with WebSources(fake) as web:
        for name, value in web.env().items():
            monkeypatch.setenv(name, value)
        commons = CommonsImages(CrawlerSettings.from_env(), full=False)

        def found(sight: str) -> list[str]:
            body = json.loads(_get(commons.search(sight, "Fixville 31", 10).url))
            return [p["title"] for p in body.get("query", {}).get("pages", [])]

        assert found("River Gate") == ["File:River_Gate_1.jpg"]
        assert found("") == ["File:Fixville_31_1.jpg"]
