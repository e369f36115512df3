"""The whole event-driven loop across real services, on the real stack: a city request becomes a crawl command;
the crawler (scrapy) finds its sights and images on a local web that speaks Wikidata's and Commons' APIs; the
stream agents ask for labels; the labeller sends the images through the real Vision client to a local Vision
server; the labels cross the threshold into a training command; the trainer stores a model, whose change event
the stream agents count; and the model serves through the gateway's ONNX detector.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, TopicPartition
from PIL import Image

from sightscan import db
from sightscan.config import Settings
from sightscan.demo.web_sources import WebSources, from_synthetic_city
from sightscan.detector import OnnxDetector, preprocess
from sightscan.events import WATCHED_TABLES, change_topic, command_topic, training_events_topic
from sightscan.topics import ensure_topics
from streams.rekey import rekey_group
from streams.testing import Worker, wait_marts_match
from tests.fakes.vision_server import FakeVision, VisionServer, box_landmark
from tests.synthetic import render_city

ROOT = Path(__file__).resolve().parents[1]
LOOP_SETTINGS = {"MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING": "30", "MIN_IMAGE_NUMBER_PER_LABEL": "8",
                 "MTS_EPOCHS": "2", "LABELLING_BATCH_SIZE": "16", "SIGHTSCAN_LOG_FORMAT": "console"}


def _for_city(city_id: int):
    return lambda msgs: [m["value"] for m in msgs if m["value"] and m["value"].get("city_id") == city_id]


def _group_at_end(settings: Settings, group: str, topics: list[str]) -> None:
    """A new consumer group that starts after everything already on the topics: the other tests' cities, which
    this loop's services must neither replay nor touch."""
    ensure_topics(settings, topics)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": group})
    ends = []
    for topic in topics:
        for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            ends.append(TopicPartition(topic, p, high))
    consumer.commit(offsets=ends, asynchronous=False)
    consumer.close()


def _service(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = open(log, "wb")  # noqa: SIM115 - the child writes it
    return subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)


def test_city_request_becomes_a_trained_model(settings, tmp_path, topic_reader):
    name = f"Loopton {uuid.uuid4().hex[:6]}"
    folder = render_city(tmp_path / "city", sights=3, per_sight=14, seed=5, city=name)
    coco = json.loads((folder / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}

    # The web and Google Vision, local: Commons serves the synthetic photos; Vision knows each photo's landmarks.
    vision = FakeVision()
    files = {img["id"]: (folder / img["file_name"]).read_bytes() for img in coco["images"]}
    for image_id, data in files.items():
        boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image_id]
        cats = [a["category_id"] for a in coco["annotations"] if a["image_id"] == image_id]
        vision.know_image(data, [box_landmark(names[c], (int(x), int(y), int(x + w), int(y + h)))
                                 for c, (x, y, w, h) in zip(cats, boxes, strict=True)])
    web = WebSources(from_synthetic_city(folder, name)).start()
    vision_server = VisionServer(vision).start()

    run = uuid.uuid4().hex[:8]
    groups = {"CRAWLER_GROUP_ID": f"loop-crawl-{run}", "LABELLER_GROUP_ID": f"loop-label-{run}",
              "TRAINER_GROUP_ID": f"loop-train-{run}"}
    for group, kind in zip(groups.values(), ("crawl", "labelling", "training"), strict=True):
        _group_at_end(settings, group, [command_topic(kind)])
    # The stream worker's rekey stage too: it starts at the end of the change topics.
    _group_at_end(settings, rekey_group(f"loop-{run}"), [*(change_topic(t) for t in WATCHED_TABLES),
                                                         training_events_topic()])
    env = {**os.environ, **settings.env(), **LOOP_SETTINGS, **web.env(), **groups,
           "GOOGLE_VISION_ENDPOINT": vision_server.endpoint, "TRAINER_THREADS": "2"}

    readers = {kind: topic_reader(command_topic(kind), from_now=True) for kind in ("crawl", "labelling", "training")}
    outcomes = topic_reader(training_events_topic(), from_now=True)
    worker = Worker(settings, f"loop-{run}", tmp_path / "streams.log", LOOP_SETTINGS).start()
    services = [_service(["producers", "serve"], env, tmp_path / "crawler.log"),
                _service(["consumers", "serve"], env, tmp_path / "labeller.log"),
                _service(["trainer", "serve"], env, tmp_path / "trainer.log")]
    try:
        # A user asks for the city; nothing else is done by hand from here on.
        with db.transaction(settings) as cur:
            city, _ = db.request_city(cur, name)
        crawl = _for_city(city.id)(readers["crawl"].collect(lambda ms: _for_city(city.id)(ms), timeout=60))[0]
        assert crawl["request_id"] == f"crawl-{city.id}"

        training = _for_city(city.id)(readers["training"].collect(lambda ms: _for_city(city.id)(ms), timeout=300))
        assert len(training) == 1 and training[0]["epochs"] == 2, training
        # The crossing comes while labels still arrive: the classes are the sights that had enough by then.
        assert set(training[0]["classes"]) <= set(names.values()) and len(training[0]["classes"]) >= 2
        labelling = _for_city(city.id)(readers["labelling"].collect(lambda ms: _for_city(city.id)(ms), timeout=30))
        assert labelling, "the labeller was asked for labels"

        # The crawler stores every photo once, with its licence and the sight it searched for (the training
        # request may come before the crawl ends), and every one gets Vision's labels.
        def crawled_and_labelled() -> tuple:
            with db.transaction(settings) as cur:
                cur.execute("SELECT count(*), count(DISTINCT sha256),"
                            " bool_and(licence IS NOT NULL AND sight_id IS NOT NULL)"
                            " FROM images WHERE city_id = %s AND origin = 'crawl'", (city.id,))
                images = cur.fetchone()
                cur.execute("SELECT count(DISTINCT image_id), bool_and(labeller = 'google-vision' AND NOT weak)"
                            " FROM labels WHERE city_id = %s", (city.id,))
                return (*images, *cur.fetchone())

        deadline = time.monotonic() + 120
        while (state := crawled_and_labelled()) != (len(files), len(files), True, len(files), True):
            assert time.monotonic() < deadline, f"crawled, distinct, with metadata, labelled, by Vision: {state}"
            time.sleep(1)
        assert vision.images_received == len(files)  # each photo sent to Vision once, never again

        request_id = training[0]["request_id"]
        done = [m["value"] for m in outcomes.collect(
            lambda ms: any(m["value"].get("request_id") == request_id for m in ms), timeout=600)
            if m["value"].get("request_id") == request_id]
        assert done[0]["status"] == "succeeded", done[0]
        with db.transaction(settings) as cur:
            model = db.latest_model(cur, city.id)
            cur.execute("SELECT status FROM cities WHERE id = %s", (city.id,))
            print("city status", cur.fetchone())
        assert model is not None and model.version == 1
        assert set(model.classes) <= set(names.values()) and len(model.classes) >= 2
        wait_marts_match(settings, [city.id])  # the model's change event reached the marts too

        # The stored model serves through the gateway's detector (the ONNX contract both sides share).
        detector = OnnxDetector(model.onnx, model.classes, model.input_size, threads=1)
        rgb = np.asarray(Image.open(folder / coco["images"][0]["file_name"]).convert("RGB"))
        (found,) = detector.detect(preprocess(rgb, model.input_size)[None])
        assert found and all(d.sight in model.classes and 0 <= d.score <= 1 for d in found)
    finally:
        worker.stop()
        for proc in services:
            proc.terminate()
        for proc in services:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        web.stop()
        vision_server.stop()
