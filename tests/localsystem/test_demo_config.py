"""The demo's pieces without a stack: the settings it gives the services, the web sources as a service of the
local system while a demo runs, and its rendered city kept under the stack home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localsystem.cli import build_parser
from localsystem.demo.city import CityInfo
from localsystem.demo.system import DemoOptions, demo_env, demo_folder, page_url, prepare_city, progress_line
from localsystem.stack.services import (
    DEMO_SOURCES,
    SERVICES,
    demo_state,
    demo_state_path,
    services,
    stop_all,
    write_demo_state,
)
from sightscan.config import Settings


@pytest.fixture
def home_settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"SIGHTSCAN_HOME": str(tmp_path / "home")})


def test_the_demo_command_defaults_to_five_sights_of_forty_photos() -> None:
    args = build_parser().parse_args(["demo"])
    assert (args.city, args.sights, args.per_sight, args.timeout) == ("Synthetica", 5, 40, 1800)
    args = build_parser().parse_args(["demo", "--city", "Fakeburg", "--seed", "3", "--sources-port", "9999"])
    assert (args.city, args.seed, args.sources_port) == ("Fakeburg", 3, 9999)


def test_demo_settings_point_the_crawler_at_the_sources_and_size_the_thresholds() -> None:
    env = demo_env(DemoOptions(), "http://127.0.0.1:8766", environ={})
    assert env["WIKIDATA_API_URL"] == "http://127.0.0.1:8766/wikidata/w/api.php"
    assert env["WIKIDATA_SPARQL_URL"] == "http://127.0.0.1:8766/wikidata/sparql"
    assert env["COMMONS_API_URL"] == "http://127.0.0.1:8766/commons/w/api.php"
    assert env["MAPS_API_URL"] == "http://127.0.0.1:8766"
    assert (env["MAPS_KEY"], env["CRAWLER_SIGHT_SOURCE"], env["LABELLER_BACKEND"]) == ("", "wikidata", "weak")
    # 5 x 40 photos: trained at 60% of them, a sight is a class with a quarter of its photos.
    assert (env["MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING"], env["MIN_IMAGE_NUMBER_PER_LABEL"]) == ("120", "10")
    assert (env["MAX_SIGHTS_PER_CITY"], env["MAX_IMAGES_PER_SIGHT"]) == ("5", "40")
    # Each is checked like any setting of its service.
    Settings.from_env(env)
    # What the user set explicitly wins; the sources are always the demo's.
    mine = demo_env(DemoOptions(sights=3, per_sight=10), "http://127.0.0.1:1",
                    environ={"MIN_IMAGE_NUMBER_PER_LABEL": "4", "WIKIDATA_API_URL": "https://example.org"})
    assert (mine["MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING"], mine["MIN_IMAGE_NUMBER_PER_LABEL"]) == ("18", "4")
    assert mine["WIKIDATA_API_URL"] == "http://127.0.0.1:1/wikidata/w/api.php"


def test_while_a_demo_runs_its_sources_are_a_service_and_every_service_gets_its_settings(home_settings) -> None:
    plain = services(home_settings)
    assert [s.name for s in plain] == [s.name for s in SERVICES] and demo_state(home_settings) is None
    gateway = plain[-1]
    assert (gateway.name, gateway.spec.probe, gateway.spec.port_env) == ("gateway", "/healthz", "DOS_PORT")
    assert gateway.env()["MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING"] == "100"

    env = demo_env(DemoOptions(), "http://127.0.0.1:8799", environ={})
    write_demo_state(home_settings, {"city": "Synthetica", "folder": "/x/city", "port": 8799, "clip": "/x/c.y4m",
                                     "env": env})
    demo = services(home_settings)
    assert [s.name for s in demo] == [DEMO_SOURCES] + [s.name for s in SERVICES]  # the sources start first
    sources = demo[0]
    assert sources.spec.argv == ("-m", "localsystem.demo.web_sources", "--folder", "/x/city", "--city", "Synthetica",
                                 "--port", "8799")
    assert (sources.spec.port, sources.spec.probe, sources.spec.port_env) == (8799, "/robots.txt",
                                                                              "DEMO_SOURCES_PORT")
    assert sources.log_path == home_settings.home / "logs" / "websources.log"
    crawler = next(s for s in demo if s.name == "crawler")
    assert {k: crawler.env()[k] for k in env} == env  # over the shared settings' defaults
    assert not sources.healthy() and not crawler.started_with(env)  # nothing runs

    stop_all(home_settings)  # `down` ends the demo: the next `up` is the plain system
    assert not demo_state_path(home_settings).exists()
    assert [s.name for s in services(home_settings)] == [s.name for s in SERVICES]


def test_the_demo_city_and_clip_are_rendered_once_under_the_stack_home(home_settings) -> None:
    opts = DemoOptions(city="Tiny Town", seed=2, sights=2, per_sight=3, fps=5)
    said: list[str] = []
    info, clip = prepare_city(home_settings, opts, said.append)
    assert info.folder == demo_folder(home_settings, opts) == home_settings.home / "demo" / "tiny-town-seed2-2x3"
    assert (info.city, info.sights, clip) == ("Tiny Town", CityInfo.load(info.folder).sights, info.folder / "clip.y4m")
    meta = json.loads((info.folder / "video_annotations.json").read_text())
    assert meta["fps"] == 5 and len(meta["frames"]) == 2 * 2 * 5  # 2 s per sight by default
    assert len(said) == 2
    before = {p: p.stat().st_mtime_ns for p in info.folder.rglob("*")}
    assert prepare_city(home_settings, opts, said.append) == (info, clip)
    assert len(said) == 2 and {p: p.stat().st_mtime_ns for p in info.folder.rglob("*")} == before
    # Another clip length renders the clip again, not the photos.
    prepare_city(home_settings, DemoOptions(city="Tiny Town", seed=2, sights=2, per_sight=3, fps=5, seconds=1),
                 said.append)
    assert len(said) == 3 and "clip" in said[-1]


def test_what_the_demo_prints() -> None:
    assert page_url("http://127.0.0.1:8080", "Saint Anselm's") == "http://127.0.0.1:8080/?city=Saint%20Anselm%27s"
    assert page_url("http://h", "A", autostart=True) == "http://h/?city=A&autostart=1"
    row = {"status": "live", "sights": 5, "images": 200, "labelled_images": 150, "model": {"version": 2}}
    assert progress_line(row, 200) == "live       sights 5  crawled 200/200  labelled 150  model v2"
    assert progress_line({"status": "requested"}, 200).endswith("crawled 0/200  labelled 0  model -")
