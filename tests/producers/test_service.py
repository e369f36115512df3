"""The crawler service on real Kafka: crawl requests in, images (and their change events) out, bad ones dead-lettered.

Each test uses its own TOPIC_PREFIX for the command topics (the `isolated` fixture).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from localsystem.demo.web_sources import FakeCity, FakeFile
from producers.service import CrawlerService, crawl_in_child
from producers.settings import CrawlerSettings
from sightscan import db, kafka
from sightscan.commands import BadCommand, RetryLater
from sightscan.topics import change_topic, command_dead_letter_topic, command_topic
from tests.support.crawl import FAST, ROOT, city_row, crawler_env, stored_images


def _publish(settings, messages: list[tuple[bytes, bytes]]) -> None:
    producer = kafka.producer(settings)
    for key, value in messages:
        producer.produce(command_topic("crawl", settings.topic_prefix), value, key=key)
    assert producer.flush(30) == 0


def _crawl_request(city: db.City, sights: int, images: int) -> tuple[bytes, bytes]:
    value = {"request_id": f"crawl-{city.id}", "city_id": city.id, "city": city.name, "max_sights_per_city": sights,
             "max_images_per_sight": images, "ts_ms": int(time.time() * 1000)}
    return str(city.id).encode(), json.dumps(value).encode()


def test_crawl_requests_from_kafka_fill_the_warehouse_once(settings, isolated, web, photos, topic_reader):
    ks = isolated
    with db.transaction(settings) as cur:
        city, _ = db.request_city(cur, f"Kafkaville {uuid.uuid4().hex[:8]}")
    web.fake.add_city(FakeCity(city.name, "Q7101", ["Kafka Bridge", "Kafka Tower", "Kafka Gate"]))
    web.fake.add_images("Kafka Bridge", [FakeFile("k1.jpg", photos[0]), FakeFile("k2.jpg", photos[1])])
    web.fake.add_images("Kafka Tower", [FakeFile("k3.jpg", photos[2]), FakeFile("k4.jpg", photos[3]),
                                        FakeFile("k5.jpg", photos[4])])
    cs = CrawlerSettings.from_env({**web.env(), **FAST})
    events = topic_reader(change_topic("images"), from_now=True)
    dead = topic_reader(command_dead_letter_topic(ks.topic_prefix), from_now=True)

    _publish(ks, [(b"junk", b"{not json"),
                  _crawl_request(db.City(987654321987, "Atlantis", "requested"), 2, 2),
                  _crawl_request(city, 2, 2)])
    assert CrawlerService(ks, cs).worker.run(max_commands=3, idle_exit_s=60) == 3

    # The good request: two sights (max_sights_per_city), two images each (max_images_per_sight; which two of
    # Kafka Tower's three is down to which downloads finish first).
    rows = stored_images(settings, city.id)
    files = {r["sight"]: set() for r in rows}
    for r in rows:
        files[r["sight"]].add(r["source_url"].rsplit("-", 1)[1])
    assert files["Kafka Bridge"] == {"k1.jpg", "k2.jpg"}
    assert len(files["Kafka Tower"]) == 2 and files["Kafka Tower"] < {"k3.jpg", "k4.jpg", "k5.jpg"}
    assert len(rows) == 4 and set(files) == {"Kafka Bridge", "Kafka Tower"}
    assert city_row(settings, city.name).status == "labelling"
    def image_ids(messages: list[dict]) -> set[int]:
        return {m["value"]["after"]["id"] for m in messages
                if m["value"] and (m["value"].get("after") or {}).get("city_id") == city.id}

    assert len(image_ids(events.collect(lambda ms: len(image_ids(ms)) >= 4, timeout=60))) == 4

    # The bad ones went to the dead-letter topic with their reasons, and the worker kept going.
    letters = dead.collect(lambda ms: len(ms) >= 2, timeout=30)
    reasons = sorted(m["value"]["reason"] for m in letters)
    assert reasons[0].startswith("not JSON") and reasons[1] == "unknown city id 987654321987"

    # The same request redelivered (after a crash, say): nothing fetched or stored twice.
    searches = len(web.fake.requested("/commons/"))
    _publish(ks, [_crawl_request(city, 2, 2)])
    assert CrawlerService(ks, cs).worker.run(max_commands=1, idle_exit_s=60) == 1
    assert len(stored_images(settings, city.id)) == 4
    assert len(web.fake.requested("/commons/")) == searches  # both sights already had their images: skipped


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_requests_and_source_outages(settings, isolated, web):
    cs = CrawlerSettings.from_env({**web.env(), **FAST})
    service = CrawlerService(isolated, cs)
    try:
        with pytest.raises(BadCommand, match="unknown city id"):
            service.handle({"request_id": "crawl-987654321987", "city_id": 987654321987})
        with db.transaction(settings) as cur:
            city, _ = db.request_city(cur, f"Outageton {uuid.uuid4().hex[:8]}")
        with pytest.raises(BadCommand, match="max_images_per_sight"):
            service.handle({"city_id": city.id, "max_images_per_sight": -1})

        # Wikidata unreachable: nothing stored, so the request is retried later rather than the city failed.
        down = dataclasses.replace(cs, wikidata_api_url=f"http://127.0.0.1:{_dead_port()}/w/api.php")
        with pytest.raises(RetryLater, match="sources failed"):
            crawl_in_child(settings, down, city.id, sights_limit=1, images_limit=1)
        assert city_row(settings, city.name).status == "crawling"
    finally:
        service.worker.consumer.close()


def test_python_m_producers_serve_crawls_requests_until_sigterm(settings, isolated, web, photos, tmp_path):
    ks = isolated
    with db.transaction(settings) as cur:
        city, _ = db.request_city(cur, f"Servetown {uuid.uuid4().hex[:8]}")
    web.fake.add_city(FakeCity(city.name, "Q7201", ["Serve Arch"]))
    web.fake.add_images("Serve Arch", [FakeFile("s1.jpg", photos[5])])
    _publish(ks, [_crawl_request(city, 1, 1)])

    log = tmp_path / "crawler.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "producers", "serve"], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env={**crawler_env(settings, web), **ks.env()})
    try:
        deadline = time.monotonic() + 60
        while "crawl command done" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
        assert len(stored_images(settings, city.id)) == 1, log.read_text()
        assert city_row(settings, city.name).status == "labelling"
    finally:
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(30)
    assert returncode == 0, log.read_text()
