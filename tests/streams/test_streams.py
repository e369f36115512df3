"""The stream agents against the real stack: marts equal SQL counts (corrections by kind included), one command per
threshold crossing under SIGKILL and rebalance, a retrain asked for by corrections, poison events to the
dead-letter topic."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from sightscan import db, kafka
from sightscan.topics import change_topic, command_topic, dead_letter_topic
from tests.support.streams import Worker, marts, one_per_crossing, wait_marts_match

THRESHOLDS = {
    "MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING": "12",
    "MIN_IMAGE_NUMBER_PER_LABEL": "5",
    "RETRAIN_GROWTH_FRACTION": "0.5",
    "MTS_EPOCHS": "7",
    "LABELLING_BATCH_SIZE": "8",
    "RETRAIN_MIN_CORRECTIONS": "3",
}


def _app_id() -> str:
    return f"streams-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def worker_factory(settings, tmp_path):
    workers: list[Worker] = []

    def make(app_id: str) -> Worker:
        w = Worker(settings, app_id, tmp_path / f"worker-{len(workers)}.log", THRESHOLDS)
        workers.append(w)
        return w

    yield make
    for w in workers:
        w.stop()


def _image(cur, city_id: int, sight_id: int | None, tag: str) -> int:
    return db.insert_image(cur, db.NewImage(city_id, f"img-{tag}-{uuid.uuid4()}".encode(), "image/jpeg", 64, 48,
                                            "crawl", sight_id))


def _label(cur, city_id: int, image_id: int, sight_id: int | None) -> int:
    box = (0.1, 0.1, 0.9, 0.9) if sight_id else None
    return db.insert_label(cur, db.NewLabel(image_id, city_id, "test", sight_id, 0.9 if sight_id else None, box))


def _correction(cur, city_id: int, image_id: int, sight_id: int | None) -> tuple[int, int]:
    """A user's correction of a frame, as the gateway stores it (docs/corrections.md): a box for the sight, or "no
    sight" when sight_id is None; returns (correction id, label id)."""
    action = "box" if sight_id else "no-sight"
    cur.execute("INSERT INTO corrections (city_id, image_id, action) VALUES (%s, %s, %s) RETURNING id",
                (city_id, image_id, action))
    correction_id = cur.fetchone()[0]
    box = (0.2, 0.2, 0.7, 0.8) if sight_id else (None,) * 4
    cur.execute("INSERT INTO labels (image_id, city_id, sight_id, x_min, y_min, x_max, y_max, labeller, kind,"
                " correction_id) VALUES (%s, %s, %s, %s, %s, %s, %s, 'user', %s, %s) RETURNING id",
                (image_id, city_id, sight_id, *box, "user-box" if sight_id else "user-negative", correction_id))
    return correction_id, cur.fetchone()[0]


def _user_frame(cur, city_id: int, tag: str) -> int:
    return db.insert_image(cur, db.NewImage(city_id, f"frame-{tag}-{uuid.uuid4()}".encode(), "image/jpeg", 64, 48,
                                            "user"))


def _commands(topic_reader, kind: str, city_ids: set[int], enough) -> list[dict]:
    reader = topic_reader(command_topic(kind))
    ours: list[dict] = []  # this test's commands, gathered as they come (the topic holds every test's)
    read = [0]

    def mine(m: dict) -> bool:  # other tests' commands, poison ones without a city_id too, are skipped
        return isinstance(m["value"], dict) and m["value"].get("city_id") in city_ids

    def enough_of_ours(ms: list[dict]) -> bool:
        ours.extend(m["value"] for m in ms[read[0]:] if mine(m))
        read[0] = len(ms)
        return enough(ours)

    msgs = reader.collect(enough_of_ours, timeout=90)
    time.sleep(2)  # late duplicates, if any, would arrive now
    msgs += reader.collect(lambda ms: True, timeout=1)
    return [m["value"] for m in msgs if mine(m)]


# A random history for one city: image inserts, deletes, label outcomes, label deletes, re-targeted images, models,
# and corrections (a user's box or "no sight" on a frame or a crawled image) and their undo.
OPS = st.lists(st.tuples(st.sampled_from(["image", "image", "label", "nolabel", "del_image", "del_label",
                                          "move", "model", "box", "nosight", "undo"]), st.integers(0, 1000)),
               min_size=5, max_size=40)


@pytest.fixture
def shared_worker(settings, tmp_path):
    """One worker for all of the property test's examples, stopped after it: two apps running at once would each
    derive their own commands for the same cities."""
    w = Worker(settings, _app_id(), tmp_path / "worker.log", THRESHOLDS).start()
    yield w
    w.stop()


@hsettings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_random_history_leaves_marts_equal_to_sql_counts(settings, shared_worker, ops):
    with db.transaction(settings) as cur:
        city, _ = db.request_city(cur, f"Prop {uuid.uuid4().hex[:8]}")
        sights = [db.ensure_sight(cur, city.id, f"Sight {i}") for i in range(3)]
    images: list[int] = []
    labels: list[int] = []
    corrections: list[int] = []
    for op, n in ops:
        with db.transaction(settings) as cur:
            if op in ("box", "nosight"):
                image_id = images[n % len(images)] if images and n % 2 else _user_frame(cur, city.id, str(n))
                if image_id not in images:
                    images.append(image_id)
                corrections.append(_correction(cur, city.id, image_id, sights[n % 3] if op == "box" else None)[0])
            elif op == "undo" and corrections:
                cur.execute("DELETE FROM corrections WHERE id = %s", (corrections.pop(n % len(corrections)),))
            elif op == "image":
                images.append(_image(cur, city.id, sights[n % 3], str(n)))
            elif op in ("label", "nolabel") and images:
                labels.append(_label(cur, city.id, images[n % len(images)], sights[n % 3] if op == "label" else None))
            elif op == "del_image" and images:
                cur.execute("DELETE FROM images WHERE id = %s", (images.pop(n % len(images)),))
            elif op == "del_label" and labels:
                cur.execute("DELETE FROM labels WHERE id = %s", (labels.pop(n % len(labels)),))
            elif op == "move" and labels:
                cur.execute("UPDATE labels SET sight_id = %s WHERE id = %s AND sight_id IS NOT NULL",
                            (sights[n % 3], labels[n % len(labels)]))
            elif op == "model":
                db.insert_model(cur, city.id, b"onnx", ["a", "b"], 64, {})
    assert shared_worker.alive()
    wait_marts_match(settings, [city.id])


def _grow_city(settings, name: str, n_images: int, label_every: int = 1) -> tuple[int, list[int]]:
    """A city with two sights and n_images labelled images, written a few rows per transaction."""
    with db.transaction(settings) as cur:
        city, _ = db.request_city(cur, name)
        sights = [db.ensure_sight(cur, city.id, f"{name} Tower"), db.ensure_sight(cur, city.id, f"{name} Gate")]
    ids = []
    for i in range(n_images):
        with db.transaction(settings) as cur:
            image_id = _image(cur, city.id, sights[i % 2], str(i))
            ids.append(image_id)
            if i % label_every == 0:
                _label(cur, city.id, image_id, sights[i % 2])
    return city.id, ids


def test_sigkill_and_restart_keeps_counts_and_one_command_per_crossing(settings, worker_factory, topic_reader):
    app_id = _app_id()
    worker = worker_factory(app_id).start()
    city_ids, unlabelled = [], set()
    for round_no in range(3):
        # 60 images, every third labelled: 20 labelled (10 per sight) crosses the training threshold of 12, and 40
        # images wait for labelling requests.
        city_id, images = _grow_city(settings, f"Kill {round_no} {uuid.uuid4().hex[:6]}", 60, label_every=3)
        city_ids.append(city_id)
        unlabelled |= {image_id for i, image_id in enumerate(images) if i % 3}
        time.sleep(random.uniform(1.0, 3.0))
        worker.kill()  # mid-stream: events are in flight, offsets and changelog partly written
        worker = worker_factory(app_id).start()
    print(f"app {app_id} cities {city_ids}")
    wait_marts_match(settings, city_ids, timeout=120)
    ids = set(city_ids)

    crawl = one_per_crossing(_commands(topic_reader, "crawl", ids, lambda cs: len({c["city_id"] for c in cs}) == 3))
    assert sorted(c["city_id"] for c in crawl.values()) == sorted(city_ids)

    training = one_per_crossing(_commands(topic_reader, "training", ids,
                                           lambda cs: len({c["city_id"] for c in cs}) == 3))
    assert sorted(c["city_id"] for c in training.values()) == sorted(city_ids)  # one per city: one crossing each
    for command in training.values():
        assert command["epochs"] == 7 and command["reason"] == "threshold" and len(command["classes"]) == 2

    labelling = one_per_crossing(_commands(
        topic_reader, "labelling", ids, lambda cs: unlabelled <= {i for c in cs for i in c["image_ids"]}))
    seen: dict[int, str] = {}
    for request_id, command in labelling.items():
        for image_id in command["image_ids"]:
            assert seen.setdefault(image_id, request_id) == request_id, f"image {image_id} in two requests"


def test_two_workers_one_dies_rebalance_keeps_counts_and_commands(settings, worker_factory, topic_reader):
    app_id = _app_id()
    a = worker_factory(app_id).start()
    b = worker_factory(app_id).start()
    time.sleep(8)  # both join the group and split the partitions
    city_ids = [_grow_city(settings, f"Rebal {i} {uuid.uuid4().hex[:6]}", 16)[0] for i in range(2)]
    b.kill()
    city_ids += [_grow_city(settings, f"Rebal {i} {uuid.uuid4().hex[:6]}", 16)[0] for i in range(2, 4)]
    assert a.alive()
    wait_marts_match(settings, city_ids, timeout=120)
    training = one_per_crossing(_commands(topic_reader, "training", set(city_ids),
                                           lambda cs: len({c["city_id"] for c in cs}) == 4))
    assert sorted(c["city_id"] for c in training.values()) == sorted(city_ids)


def test_retraining_request_when_labelled_data_grows(settings, worker_factory, topic_reader):
    worker_factory(_app_id()).start()
    city_id, _ = _grow_city(settings, f"Grow {uuid.uuid4().hex[:6]}", 12)
    first = _commands(topic_reader, "training", {city_id}, lambda cs: len(cs) >= 1)
    with db.transaction(settings) as cur:  # the trainer answers with a model: labelled data at 12
        db.insert_model(cur, city_id, b"onnx", ["a", "b"], 64, {})
    with db.transaction(settings) as cur:
        sights = [r[0] for r in (cur.execute("SELECT id FROM sights WHERE city_id = %s ORDER BY id", (city_id,))
                                 or cur.fetchall())]
        for i in range(6):  # +50 %: RETRAIN_GROWTH_FRACTION=0.5 is crossed at 18
            _label(cur, city_id, _image(cur, city_id, sights[i % 2], f"g{i}"), sights[i % 2])
    cmds = one_per_crossing(_commands(topic_reader, "training", {city_id}, lambda cs: len(cs) >= 2))
    assert [c["reason"] for c in sorted(cmds.values(), key=lambda c: c["request_id"])] == ["threshold", "growth"]
    assert first[0]["labelled_images"] == 12


def test_corrections_count_by_kind_ask_for_a_retrain_and_undo_brings_them_down(settings, worker_factory,
                                                                              topic_reader):
    worker_factory(_app_id()).start()
    city_id, _ = _grow_city(settings, f"Fix {uuid.uuid4().hex[:6]}", 12)
    _commands(topic_reader, "training", {city_id}, lambda cs: len(cs) >= 1)  # the first: threshold
    with db.transaction(settings) as cur:  # the trainer answers with a model
        db.insert_model(cur, city_id, b"onnx", ["a", "b"], 64, {})
        cur.execute("SELECT id FROM sights WHERE city_id = %s ORDER BY id", (city_id,))
        tower, gate = (r[0] for r in cur.fetchall())
    with db.transaction(settings) as cur:  # a user boxes two frames and says "no sight" on a third
        box_a = _correction(cur, city_id, _user_frame(cur, city_id, "a"), tower)[0]
        _correction(cur, city_id, _user_frame(cur, city_id, "b"), gate)
        nothing = _correction(cur, city_id, _user_frame(cur, city_id, "c"), None)[0]

    def counts() -> tuple[tuple, dict]:
        cities, sights = marts(settings, [city_id])
        return cities.get(city_id), sights

    wait_marts_match(settings, [city_id])
    city, sights = counts()
    # images, labelled, no landmark, models, user boxes, user negatives: the "no sight" frame is neither labelled
    # nor "no landmark"
    assert city == (15, 14, 0, 1, 2, 1)
    assert sights[tower] == (7, 1) and sights[gate] == (7, 1)
    cmds = one_per_crossing(_commands(topic_reader, "training", {city_id}, lambda cs: len(cs) >= 2))
    assert [c["reason"] for c in sorted(cmds.values(), key=lambda c: c["request_id"])] == ["threshold",
                                                                                            "corrections"]
    with db.transaction(settings) as cur:  # undo: the correction goes, and its label with it
        cur.execute("DELETE FROM corrections WHERE id = ANY(%s)", ([box_a, nothing],))
    wait_marts_match(settings, [city_id])
    city, sights = counts()
    assert city == (15, 13, 0, 1, 1, 0) and sights[tower] == (6, 0) and sights[gate] == (7, 1)


def test_sigkill_while_corrections_arrive_keeps_counts_exact_and_one_retrain(settings, worker_factory,
                                                                           topic_reader):
    app_id = _app_id()
    worker = worker_factory(app_id).start()
    city_id, _ = _grow_city(settings, f"Fixkill {uuid.uuid4().hex[:6]}", 12)
    _commands(topic_reader, "training", {city_id}, lambda cs: len(cs) >= 1)  # the first: threshold
    with db.transaction(settings) as cur:  # the trainer answers with a model
        db.insert_model(cur, city_id, b"onnx", ["a", "b"], 64, {})
        cur.execute("SELECT id FROM sights WHERE city_id = %s ORDER BY id", (city_id,))
        tower, gate = (r[0] for r in cur.fetchall())

    def users() -> None:  # 40 corrections, one a transaction, boxes and "no sight"; every seventh undoes one
        made: list[int] = []
        for i in range(40):
            with db.transaction(settings) as cur:
                frame = _user_frame(cur, city_id, f"k{i}")
                made.append(_correction(cur, city_id, frame, (tower, gate, None)[i % 3])[0])
                if i % 7 == 6:
                    cur.execute("DELETE FROM corrections WHERE id = %s", (made.pop(0),))
            time.sleep(0.05)

    writer = threading.Thread(target=users)
    writer.start()
    for _ in range(2):  # SIGKILLed twice while they arrive
        time.sleep(random.uniform(0.5, 1.5))
        worker.kill()
        worker = worker_factory(app_id).start()
    writer.join(60)
    wait_marts_match(settings, [city_id], timeout=120)
    with db.transaction(settings) as cur:
        cur.execute("SELECT kind, count(*) FROM labels WHERE city_id = %s AND kind <> 'labeller' GROUP BY kind",
                    (city_id,))
        present = dict(cur.fetchall())
    cities, _ = marts(settings, [city_id])
    assert cities[city_id][4:] == (present["user-box"], present["user-negative"]) == (23, 12)
    # The replays after each SIGKILL derive the same request ids: one retrain for the corrections' crossing.
    cmds = one_per_crossing(_commands(topic_reader, "training", {city_id}, lambda cs: len(cs) >= 2))
    assert len(cmds) == 2, cmds


def test_poison_events_go_to_dead_letter_and_the_agent_keeps_going(settings, worker_factory, topic_reader):
    worker_factory(_app_id()).start()
    dlq = topic_reader(dead_letter_topic(), from_now=True)
    producer = kafka.producer(settings)
    topic = change_topic("images")
    run = random.randrange(10**8, 10**9)  # this run's poison, told apart from any earlier run's
    ghost_city = run
    ghost = {"op": "c", "before": None, "source": {"lsn": 42, "txId": 1},
             "after": {"id": run, "city_id": ghost_city, "sight_id": None}}
    poison = {
        f"{run}-a": b"\x00not json at all",
        f"{run}-b": json.dumps({"op": "x", "after": {"id": 2}}).encode(),
        f"{run}-c": json.dumps({"op": "c", "after": {"id": 3}}).encode(),
        str(ghost_city): json.dumps(ghost).encode(),
    }
    for key, value in poison.items():
        producer.produce(topic, key=key.encode(), value=value)
    producer.flush(10)

    def ours(msgs):
        return {m["value"]["key"]: m["value"] for m in msgs if m["value"]["key"] in poison}

    letters = ours(dlq.collect(lambda ms: len(ours(ms)) == len(poison), timeout=90))
    assert letters[f"{run}-a"]["reason"].startswith("not JSON")
    assert "unknown op 'x'" in letters[f"{run}-b"]["reason"]
    assert "no integer city id" in letters[f"{run}-c"]["reason"]
    assert letters[str(ghost_city)]["reason"] == f"unknown city {ghost_city}"
    assert letters[f"{run}-a"]["topic"] == topic and letters[f"{run}-a"]["offset"] is not None
    assert all(letter["value"] for letter in letters.values())  # the original payload travels with the reason

    city_id, _ = _grow_city(settings, f"After poison {uuid.uuid4().hex[:6]}", 3)
    wait_marts_match(settings, [city_id])
