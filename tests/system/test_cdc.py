"""Change-data-capture against the real stack: warehouse rows become Debezium events on Kafka."""

from __future__ import annotations

import hashlib
import uuid

import connectors
from localsystem.stack import LocalStack
from sightscan import db
from sightscan.events import parse_change
from sightscan.topics import change_topic


def _by_id(table: str, row_id: int, op: str):
    def until(msgs):
        return any(m["value"] and m["value"]["op"] == op and parse_change(table, m["value"]).key == row_id
                   for m in msgs)
    return until


def _event(msgs, table: str, row_id: int, op: str):
    events = [parse_change(table, m["value"]) for m in msgs if m["value"]]
    return next(e for e in events if e.key == row_id and e.op == op)


def test_city_insert_update_delete_reach_kafka(settings, topic_reader):
    reader = topic_reader(change_topic("cities"), from_now=True)
    with db.transaction(settings) as cur:
        city, created = db.request_city(cur, "  Cdc   Town ")
    assert created
    created_event = _event(reader.collect(_by_id("cities", city.id, "c")), "cities", city.id, "c")
    assert created_event.after["name"] == "Cdc Town" and created_event.after["status"] == "requested"
    assert created_event.after["name_key"] == "cdc town"  # the clean name, and its key (sightscan.names)
    assert isinstance(created_event.lsn, int) and created_event.lsn > 0  # an event's identity needs its LSN

    with db.transaction(settings) as cur:
        cur.execute("UPDATE cities SET status = 'crawling' WHERE id = %s", (city.id,))
    upd = _event(reader.collect(_by_id("cities", city.id, "u")), "cities", city.id, "u")
    assert upd.before["status"] == "requested" and upd.after["status"] == "crawling"
    assert upd.lsn > created_event.lsn  # WAL order: what the marts' de-duplication relies on

    with db.transaction(settings) as cur:
        cur.execute("DELETE FROM cities WHERE id = %s", (city.id,))
    deleted = _event(reader.collect(_by_id("cities", city.id, "d")), "cities", city.id, "d")
    assert deleted.after is None and deleted.before["name"] == "Cdc Town"
    assert deleted.lsn > upd.lsn


def test_image_event_has_metadata_but_no_bytes(settings, topic_reader):
    reader = topic_reader(change_topic("images"), from_now=True)
    payload = b"\xff\xd8\xff" + b"pretend-jpeg" * 1000 + uuid.uuid4().bytes  # new on a reused stack too
    with db.transaction(settings) as cur:
        city, _ = db.request_city(cur, "Bytes City")
        sight = db.ensure_sight(cur, city.id, "Old Tower", "test")
        image_id = db.insert_image(cur, db.NewImage(city.id, payload, "image/jpeg", 640, 480, "crawl", sight,
                                                    "http://example.test/a.jpg", "CC-BY-4.0", "someone"))
    assert isinstance(image_id, int)
    msgs = reader.collect(_by_id("images", image_id, "c"))
    event = _event(msgs, "images", image_id, "c")
    assert "data" not in event.after
    assert event.after["sha256"] == hashlib.sha256(payload).hexdigest()
    assert event.after["city_id"] == city.id and event.after["sight_id"] == sight
    assert event.after["licence"] == "CC-BY-4.0" and event.after["width"] == 640
    raw = next(m for m in msgs if m["value"]["after"] and m["value"]["after"]["id"] == image_id)
    assert raw["key"] == {"id": image_id}
    assert "pretend-jpeg" not in str(raw["value"])


def test_duplicate_image_bytes_are_skipped(settings):
    with db.transaction(settings) as cur:
        city, _ = db.request_city(cur, "Dup City")
        first = db.insert_image(cur, db.NewImage(city.id, b"same-bytes", "image/jpeg", 10, 10, "upload"))
        second = db.insert_image(cur, db.NewImage(city.id, b"same-bytes", "image/jpeg", 10, 10, "upload"))
    assert first is not None and second is None


def test_model_event_announces_version_without_onnx_bytes(settings, topic_reader):
    reader = topic_reader(change_topic("models"), from_now=True)
    with db.transaction(settings) as cur:
        city, _ = db.request_city(cur, "Model City")
        m1 = db.insert_model(cur, city.id, b"onnx-bytes-1", ["A", "B"], 320, {"map50": 0.9})
        m2 = db.insert_model(cur, city.id, b"onnx-bytes-2", ["A", "B"], 320, {"map50": 0.95})
    assert (m1.version, m2.version) == (1, 2)
    event = _event(reader.collect(_by_id("models", m2.id, "c")), "models", m2.id, "c")
    assert "onnx" not in event.after
    assert event.row["classes"] == ["A", "B"] and event.row["metrics"] == {"map50": 0.95}
    assert event.row["version"] == 2


def test_rows_written_while_connect_is_down_arrive_after_restart(stack: LocalStack, topic_reader):
    settings = stack.settings
    reader = topic_reader(change_topic("cities"), from_now=True)
    stack.connect.stop()
    assert not stack.connect.running()
    ids = []
    with db.transaction(settings) as cur:
        for i in range(25):
            ids.append(db.request_city(cur, f"Offline City {i}")[0].id)
    with db.transaction(settings) as cur:  # an update and a delete too, while nobody is listening
        cur.execute("UPDATE cities SET status = 'failed' WHERE id = %s", (ids[0],))
        cur.execute("DELETE FROM cities WHERE id = %s", (ids[1],))
    stack.connect.start()
    connectors.wait_running(settings)

    def all_arrived(msgs):
        seen = {(m["value"]["op"], parse_change("cities", m["value"]).key) for m in msgs if m["value"]}
        return all(("c", i) in seen for i in ids) and ("u", ids[0]) in seen and ("d", ids[1]) in seen

    msgs = reader.collect(all_arrived, timeout=60)
    created = [parse_change("cities", m["value"]).key for m in msgs if m["value"] and m["value"]["op"] == "c"]
    assert set(ids) <= set(created)


def test_second_up_is_a_noop(stack: LocalStack):
    pids = {svc.name: svc.pidfile.process().pid for svc in (stack.kafka, stack.connect)}
    timings = stack.up()
    assert {svc.name: svc.pidfile.process().pid for svc in (stack.kafka, stack.connect)} == pids
    assert timings["kafka"] < 1 and timings["connect"] < 1
    assert all(s.healthy for s in stack.status())


def test_migrations_are_idempotent(settings):
    assert db.migrate(settings) == []
