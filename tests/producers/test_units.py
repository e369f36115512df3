"""Fast unit tests of the crawler's pure parts: image checks, API answer parsing, settings. No stack needed."""

from __future__ import annotations

import argparse
import io
import time
from urllib.parse import parse_qs, urlparse

import pytest
from PIL import Image

from producers.cli import add_parser, run_crawl
from producers.settings import CrawlerSettings, describe
from producers.sources import (
    Call,
    CommonsImages,
    MapsSights,
    SourceError,
    WikidataSights,
    page_size,
    plain_text,
    sight_source,
)
from producers.validate import ImageLimits, Rejected, check_image
from sightscan.config import ConfigError
from tests.support.crawl import ROOT, png

LIMITS = ImageLimits(min_side=64, max_bytes=2_000_000, max_pixels=10_000_000)


def _encoded(fmt: str, size: tuple[int, int] = (320, 240)) -> bytes:
    out = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(out, fmt)
    return out.getvalue()


def _reason(data: bytes, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(Rejected) as exc:
        check_image(data, limits)
    return exc.value.reason


@pytest.mark.parametrize(("fmt", "mime"), [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")])
def test_whole_images_pass_with_their_type_and_size(fmt, mime):
    checked = check_image(_encoded(fmt), LIMITS)
    assert (checked.mime_type, checked.width, checked.height) == (mime, 320, 240)


def test_each_kind_of_bad_image_is_rejected_with_its_reason():
    jpeg = _encoded("JPEG")
    assert _reason(b"") == "empty"
    assert _reason(b"<html><body>404</body></html>") == "not_an_image"
    assert _reason(jpeg[: len(jpeg) // 2]) == "truncated"
    assert _reason(_encoded("GIF")) == "unsupported_format"
    assert _reason(_encoded("JPEG", (40, 300))) == "too_small"
    assert _reason(jpeg, ImageLimits(max_bytes=len(jpeg) - 1)) == "too_large"
    assert _reason(_encoded("PNG")[:-30]) in ("truncated", "corrupt")


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    vast = png(5000, 4000)  # 20 Mpx of one colour: small file, large bitmap
    started = time.perf_counter()
    assert _reason(vast) == "too_many_pixels"
    assert time.perf_counter() - started < 0.5  # not decoded


def _commons_answer() -> dict:
    def page(index: int, name: str, **meta: str) -> dict:
        ext = {k: {"value": v, "source": "commons-desc-page"} for k, v in meta.items()}
        return {"pageid": 100 + index, "ns": 6, "title": f"File:{name}", "index": index, "imageinfo": [{
            "url": f"https://upload.example/{name}", "thumburl": f"https://upload.example/thumb/640px-{name}",
            "size": 12345, "width": 2000, "height": 1500, "mime": "image/jpeg",
            "descriptionurl": f"https://commons.example/wiki/File:{name}", "extmetadata": ext}]}
    return {"batchcomplete": True, "continue": {"gsroffset": 3, "continue": "gsroffset||"}, "query": {"pages": [
        page(2, "B.jpg", LicenseShortName="CC BY 4.0", Artist='<a href="//x">Ann &amp; Bo</a>\n(talk)'),
        {"pageid": 7, "ns": 6, "title": "File:Missing.jpg", "index": 3, "missing": True},
        page(1, "A.jpg", LicenseShortName="Public domain"),
    ]}}


def test_commons_answers_become_ranked_candidates_with_credit():
    cs = CrawlerSettings.from_env({"COMMONS_API_URL": "https://commons.example/w/api.php"})
    thumbs = CommonsImages(cs, full=False)
    call = thumbs.search("Old Tower", "Paris", count=5, offset=0)
    q = parse_qs(urlparse(call.url).query)
    assert q["gsrsearch"] == ["Old Tower Paris filetype:bitmap"] and q["gsrnamespace"] == ["6"]
    assert q["iiurlwidth"] == ["640"] and q["iiprop"] == ["url|size|mime|extmetadata"] and q["gsrlimit"] == ["5"]

    page = thumbs.parse(call, _commons_answer())
    assert [c.title for c in page.candidates] == ["File:A.jpg", "File:B.jpg"]  # by search rank; no file: skipped
    assert page.candidates[0].url == "https://upload.example/thumb/640px-A.jpg"
    assert (page.candidates[0].licence, page.candidates[0].author) == ("Public domain", None)
    assert (page.candidates[1].licence, page.candidates[1].author) == ("CC BY 4.0", "Ann & Bo (talk)")
    assert page.next_offset == 3

    full = CommonsImages(cs, full=True)
    assert "iiurlwidth" not in full.search("Old Tower", "Paris", 5).url
    last = {k: v for k, v in _commons_answer().items() if k != "continue"}
    assert full.parse(call, last).candidates[0].url == "https://upload.example/A.jpg"
    assert full.parse(call, last).next_offset is None
    with pytest.raises(SourceError, match="maxlag"):
        full.parse(call, {"error": {"code": "maxlag", "info": "maxlag"}})
    assert page_size(100) == 50 and page_size(4) == 6 and page_size(1) == 3


def test_wikidata_finds_the_city_then_its_sights():
    source = WikidataSights(CrawlerSettings.from_env({}))
    first = source.start("Paris", 10)
    assert parse_qs(urlparse(first.url).query)["action"] == ["wbsearchentities"]
    assert source.parse(first, {"search": []}, 10).names == []  # unknown city: no sights, no error
    step = source.parse(first, {"search": [{"id": "Q90", "label": "Paris"}, {"id": "Q830149"}]}, 10)
    assert step.names == [] and step.next is not None
    query = parse_qs(urlparse(step.next.url).query)["query"][0]
    assert "wdt:P131+ wd:Q90" in query and "LIMIT 10" in query and "ORDER BY DESC(?sitelinks)" in query
    answer = {"results": {"bindings": [{"itemLabel": {"value": "Eiffel Tower"}}, {"itemLabel": {"value": "Q123"}},
                                       {"itemLabel": {"value": "Louvre"}}]}}
    assert source.parse(step.next, answer, 10).names == ["Eiffel Tower", "Louvre"]
    with pytest.raises(SourceError):
        source.parse(step.next, {"head": {}}, 10)


def test_maps_text_search_pages_and_statuses():
    source = MapsSights(CrawlerSettings.from_env({"MAPS_KEY": "k", "MAPS_API_URL": "https://maps.example"}))
    first = source.start("Rome", 3)
    assert first.url.startswith("https://maps.example/maps/api/place/textsearch/json?")
    assert parse_qs(urlparse(first.url).query)["query"] == ["sights in Rome"]
    listing = source.parse(first, {"status": "OK", "results": [{"name": "Colosseum"}, {"name": "Pantheon"}],
                                   "next_page_token": "T"}, 3)
    assert listing.names == ["Colosseum", "Pantheon"] and "pagetoken=T" in listing.next.url
    assert source.parse(first, {"status": "OK", "results": [{"name": "A"}] * 3, "next_page_token": "T"}, 3).next is None
    assert source.parse(first, {"status": "ZERO_RESULTS", "results": []}, 3).names == []
    assert source.parse(Call(listing.next.url, "page"), {"status": "INVALID_REQUEST"}, 3).names == []
    with pytest.raises(SourceError, match="REQUEST_DENIED"):
        source.parse(first, {"status": "REQUEST_DENIED", "error_message": "bad key"}, 3)


def test_settings_choose_the_source_and_name_a_malformed_variable():
    assert sight_source(CrawlerSettings.from_env({})).kind == "wikidata"
    assert sight_source(CrawlerSettings.from_env({"MAPS_KEY": "k"})).kind == "maps"
    assert sight_source(CrawlerSettings.from_env({"MAPS_KEY": "k", "CRAWLER_SIGHT_SOURCE": "wikidata"})).kind \
        == "wikidata"
    for name, value in (("CRAWLER_THREADS", "0"), ("COMMONS_API_URL", "commons.example"),
                        ("CRAWLER_SIGHT_SOURCE", "google-images"), ("CRAWLER_AUTOTHROTTLE", "maybe")):
        with pytest.raises(ConfigError, match=name):
            CrawlerSettings.from_env({name: value})
    cs = CrawlerSettings.from_env({"CRAWLER_THREADS": "7", "CRAWLER_AUTOTHROTTLE": "off"})
    assert CrawlerSettings.from_env(cs.env()) == cs  # what the service hands its crawl child
    assert plain_text("<b>x</b>  &lt;y&gt;") == "x <y>"


def test_the_crawl_parser_plugs_into_another_command():
    parser = argparse.ArgumentParser(prog="sightscan")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["crawl", "Paris", "--limit", "5", "--sights-limit", "3", "--threads", "2", "--full",
                              "--no-skip"])
    assert (args.city, args.limit, args.sights_limit, args.threads, args.full, args.skip) == ("Paris", 5, 3, 2, True,
                                                                                              False)
    assert args.func is run_crawl
    defaults = parser.parse_args(["crawl", "--city-id", "7"])
    assert (defaults.city, defaults.city_id, defaults.limit, defaults.skip, defaults.full) == (None, 7, None, True,
                                                                                              False)
    with pytest.raises(SystemExit):
        parser.parse_args(["crawl", "Paris", "--limit", "-1"])


def test_the_readme_documents_every_setting():
    readme = (ROOT / "producers" / "README.md").read_text()
    assert [name for name, _, _ in describe() if f"| `{name}` |" not in readme] == []
