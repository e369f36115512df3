"""Corrections in the warehouse, as the trainer reads them (real PostgreSQL): user boxes become true boxes and
"wrong sight" ones hard examples, "no sight" frames negatives, and a disowned user's corrections are gone; a refused
model is announced as a "rejected" outcome that the AsyncAPI document and the stream worker both read."""

from __future__ import annotations

import dataclasses
import io
import json
import uuid

import pytest
from PIL import Image

from sightscan import db, kafka
from sightscan.config import Settings
from sightscan.topics import command_topic, training_events_topic
from streams.facts import fact_from_training_outcome
from tests.core.test_asyncapi import errors_against_document
from tests.trainer.trainer_helpers import load_city
from trainer import service as trainer_service
from trainer.guard import Rejected
from trainer.pipeline import export_dataset
from trainer.service import TrainerService
from trainer.settings import load


def _frame(rgb: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), rgb).save(buf, "JPEG")
    return buf.getvalue()


def _correct(cur, city_id: int, image_id: int, action: str, user_id: int | None, sight_id: int | None = None,
             box: tuple[float, float, float, float] | None = None) -> int:
    """A correction and its label, as the gateway writes them (docs/corrections.md)."""
    cur.execute("INSERT INTO corrections (city_id, image_id, user_id, action) VALUES (%s, %s, %s, %s) RETURNING id",
                (city_id, image_id, user_id, action))
    correction_id = cur.fetchone()[0]
    kind = "user-negative" if action == "no-sight" else "user-box"
    cur.execute("INSERT INTO labels (image_id, city_id, sight_id, x_min, y_min, x_max, y_max, labeller, kind,"
                " correction_id) VALUES (%s, %s, %s, %s, %s, %s, %s, 'user:test', %s, %s)",
                (image_id, city_id, sight_id, *(box or (None,) * 4), kind, correction_id))
    return correction_id


def test_the_trainer_reads_user_boxes_as_true_boxes_and_no_sight_frames_as_negatives(settings, small_city):
    city_id, sights = load_city(settings, small_city, f"Fixville {uuid.uuid4().hex[:6]}")
    with db.transaction(settings) as cur:
        cur.execute("SELECT id, name FROM sights WHERE city_id = %s", (city_id,))
        sight_ids = {name: sid for sid, name in cur.fetchall()}
        cur.execute("SELECT min(id) FROM images WHERE city_id = %s", (city_id,))
        crawled = cur.fetchone()[0]
        ada = db.insert_user(cur, f"ada-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex * 2).id
        eve = db.insert_user(cur, f"eve-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex * 2).id
        frames = [db.insert_image(cur, db.NewImage(city_id, _frame((10 * i, 90, 140)), "image/jpeg", 64, 48, "user"))
                  for i in range(4)]
        _correct(cur, city_id, frames[0], "wrong-sight", ada, sight_ids[sights[1]], (0.2, 0.1, 0.8, 0.9))
        _correct(cur, city_id, frames[1], "confirm", None, sight_ids[sights[0]], (0.1, 0.1, 0.5, 0.5))
        _correct(cur, city_id, frames[2], "no-sight", ada)
        _correct(cur, city_id, crawled, "no-sight", ada)   # a crawled photo a user says shows no sight
        _correct(cur, city_id, frames[3], "box", eve, sight_ids[sights[2]], (0.3, 0.3, 0.6, 0.6))
        cur.execute("DELETE FROM corrections WHERE user_id = %s", (eve,))   # eve disowned: her corrections go

    ds = export_dataset(settings, city_id)
    by_key = {s.key: s for s in ds.samples}
    wrong, confirmed = by_key[frames[0]], by_key[frames[1]]
    assert ds.classes[wrong.labels[0]] == sights[1] and wrong.boxes == ((0.2, 0.1, 0.8, 0.9),)
    assert (wrong.origin, wrong.user_id, wrong.hard, wrong.weak) == ("user", ada, True, False)
    assert ds.classes[confirmed.labels[0]] == sights[0] and confirmed.user_id is None and not confirmed.hard
    assert by_key[frames[2]].negative and by_key[frames[2]].user_id == ada
    assert by_key[crawled].negative and by_key[crawled].origin == "user"   # the user wins over the labeller
    assert frames[3] not in by_key
    assert sum(s.origin == "labeller" for s in ds.samples) == 3 * 22 - 1


@pytest.fixture
def isolated(settings: Settings) -> Settings:
    return dataclasses.replace(settings, topic_prefix=f"t{uuid.uuid4().hex[:10]}")


def test_a_refused_model_is_announced_as_rejected_and_stores_no_model(isolated, topic_reader, monkeypatch):
    with db.transaction(isolated) as cur:
        city, _ = db.request_city(cur, f"Guarded {uuid.uuid4().hex[:6]}")
        live = db.insert_model(cur, city.id, b"live-onnx", ["Old Tower"], 224, {"split": "stable-v1"})
    guard = {"checked": True, "accepted": False, "live_version": live.version,
             "candidate": {"top1": 0.1, "false_claims": 0.0, "images": 13, "negatives": 10},
             "live": {"top1": 0.6, "false_claims": 0.0, "images": 13, "negatives": 10}}

    def refused(*args, **kwargs):  # what train_city raises when the guard refuses its model (trainer/guard.py)
        raise Rejected("the model trained with 12 corrections does worse than live version 1", guard)

    monkeypatch.setattr(trainer_service, "train_city", refused)
    kafka.deliver(kafka.producer(isolated), command_topic("training", isolated.topic_prefix), json.dumps(
        {"city_id": city.id, "city": city.name, "epochs": 2, "classes": ["a", "b"], "reason": "corrections",
         "request_id": f"train-{city.id}-2"}).encode(), str(city.id).encode())
    service = TrainerService(isolated, load(isolated, {"TRAINER_GROUP_ID": f"g-{uuid.uuid4()}"}))
    assert service.run(max_requests=1, idle_exit_s=60) == 1

    reader = topic_reader(training_events_topic(isolated.topic_prefix))
    [message] = reader.collect(lambda ms: len(ms) >= 1, timeout=60)
    event = message["value"]
    assert event["status"] == "rejected" and event["trigger"] == "corrections" and event["guard"] == guard
    assert errors_against_document("trainingEvents", event, str(city.id).encode()) == []
    fact = fact_from_training_outcome(event)   # the stream worker reads it as an outcome (streams/state.py)
    assert fact is not None and fact["status"] == "rejected"
    with db.transaction(isolated) as cur:
        assert db.latest_model(cur, city.id).id == live.id
