"""The crawl command against a local web that speaks Wikidata, Commons and Maps, into the real warehouse."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
import uuid

from localsystem.demo.web_sources import FakeCity, FakeFile, WebSources, from_synthetic_city
from tests.support.crawl import ROOT, city_row, crawler_env, png, run_crawl, sight_names, stored_images
from tests.support.synthetic import render_city

JANE = "Jane & Co"  # FakeFile's default Artist, as plain text


def _unique(name: str) -> str:
    return f"{name} {uuid.uuid4().hex[:8]}"


def _thumb(web: WebSources, f: FakeFile) -> str:
    return web.url + f.path(640)


def _crawlton(web: WebSources, photos: list[bytes], city: str) -> dict[str, list[FakeFile]]:
    """Four sights on Wikidata (the fourth beyond --sights-limit 3), with every kind of bad file among the good."""
    p = iter(photos)
    files = {
        "Old Tower": [
            FakeFile("a1.jpg", next(p)),
            FakeFile("a-page.jpg", b"<!doctype html><title>Not a photo</title>"),
            FakeFile("a-cut.jpg", (cut := next(p))[: len(cut) // 2]),
            FakeFile("a2.jpg", next(p), "redirect"),
            FakeFile("a3.jpg", next(p)),
            FakeFile("a-tiny.png", png(32, 32), mime="image/png"),
            FakeFile("a4.jpg", next(p)),  # on the second result page
        ],
        "Harbour Gate": [
            FakeFile("b1.jpg", next(p), "slow"),
            FakeFile("b2.jpg", next(p), "flaky"),
            FakeFile("b3.jpg", next(p), "error"),
            FakeFile("b4.jpg", next(p), "private"),
            FakeFile("b5.jpg", (same := next(p))),
            FakeFile("b5-copy.jpg", same),
        ],
        "Grand Museum": [
            FakeFile("c1.jpg", next(p), licence="CC0", artist=None),
            FakeFile("c-heavy.png", png(500, 500, noise=True), mime="image/png"),
            FakeFile("c-vast.png", png(3300, 3100), mime="image/png"),
            FakeFile("c2.jpg", next(p), licence="Public domain", artist="<span>Anon.</span>"),
        ],
        "Iron Column": [FakeFile("d1.jpg", next(p))],
    }
    web.fake.add_city(FakeCity(city, "Q7001", list(files)))
    for sight, fs in files.items():
        web.fake.add_images(sight, fs)
    return files


def test_crawl_stores_checked_images_with_provenance_and_counts_the_rest(settings, web, photos):
    city = _unique("Crawlton")
    files = _crawlton(web, photos, city)

    run = run_crawl(settings, web, city, "--limit", "4", "--sights-limit", "3")

    assert run.returncode == 0, run.stderr
    s = run.summary
    assert s["source"] == "wikidata" and s["status"] == "labelling"
    assert (s["sights"], s["stored"], s["duplicates"]) == (3, 8, 1)
    assert s["rejected"] == {"not_an_image": 1, "truncated": 1, "too_small": 1, "too_large": 1, "too_many_pixels": 1}
    assert s["failed"] == {"timeout": 1, "http_500": 1, "robots_txt": 1}
    assert {k: v["stored"] for k, v in s["per_sight"].items()} == {"Old Tower": 4, "Harbour Gate": 2,
                                                                   "Grand Museum": 2}

    found = city_row(settings, city)
    assert found.status == "labelling"
    assert sight_names(settings, found.id) == {"Old Tower": "wikidata", "Harbour Gate": "wikidata",
                                               "Grand Museum": "wikidata"}
    rows = stored_images(settings, found.id)
    assert len(rows) == 8
    by_url = {r["source_url"]: r for r in rows}
    expected = {_thumb(web, f): (sight, f) for sight, fs in files.items() for f in fs}
    for url, row in by_url.items():
        sight, f = expected[url]
        assert row["sight"] == sight and row["sight_source"] == "wikidata" and row["origin"] == "crawl"
        assert row["data"] == f.data and row["sha256"] == hashlib.sha256(f.data).hexdigest()
        assert (row["mime_type"], row["width"], row["height"]) == ("image/jpeg", 640, 480)
    names = {expected[url][1].name for url in by_url}
    assert {"a1.jpg", "a2.jpg", "a3.jpg", "a4.jpg", "b2.jpg", "c1.jpg", "c2.jpg"} < names
    assert len(names & {"b5.jpg", "b5-copy.jpg"}) == 1  # the same bytes are stored once
    credit = {expected[url][1].name: (r["licence"], r["author"]) for url, r in by_url.items()}
    assert credit["a1.jpg"] == ("CC BY-SA 4.0", JANE)
    assert credit["c1.jpg"] == ("CC0", None)
    assert credit["c2.jpg"] == ("Public domain", "Anon.")

    # Politeness, retries and robots.txt, as the web saw them.
    fake = web.fake
    assert "/robots.txt" in fake.hits
    assert not fake.requested("/private/"), "robots.txt disallows /private/"
    assert fake.hits["/files/flaky/thumb/640px-b2.jpg"] == 2  # 503, then the file
    assert fake.hits["/files/error/thumb/640px-b3.jpg"] == 2  # 500, retried once (CRAWLER_RETRY_TIMES=1)
    assert fake.hits["/files/slow/thumb/640px-b1.jpg"] == 2   # timed out twice
    assert all("/thumb/640px-" in path for path in fake.requested("/files/"))
    assert all(r["user_agent"].startswith("SightScan/") for r in fake.requests)
    searches = [r["query"] for r in fake.requests if r["path"] == "/commons/w/api.php"]
    assert not [q for q in searches if "Iron Column" in q["gsrsearch"]]
    assert sorted(q["gsroffset"] for q in searches if q["gsrsearch"].startswith("Old Tower")) == ["0", "6"]

    # One progress line per sight on stderr, then the summary.
    assert "Old Tower: 4 stored, 3 rejected (not_an_image 1, too_small 1, truncated 1)" in run.stderr
    assert "Harbour Gate: 2 stored, 3 failed (http_500 1, robots_txt 1, timeout 1), 1 duplicates" in run.stderr
    assert "8 images stored from 3 sights" in run.stderr

    # Crawling again, even every sight (--no-skip), stores nothing twice.
    again = run_crawl(settings, web, city, "--limit", "4", "--sights-limit", "3", "--no-skip", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert (again.summary["stored"], again.summary["duplicates"]) == (0, 9)
    assert len(stored_images(settings, found.id)) == 8
    assert city_row(settings, city).status == "labelling"


def test_full_resolution_skips_what_the_listing_already_rules_out(settings, web, photos):
    city = _unique("Fullton")
    web.fake.add_city(FakeCity(city, "Q7002", ["Glass Arch"]))
    good = FakeFile("e1.jpg", photos[0])
    web.fake.add_images("Glass Arch", [FakeFile("e-anim.gif", b"GIF89a...", mime="image/gif"),
                                       FakeFile("e-huge.png", png(500, 500, noise=True), mime="image/png"), good])

    run = run_crawl(settings, web, city, "--full", "--limit", "2", "--sights-limit", "1", "--threads", "2")

    assert run.returncode == 0, run.stderr
    assert run.summary["stored"] == 1
    assert run.summary["rejected"] == {"unsupported_format": 1, "too_large": 1}
    assert web.fake.requested("/files/") == ["/files/ok/e1.jpg"]  # the original; the other two never fetched
    assert all("iiurlwidth" not in r["query"] for r in web.fake.requests if r["path"] == "/commons/w/api.php")
    [row] = stored_images(settings, city_row(settings, city).id)
    assert row["source_url"] == web.url + "/files/ok/e1.jpg" and row["data"] == good.data


def test_maps_key_takes_sight_names_from_places_text_search(settings, web, photos):
    city = _unique("Mapston")
    web.fake.maps_page_size = 2  # three places: two pages
    web.fake.add_city(FakeCity(city, "Q7003", ["Only On Wikidata"], places=["Maps Arch", "Maps Bridge", "Maps Dome"]))
    for i, sight in enumerate(["Maps Arch", "Maps Bridge", "Maps Dome", "Only On Wikidata"]):
        web.fake.add_images(sight, [FakeFile(f"m{i}.jpg", photos[i])])

    run = run_crawl(settings, web, city, "--limit", "1", "--sights-limit", "3", MAPS_KEY=web.fake.maps_key)

    assert run.returncode == 0, run.stderr
    assert run.summary["source"] == "maps" and run.summary["stored"] == 3
    found = city_row(settings, city)
    assert sight_names(settings, found.id) == {"Maps Arch": "maps", "Maps Bridge": "maps", "Maps Dome": "maps"}
    maps_calls = [r["query"] for r in web.fake.requests if r["path"] == "/maps/api/place/textsearch/json"]
    assert maps_calls[0]["query"] == f"sights in {city}" and "pagetoken" in maps_calls[1]
    assert not web.fake.requested("/wikidata/")
    assert web.fake.maps_key not in run.stderr

    # A refused key is a source failure: exit 3 (try again later), and the city is not marked failed.
    other = _unique("Mapston")
    web.fake.add_city(FakeCity(other, "Q7004", [], places=["Maps Arch"]))
    refused = run_crawl(settings, web, other, MAPS_KEY="not-the-key")
    assert refused.returncode == 3
    assert "REQUEST_DENIED" in refused.stderr and "not-the-key" not in refused.stderr
    assert city_row(settings, other).status == "crawling"


def test_a_city_wikidata_does_not_know_ends_failed(settings, web):
    city = _unique("Nowhereville")
    run = run_crawl(settings, web, city)
    assert run.returncode == 0, run.stderr
    assert (run.summary["sights"], run.summary["stored"], run.summary["source_errors"]) == (0, 0, [])
    assert city_row(settings, city).status == "failed"
    assert web.fake.requested("/wikidata/") == ["/wikidata/w/api.php"]


def test_unknown_city_id_is_an_error(settings, web):
    run = run_crawl(settings, web, "--city-id", "987654321987")
    assert run.returncode == 4
    assert "no city" in run.stderr
    assert not web.fake.requests


def test_a_crawl_stopped_half_way_leaves_the_city_crawling(settings, web, photos):
    city = _unique("Haltburg")
    web.fake.slow_s = 3.0  # scrapy finishes the download in flight before it stops
    web.fake.add_city(FakeCity(city, "Q7005", ["Slow Spire"]))
    web.fake.add_images("Slow Spire", [FakeFile("h1.jpg", photos[0]), FakeFile("h2.jpg", photos[1], "slow")])
    proc = subprocess.Popen([sys.executable, "-m", "producers", "crawl", city, "--limit", "2"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=crawler_env(settings, web, CRAWLER_DOWNLOAD_TIMEOUT_S="10"))
    try:
        deadline = time.monotonic() + 30
        while not web.fake.requested("/files/slow/") and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert web.fake.requested("/files/slow/"), "the slow file was never requested"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 5, stderr
    assert "stopped before it was done" in stderr
    assert city_row(settings, city).status == "crawling"


# The crawl child with the warehouse failing on every image write (a connection lost mid-crawl, say).
BROKEN_WAREHOUSE = """
import sys, psycopg2, producers.warehouse as w
def store(self, image):
    raise psycopg2.OperationalError("server closed the connection unexpectedly")
w.Warehouse.store = store
from producers.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_warehouse_failure_stops_the_crawl_without_finishing_the_city(settings, web, photos):
    city = _unique("Brokenburg")
    web.fake.add_city(FakeCity(city, "Q7006", ["Cracked Dome"]))
    web.fake.add_images("Cracked Dome", [FakeFile(f"x{i}.jpg", photos[i]) for i in range(4)])
    proc = subprocess.run([sys.executable, "-c", BROKEN_WAREHOUSE, "crawl", city, "--limit", "4"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=crawler_env(settings, web))
    assert proc.returncode == 1, proc.stderr
    assert "the warehouse failed: warehouse: server closed the connection" in proc.stderr
    assert city_row(settings, city).status == "crawling"


def test_a_synthetic_city_served_alone_is_crawled_whole(settings, tmp_path):
    """The web sources run alone (python -m localsystem.demo.web_sources) serve a synthetic city: the demo source."""
    city = _unique("Synthetica")
    folder = render_city(tmp_path / "city", sights=2, per_sight=3, seed=3, city=city)
    with WebSources(from_synthetic_city(folder, city)) as web:
        run = run_crawl(settings, web, city, "--limit", "3", "--sights-limit", "5")
    assert run.returncode == 0, run.stderr
    coco = json.loads((folder / "annotations.json").read_text())
    assert (run.summary["sights"], run.summary["stored"]) == (2, 6)
    rows = stored_images(settings, city_row(settings, city).id)
    assert sorted((r["sight"], r["data"]) for r in rows) == sorted(
        (img["query_sight"], (folder / img["file_name"]).read_bytes()) for img in coco["images"])
