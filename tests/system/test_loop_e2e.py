"""The whole event-driven loop across real services, on the real stack: a city request becomes a crawl command;
the crawler (scrapy) finds its sights and images on a local web that speaks Wikidata's and Commons' APIs; the
stream agents ask for labels; the labeller sends the images through the real Vision client to a local Vision
server; the labels cross the threshold into a training command; the trainer stores a model, whose change event
the stream agents count; and the model serves through the gateway's ONNX detector.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import numpy as np
from confluent_kafka import Consumer, KafkaException, TopicPartition
from PIL import Image

from localsystem.demo import city as demo_city
from localsystem.demo.city import clip_frames
from localsystem.demo.scoring import ClipScore, frame_truths
from localsystem.demo.web_sources import WebSources, from_synthetic_city
from sightscan import db, kafka
from sightscan.config import Settings
from sightscan.detector import OnnxDetector, preprocess
from sightscan.topics import WATCHED_TABLES, change_topic, command_topic, ensure_topics, training_events_topic
from streams.rekey import rekey_group
from tests.support.gateway import next_message, start_gateway, stop_gateway
from tests.support.streams import Worker, wait_marts_match
from tests.support.synthetic import render_city
from tests.support.vision_server import FakeVision, VisionServer, box_landmark

ROOT = Path(__file__).resolve().parents[2]
LOOP_SETTINGS = {"MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING": "30", "MIN_IMAGE_NUMBER_PER_LABEL": "8",
                 "MTS_EPOCHS": "2", "LABELLING_BATCH_SIZE": "16", "SIGHTSCAN_LOG_FORMAT": "console"}


def _for_city(city_id: int):
    return lambda msgs: [m["value"] for m in msgs if m["value"] and m["value"].get("city_id") == city_id]


def _high_watermark(consumer: Consumer, tp: TopicPartition) -> int:
    """A topic just created may not have its partition leaders yet: ask again until they answer."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=10)[1]
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _group_at_end(settings: Settings, group: str, topics: list[str]) -> None:
    """A new consumer group that starts after everything already on the topics: the other tests' cities, which
    this loop's services must neither replay nor touch."""
    ensure_topics(settings, topics)
    consumer = kafka.consumer(settings, group)
    ends = []
    for topic in topics:
        for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            ends.append(TopicPartition(topic, p, _high_watermark(consumer, TopicPartition(topic, p))))
    consumer.commit(offsets=ends, asynchronous=False)
    consumer.close()


def _service(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = open(log, "wb")  # noqa: SIM115 - the child writes it
    return subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)


def _private_groups(settings: Settings, app_id: str) -> dict[str, str]:
    """The crawler's, labeller's and trainer's consumer groups for this loop (as settings), and the stream worker's
    rekey group for `app_id`, each starting at the end of its topics."""
    groups = {"CRAWLER_GROUP_ID": f"{app_id}-crawl", "LABELLER_GROUP_ID": f"{app_id}-label",
              "TRAINER_GROUP_ID": f"{app_id}-train"}
    for group, kind in zip(groups.values(), ("crawl", "labelling", "training"), strict=True):
        _group_at_end(settings, group, [command_topic(kind)])
    _group_at_end(settings, rekey_group(app_id), [*(change_topic(t) for t in WATCHED_TABLES),
                                                  training_events_topic()])
    return groups


def _start_services(env: dict[str, str], logs: Path) -> list[subprocess.Popen]:
    """The crawler, the labeller and the trainer as services."""
    return [_service(["producers", "serve"], env, logs / "crawler.log"),
            _service(["consumers", "serve"], env, logs / "labeller.log"),
            _service(["trainer", "serve"], env, logs / "trainer.log")]


def _stop_services(services: list[subprocess.Popen]) -> None:
    for proc in services:
        proc.terminate()
    for proc in services:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


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

    app_id = f"loop-{uuid.uuid4().hex[:8]}"
    groups = _private_groups(settings, app_id)
    env = {**os.environ, **settings.env(), **LOOP_SETTINGS, **web.env(), **groups,
           "GOOGLE_VISION_ENDPOINT": vision_server.endpoint, "TRAINER_THREADS": "2"}

    readers = {kind: topic_reader(command_topic(kind), from_now=True) for kind in ("crawl", "labelling", "training")}
    outcomes = topic_reader(training_events_topic(), from_now=True)
    worker = Worker(settings, app_id, tmp_path / "streams.log", LOOP_SETTINGS).start()
    services = _start_services(env, tmp_path)
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
        # The request's model is version 1; the data grew while it trained, so a retrain may already have stored v2.
        assert done[0]["version"] == 1 and model is not None and model.version >= 1
        assert set(model.classes) <= set(names.values()) and len(model.classes) >= 2
        wait_marts_match(settings, [city.id])  # the model's change event reached the marts too

        # The stored model serves through the gateway's detector (the ONNX contract both sides share).
        detector = OnnxDetector(model.onnx, model.classes, model.input_size, threads=1)
        rgb = np.asarray(Image.open(folder / coco["images"][0]["file_name"]).convert("RGB"))
        batch = preprocess(rgb, model.input_size)[None]
        _, scores, _ = detector.run(batch)
        # Two epochs make no useful model; what matters here is the contract: scores sorted, and 0 ("no
        # detection") or at least the operating threshold the trainer calibrated and stored in the graph.
        threshold = model.metrics["threshold"]
        assert (np.diff(scores[0]) <= 0).all() and ((scores == 0) | (scores >= threshold - 1e-6)).all(), scores
        (found,) = detector.detect(batch)
        assert len(found) == int((scores[0] > 0).sum())
        assert all(d.sight in model.classes and threshold - 1e-6 <= d.score <= 1 for d in found)
    finally:
        worker.stop()
        _stop_services(services)
        web.stop()
        vision_server.stop()

    # The loop's commands and its trained outcome match the AsyncAPI document of the topics (sightscan/asyncapi.py).
    from tests.core.test_asyncapi import errors_against_document
    for channel, value in [("crawlCommands", crawl), *(("labellingCommands", v) for v in labelling),
                           ("trainingCommands", training[0]), *(("trainingEvents", v) for v in done)]:
        assert not errors_against_document(channel, value, check_key=False), (channel, value)


# The offline default, scored live ----------------------------------------------------------------------------

# The model trains once every one of the city's 80 photos is labelled: a model on part of them (48) named the sights
# but boxed too loosely for two-sight frames (0 of 20), and when a retraining comes depends on how labels and the
# first model's event interleave, which a test cannot pin.
OFFLINE_SETTINGS = {"MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING": "80", "MIN_IMAGE_NUMBER_PER_LABEL": "8",
                    "MTS_EPOCHS": "30", "LABELLING_BATCH_SIZE": "16", "LABELLER_BACKEND": "weak",
                    "SIGHTSCAN_LOG_FORMAT": "console"}


async def _stream_clip(gateway_ws: str, city: str, frames: list) -> tuple[ClipScore, int]:  # noqa: ANN001
    """Send each clip frame as a JPEG over /ws/detect and score its answer (ClipScore's three checks)."""
    import aiohttp

    score = ClipScore()
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{gateway_ws}?city={quote(city)}") as ws:
        hello = await next_message(ws, "hello")
        version = hello["model"]["model_version"] if hello.get("model") else 0
        for frame in frames:
            buf = io.BytesIO()
            Image.fromarray(frame.rgb).save(buf, "JPEG", quality=85)
            await ws.send_bytes(buf.getvalue())
            answer = await next_message(ws, "detections", timeout=30)
            score.add(frame_truths(frame), [(d["sight"], d["score"], d["box"]) for d in answer["detections"]])
    return score, version


def test_offline_loop_recognises_the_city_live(settings, tmp_path, topic_reader):
    """Local synthetic sources -> crawler -> weak labeller -> trainer -> gateway, then the city's own webcam clip
    through /ws/detect: the top detection names the sight in view, a frame of street with no sight gets no
    detection, and a frame with two sights gets a box on each."""
    name = f"Offlineton {uuid.uuid4().hex[:6]}"
    info = demo_city.render_city(tmp_path / "city", city=name, seed=21, sights=4, per_sight=20)
    web = WebSources(from_synthetic_city(info.folder, name)).start()
    app_id = f"offline-{uuid.uuid4().hex[:8]}"
    groups = _private_groups(settings, app_id)
    env = {**os.environ, **settings.env(), **OFFLINE_SETTINGS, **web.env(), **groups, "TRAINER_THREADS": "2"}
    outcomes = topic_reader(training_events_topic(), from_now=True)
    worker = Worker(settings, app_id, tmp_path / "streams.log", OFFLINE_SETTINGS).start()
    services = _start_services(env, tmp_path)
    gateway = start_gateway(settings, tmp_path / "gateway.log", GATEWAY_INFERENCE_THREADS="2")
    try:
        with db.transaction(settings) as cur:
            requested, _ = db.request_city(cur, name)
        first = outcomes.collect(lambda ms: any(m["value"].get("city_id") == requested.id for m in ms), timeout=600)
        event = next(m["value"] for m in first if m["value"].get("city_id") == requested.id)
        assert event["status"] == "succeeded", event
        # Every sight has enough photos, so the model knows every sight.
        assert sorted(event["classes"]) == sorted(info.sights), event["classes"]
        metrics = event["metrics"]
        assert metrics["labels"]["boxes"] == 0 and metrics["labels"]["image_level"] > 0
        assert metrics["map50"] is None and metrics["pretrained"] is True

        frames = list(clip_frames(info, seconds=8, fps=10))
        score, version = asyncio.run(_stream_clip(gateway.ws_url, name, frames))
        print(f"\n[loop] model v{version} {metrics['top1']=} {metrics['threshold']=} clip {score.as_dict()}")
        assert version >= 1 and score.sight_frames and score.empty_frames and score.pair_frames
        # The three open-world checks through the real loop. Seed 21 (4 x 20 photos): top-1 1.0, no no-sight frame
        # claimed (0 of 16), both sights boxed at IoU >= 0.5 on 11 of 20 two-sight frames, mean IoU 0.65.
        assert score.top1 >= 0.85, score.as_dict()                 # the right sight, on sight frames
        assert score.false_claims <= 0.15, score.as_dict()         # no claim, on no-sight frames
        assert score.both_boxed >= 0.2, score.as_dict()            # both sights boxed, on two-sight frames
        assert score.mean_iou >= 0.4, score.as_dict()
    finally:
        stop_gateway(gateway)
        worker.stop()
        _stop_services(services)
        web.stop()
