"""The event-driven loop across services, on the real stack: a city request becomes a crawl command; crawled
images become labelling commands; labels cross the threshold into a training command; the trainer service
turns it into a model row, whose change event the stream agents count.

The crawler and labeller are not built yet (issue 4): this test plays their part on the command topics, with
images and boxes from the synthetic city generator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from sightscan import db
from sightscan.detector import OnnxDetector, preprocess
from sightscan.events import command_topic, training_events_topic
from streams.testing import Worker, wait_marts_match
from tests.synthetic import render_city

ROOT = Path(__file__).resolve().parents[1]
LOOP_SETTINGS = {"MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING": "30", "MIN_IMAGE_NUMBER_PER_LABEL": "8",
                 "MTS_EPOCHS": "2", "LABELLING_BATCH_SIZE": "16"}


def _for_city(city_id: int):
    return lambda msgs: [m["value"] for m in msgs if m["value"] and m["value"].get("city_id") == city_id]


def test_city_request_becomes_a_trained_model(settings, tmp_path, topic_reader):
    folder = render_city(tmp_path / "city", sights=3, per_sight=14, seed=5, city="Loopton")
    coco = json.loads((folder / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}

    readers = {kind: topic_reader(command_topic(kind), from_now=True) for kind in ("crawl", "labelling", "training")}
    outcomes = topic_reader(training_events_topic(), from_now=True)
    worker = Worker(settings, f"loop-{uuid.uuid4().hex[:8]}", tmp_path / "streams.log", LOOP_SETTINGS).start()
    trainer_log = open(tmp_path / "trainer.log", "wb")  # noqa: SIM115 - the child writes it
    trainer = subprocess.Popen(
        [sys.executable, "-m", "trainer", "serve"], cwd=ROOT, stdout=trainer_log, stderr=subprocess.STDOUT,
        env={**os.environ, **settings.env(), **LOOP_SETTINGS, "TRAINER_GROUP_ID": f"loop-{uuid.uuid4().hex[:8]}",
             "TRAINER_THREADS": "2", "SIGHTSCAN_LOG_FORMAT": "console"})
    try:
        # A user asks for the city.
        with db.transaction(settings) as cur:
            city, _ = db.request_city(cur, f"Loopton {uuid.uuid4().hex[:6]}")
        crawl = _for_city(city.id)(readers["crawl"].collect(lambda ms: _for_city(city.id)(ms), timeout=60))[0]
        assert crawl["request_id"] == f"crawl-{city.id}"

        # The crawler's part: sights, then images, each with the sight it was searched for.
        boxes: dict[int, list] = {}
        with db.transaction(settings) as cur:
            sight_ids = {cid: db.ensure_sight(cur, city.id, n, "crawl") for cid, n in names.items()}
            by_image = {}
            for img in coco["images"]:
                by_image[img["id"]] = db.insert_image(cur, db.NewImage(
                    city.id, (folder / img["file_name"]).read_bytes(), "image/jpeg", img["width"], img["height"],
                    "crawl", sight_ids[next(k for k, v in names.items() if v == img["query_sight"])]))
            sizes = {img["id"]: (img["width"], img["height"]) for img in coco["images"]}
            for ann in coco["annotations"]:
                w, h = sizes[ann["image_id"]]
                x, y, bw, bh = ann["bbox"]
                boxes.setdefault(by_image[ann["image_id"]], []).append(
                    (sight_ids[ann["category_id"]], (x / w, y / h, min(1.0, (x + bw) / w), min(1.0, (y + bh) / h))))

        # The labeller's part: answer every labelling request for this city until each image is labelled.
        labelled: set[int] = set()
        while labelled != set(boxes):
            requests = _for_city(city.id)(readers["labelling"].collect(
                lambda ms: any(set(r["image_ids"]) - labelled for r in _for_city(city.id)(ms)), timeout=60))
            with db.transaction(settings) as cur:
                for image_id in {i for r in requests for i in r["image_ids"]} - labelled:
                    for sight_id, box in boxes[image_id]:
                        db.insert_label(cur, db.NewLabel(image_id, city.id, "test-labeller", sight_id, 0.95, box))
                    labelled.add(image_id)

        # The stream agents cross the threshold once; the trainer answers the request with a stored model.
        training = _for_city(city.id)(readers["training"].collect(lambda ms: _for_city(city.id)(ms), timeout=60))
        assert len(training) == 1 and training[0]["epochs"] == 2 and len(training[0]["classes"]) == 3
        request_id = training[0]["request_id"]
        done = [m["value"] for m in outcomes.collect(
            lambda ms: any(m["value"].get("request_id") == request_id for m in ms), timeout=600)
            if m["value"].get("request_id") == request_id]
        assert done[0]["status"] == "succeeded", done[0]
        with db.transaction(settings) as cur:
            model = db.latest_model(cur, city.id)
        assert model is not None and model.version == 1 and sorted(model.classes) == sorted(names.values())
        wait_marts_match(settings, [city.id])  # the model's change event reached the marts too

        # The stored model serves through the gateway's detector (the ONNX contract both sides share).
        detector = OnnxDetector(model.onnx, model.classes, model.input_size, threads=1)
        rgb = np.asarray(Image.open(folder / coco["images"][0]["file_name"]).convert("RGB"))
        (found,) = detector.detect(preprocess(rgb, model.input_size)[None])
        assert found and all(d.sight in model.classes and 0 <= d.score <= 1 for d in found)
    finally:
        worker.stop()
        trainer.terminate()
        trainer.wait(30)
        trainer_log.close()
