"""The AsyncAPI document of every Kafka topic (sightscan/asyncapi.py): valid AsyncAPI 3.0, a channel for every topic
sightscan/topics.py names, served by the gateway, and true to the wire: real messages of the running stack, on
every topic, each key and value valid against it.

The AsyncAPI 3.0.0 JSON Schema is tests/support/asyncapi-3.0.0.schema.json, from the npm package @asyncapi/specs
(6.11.1, Apache-2.0): no Python package ships it.
"""

from __future__ import annotations

import functools
import inspect
import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException, Message, TopicPartition
from jsonschema import Draft7Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from sightscan import asyncapi, db, kafka, topics
from sightscan.config import Settings
from streams.settings import StreamsSettings
from tests.support.gateway import call_json, start_gateway, stop_gateway
from tests.support.streams import Worker

META_SCHEMA = Path(__file__).resolve().parents[1] / "support" / "asyncapi-3.0.0.schema.json"
DOC_URI = "urn:sightscan:kafka"


def _validators(doc: dict[str, Any]) -> dict[str, tuple[Draft7Validator, Draft7Validator, str]]:
    """Message name -> (key validator, payload validator, key format); $refs resolve within the document."""
    registry = Registry().with_resource(DOC_URI, Resource(doc, DRAFT7))
    out = {}
    for name, message in doc["components"]["messages"].items():
        key = Draft7Validator(message["bindings"]["kafka"]["key"], format_checker=FormatChecker())
        payload = Draft7Validator({"$ref": f"{DOC_URI}#/components/messages/{name}/payload"}, registry=registry,
                                  format_checker=FormatChecker())
        out[name] = (key, payload, message["x-key-format"])
    return out


def _messages_of(doc: dict[str, Any], channel_id: str) -> list[str]:
    return [ref["$ref"].rsplit("/", 1)[1] for ref in doc["channels"][channel_id]["messages"].values()]


@functools.cache
def _document_validators() -> tuple[dict[str, Any], dict[str, tuple[Draft7Validator, Draft7Validator, str]]]:
    doc = asyncapi.document()
    return doc, _validators(doc)


def errors_against_document(channel: str, value: Any, key: bytes | None = None, check_key: bool = True) -> list[str]:
    """Why a message of a channel (its JSON value decoded, its raw key) matches none of the channel's messages in
    the document; [] when it matches one. check_key=False checks the value alone."""
    doc, validators = _document_validators()
    errors = ["no message documented"]
    for name in _messages_of(doc, channel):
        key_validator, payload_validator, key_format = validators[name]
        errors = []
        if check_key:
            try:
                decoded = None if key is None else (json.loads(key) if key_format == "json" else key.decode("utf-8"))
            except ValueError as exc:
                errors.append(f"key {key!r} is not {key_format}: {exc}")
            else:
                errors += [f"key {decoded!r}: {e.message[:200]}" for e in key_validator.iter_errors(decoded)]
        errors += [f"value at {list(e.absolute_path)}: {e.message[:300]}" for e in payload_validator.iter_errors(value)]
        if not errors:
            return []
    return errors


# The document -------------------------------------------------------------------------------------------------

def test_document_is_valid_asyncapi_3() -> None:
    doc = asyncapi.document()
    assert doc["asyncapi"] == "3.0.0"
    errors = [f"{list(e.absolute_path)}: {e.message[:300]}"
              for e in Draft7Validator(json.loads(META_SCHEMA.read_text())).iter_errors(doc)]
    assert not errors, "\n".join(errors[:10])
    # Every schema is a valid JSON Schema (draft-07, which the AsyncAPI Schema extends) and every $ref resolves.
    for schema in doc["components"]["schemas"].values():
        Draft7Validator.check_schema(schema)
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    for ref in refs:
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]  # KeyError: a dangling $ref
    # Each message's examples (key and payload) are valid: the document's schemas are not vacuous.
    for name, (key, payload, key_format) in _validators(doc).items():
        message = doc["components"]["messages"][name]
        Draft7Validator.check_schema(message["bindings"]["kafka"]["key"])
        assert key_format in ("json", "text")
        assert message["examples"] and message["bindings"]["kafka"]["key"]["examples"], name
        for example in message["examples"]:
            payload.validate(example["payload"])
        for example in message["bindings"]["kafka"]["key"]["examples"]:
            key.validate(example)
    # Operations: send/receive by a named service on a channel of the document; each channel lists them.
    for op_id, op in doc["operations"].items():
        assert op["action"] in ("send", "receive") and op["x-service"] in asyncapi.SERVICES, op_id
        channel = doc["channels"][op["channel"]["$ref"].rsplit("/", 1)[1]]
        listed = channel["x-publishers" if op["action"] == "send" else "x-consumers"]
        assert op["x-service"] in listed
    for channel_id, channel in doc["channels"].items():
        assert channel["x-publishers"] or channel_id == "faustLeader", f"nobody sends on {channel_id}"
        assert channel["x-consumers"] or channel_id in ("streamsDeadLetter", "commandsDeadLetter",
                                                        "debeziumHeartbeat"), f"nobody receives {channel_id}"


def test_enums_and_required_fields_are_precise() -> None:
    """Spot checks that the schemas are precise: enums, required fields, no other field."""
    validators = _validators(asyncapi.document())
    _, training, _ = validators["trainingCommand"]
    command = {"request_id": "train-7-2", "city_id": 7, "city": "Lisbon", "epochs": 3, "classes": ["A", "B"],
               "labelled_images": 40, "reason": "growth", "ts_ms": 1}
    training.validate(command)
    for bad in ({**command, "reason": "whim"}, {**command, "extra": 1}, {**command, "city_id": "7"},
                {k: v for k, v in command.items() if k != "classes"}):
        assert not training.is_valid(bad), bad
    _, outcome, _ = validators["trainingEvent"]
    assert not outcome.is_valid({"request_id": "train-7-2", "city_id": 7, "city": "Lisbon", "trigger": "growth",
                                 "status": "done", "reason": "?"})
    outcome.validate({"request_id": "train-7-2", "city_id": 7, "city": "Lisbon", "trigger": "growth",
                      "status": "failed", "reason": "not enough labelled images"})
    key, change, _ = validators["imagesChange"]
    assert key.is_valid({"id": 3}) and not key.is_valid("3") and not key.is_valid({"id": 3, "x": 1})
    example = asyncapi.document()["components"]["messages"]["imagesChange"]["examples"][0]["payload"]
    assert not change.is_valid({**example, "op": "u"})  # an update carries the old row too
    assert not change.is_valid({**example, "after": {**example["after"], "data": "AAAA"}})  # bytes never travel


def test_every_topic_of_topics_py_has_a_channel() -> None:
    doc = asyncapi.document()
    addresses = {channel["address"]: cid for cid, channel in doc["channels"].items()}
    app_id = StreamsSettings().app_id_for(asyncapi.DEFAULT_PREFIX)
    named = [*(topics.change_topic(t) for t in topics.WATCHED_TABLES),
             *(topics.command_topic(k) for k in topics.COMMAND_KINDS),
             topics.training_events_topic(), topics.dead_letter_topic(), topics.command_dead_letter_topic(),
             topics.facts_topic(app_id)]
    # Every *_topic function of topics.py is among those (a new one must be added to the document too).
    functions = {name for name, fn in inspect.getmembers(topics, inspect.isfunction)
                 if name.endswith("_topic") and fn.__module__ == topics.__name__}
    assert functions == {"change_topic", "command_topic", "training_events_topic", "dead_letter_topic",
                         "command_dead_letter_topic", "facts_topic"}
    missing = [t for t in named if t not in addresses]
    assert not missing, f"topics without a channel: {missing}"
    # Names follow the settings: another prefix and app id give topics.py's names for them.
    other = asyncapi.topics("acme", "acme-w")
    assert other["images"] == topics.change_topic("images", "acme")
    assert other["trainingCommands"] == topics.command_topic("training", "acme")
    assert other["commandsDeadLetter"] == topics.command_dead_letter_topic("acme")
    assert other["facts"] == topics.facts_topic("acme-w")
    assert asyncapi.topics("acme")["facts"] == topics.facts_topic(StreamsSettings().app_id_for("acme"))
    assert set(asyncapi.topics()) == set(doc["channels"])
    assert {asyncapi.topics()[cid] for cid in doc["channels"]} == set(addresses)


def test_gateway_serves_the_document(settings: Settings, tmp_path: Path) -> None:
    gateway = start_gateway(settings, tmp_path / "gateway.log")
    try:
        status, served = call_json(gateway, "GET", "/asyncapi.json", token=None)
        assert status == 200 and served == asyncapi.document()
        status, openapi = call_json(gateway, "GET", "/openapi.json", token=None)
        assert status == 200 and "/asyncapi.json" in openapi["paths"]
    finally:
        stop_gateway(gateway)


# The wire -----------------------------------------------------------------------------------------------------

class Recorder:
    """Every message written to the given topics from now on, raw, read with one consumer (no group). A topic that
    does not exist yet is read from its start once it appears."""

    def __init__(self, settings: Settings, names: dict[str, str]) -> None:
        self.names = names                      # channel id -> topic
        self.channel_of = {t: c for c, t in names.items()}
        self.consumer = kafka.consumer(settings, f"test-asyncapi-{uuid.uuid4().hex}")
        self.start: dict[tuple[str, int], int] = {}
        self.assigned: set[tuple[str, int]] = set()
        self.records: dict[str, list[Message]] = {c: [] for c in names}
        self.assigned_at = 0.0
        for topic, parts in self._all_partitions().items():
            for p in parts:
                self.start[(topic, p)] = self._watermarks(topic, p)[1]
        self._assign()

    def _partitions(self, topic: str) -> list[int]:
        return self._all_partitions().get(topic, [])

    def _all_partitions(self) -> dict[str, list[int]]:
        """topic -> its partitions, for our topics that exist (one metadata request)."""
        found = self.consumer.list_topics(timeout=10).topics
        return {t: sorted(found[t].partitions) for t in self.names.values()
                if t in found and found[t].error is None}

    def _watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        deadline = time.monotonic() + 30
        while True:  # a topic just created may not have its partition leaders yet
            try:
                return self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _assign(self) -> None:
        new = [(t, p) for t, parts in self._all_partitions().items() for p in parts if (t, p) not in self.assigned]
        if new:
            self.consumer.incremental_assign([TopicPartition(t, p, self.start.get((t, p), OFFSET_BEGINNING))
                                              for t, p in new])
            self.assigned.update(new)
        self.assigned_at = time.monotonic()

    def exists(self, channel: str) -> bool:
        return bool(self._partitions(self.names[channel]))

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if time.monotonic() - self.assigned_at > 2:  # topics created meanwhile (facts, changelog)
                self._assign()
            msg = self.consumer.poll(0.2)
            if msg is not None and not msg.error():
                self.records[self.channel_of[msg.topic()]].append(msg)
            if time.monotonic() >= deadline:
                return

    def wait(self, what: str, until: Callable[[], bool], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                counts = {c: len(r) for c, r in self.records.items()}
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; recorded {counts}")
            self.poll(0.5)

    def drain(self, quiet_s: float = 5, timeout: float = 60) -> None:
        """Read on until no message but Debezium's heartbeats came for `quiet_s` (stragglers: copies, late
        changelog records). Watermarks cannot tell the end: transactional topics end in commit markers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = sum(len(r) for c, r in self.records.items() if c != "debeziumHeartbeat")
            self.poll(quiet_s)
            if sum(len(r) for c, r in self.records.items() if c != "debeziumHeartbeat") == before:
                return

    def values(self, channel: str) -> list[Any]:
        return [json.loads(m.value()) for m in self.records[channel] if m.value() is not None]

    def close(self) -> None:
        self.consumer.close()


THRESHOLDS = {"MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING": "4", "MIN_IMAGE_NUMBER_PER_LABEL": "2", "MTS_EPOCHS": "1",
              "LABELLING_BATCH_SIZE": "4", "LABELLING_LINGER_S": "1"}


def _group_at_end(settings: Settings, group: str, names: list[str]) -> None:
    """A new consumer group that starts after everything already on the topics (earlier tests' commands)."""
    consumer = kafka.consumer(settings, group)
    ends = []
    for topic in names:
        for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            deadline = time.monotonic() + 30
            while True:
                try:
                    ends.append(TopicPartition(topic, p, consumer.get_watermark_offsets(
                        TopicPartition(topic, p), timeout=10)[1]))
                    break
                except KafkaException:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
    consumer.commit(offsets=ends, asynchronous=False)
    consumer.close()


def _produce(settings: Settings, topic: str, key: bytes, value: bytes) -> tuple[str, int, int]:
    """Send one record; (topic, partition, offset) where it landed."""
    producer = kafka.producer(settings)
    where: list[tuple[str, int, int]] = []
    producer.produce(topic, value, key=key,
                     on_delivery=lambda err, msg: where.append((msg.topic(), msg.partition(), msg.offset()))
                     if err is None else None)
    assert producer.flush(30) == 0 and where, "not delivered"
    return where[0]


def _image(cur: Any, city_id: int, sight_id: int | None) -> int:
    return db.insert_image(cur, db.NewImage(city_id, uuid.uuid4().bytes * 4, "image/jpeg", 8, 8, "crawl", sight_id))


def test_live_messages_on_every_topic_match_the_document(settings: Settings, tmp_path: Path) -> None:
    """Real traffic through the real services: a stream worker (facts, commands, its table's changelog, dead
    letters), the weak labeller (labels for its labelling request), the trainer (outcomes, command dead letters)
    and Debezium (every table's inserts, updates and deletes, and its heartbeats). Every message written to any
    topic meanwhile is recorded and its key and value validated against the document."""
    from consumers.service import LabellerService
    from consumers.settings import LabellerSettings
    from trainer.service import TrainerService
    from trainer.settings import load

    doc = asyncapi.document()
    run = uuid.uuid4().hex[:8]
    app_id = f"asyncapi-{run}"
    prefix = settings.topic_prefix
    names = asyncapi.topics(prefix, app_id)
    assert set(names) == set(doc["channels"])
    commands = {kind: topics.command_topic(kind, prefix) for kind in topics.COMMAND_KINDS}
    changes = [topics.change_topic(t, prefix) for t in topics.WATCHED_TABLES]
    topics.ensure_topics(settings, [*changes, *commands.values(), topics.training_events_topic(prefix),
                                    topics.dead_letter_topic(prefix), topics.command_dead_letter_topic(prefix)])
    labeller_group, trainer_group = f"{app_id}-label", f"{app_id}-train"
    _group_at_end(settings, labeller_group, [commands["labelling"]])
    _group_at_end(settings, trainer_group, [commands["training"]])
    _group_at_end(settings, f"{app_id}-rekey", [*changes, topics.training_events_topic(prefix)])

    recorder = Recorder(settings, names)
    worker = Worker(settings, app_id, tmp_path / "streams.log", THRESHOLDS).start()
    labeller = LabellerService(settings, LabellerSettings.from_env({"LABELLER_BACKEND": "weak",
                                                                    "LABELLER_GROUP_ID": labeller_group}))
    labelling = threading.Thread(target=labeller.run, kwargs={"idle_exit_s": 600}, daemon=True)
    labelling.start()
    poison: set[tuple[str, int, int]] = set()
    try:
        # City A: requested, two sights, four images. The worker asks for the crawl and for labels; the weak
        # labeller labels the images by the sight each was crawled for; the labels cross the training threshold.
        with db.transaction(settings) as cur:
            city, _ = db.request_city(cur, f"Asyncapi {run}")
            sights = [db.ensure_sight(cur, city.id, f"North Tower {run}"),
                      db.ensure_sight(cur, city.id, f"South Gate {run}")]
            for sight in (*sights, *sights):
                _image(cur, city.id, sight)

        def commands_of(channel: str) -> list[dict]:
            return [v for v in recorder.values(channel) if v.get("city_id") == city.id]

        recorder.wait("the crawl, labelling and training commands",
                      lambda: all(commands_of(f"{k}Commands") for k in topics.COMMAND_KINDS), timeout=240)
        [training] = commands_of("trainingCommands")
        assert training["reason"] == "threshold" and len(training["classes"]) == 2, training

        # An update, and the model a trainer would store for the request: the trainer then answers the request
        # as already trained (a succeeded event) without training.
        with db.transaction(settings) as cur:
            cur.execute("UPDATE cities SET status = 'training', updated_at = now() WHERE id = %s", (city.id,))
        with db.transaction(settings) as cur:
            db.insert_model(cur, city.id, b"onnx", training["classes"], 64,
                            {"request_id": training["request_id"], "trigger": training["reason"]})
        # Two requests the trainer can never carry out: dead letters, and failed events. The first names no city,
        # so its failed event is one the stream worker cannot apply: a dead letter of the stream worker.
        key = str(city.id).encode()
        poison.add(_produce(settings, commands["training"], key,
                            json.dumps({"request_id": f"poison-{run}-1", "reason": "threshold"}).encode()))
        poison.add(_produce(settings, commands["training"], key,
                            json.dumps({"request_id": f"poison-{run}-2", "city_id": city.id,
                                        "reason": "whim"}).encode()))
        trainer = TrainerService(settings, load(settings, {"TRAINER_GROUP_ID": trainer_group,
                                                           "TRAINER_THREADS": "1"}))
        assert trainer.run(max_requests=3, idle_exit_s=120) == 3

        # City B: written and deleted in one transaction: every table's inserts and deletes, and facts of a city
        # that is not in the warehouse (the worker's dead letters).
        with db.transaction(settings) as cur:
            gone, _ = db.request_city(cur, f"Asyncapi gone {run}")
            sight = db.ensure_sight(cur, gone.id, "Old Bridge")
            image = _image(cur, gone.id, sight)
            db.insert_label(cur, db.NewLabel(image, gone.id, "test", sight, 0.5, (0.1, 0.2, 0.7, 0.9)))
            db.insert_label(cur, db.NewLabel(image, gone.id, "test", None, None, None))
            db.insert_model(cur, gone.id, b"onnx", ["Old Bridge", "New Bridge"], 64, {})
            cur.execute("DELETE FROM cities WHERE id = %s", (gone.id,))

        def outcomes() -> dict[Any, dict]:
            return {v.get("request_id"): v for v in recorder.values("trainingEvents")}

        def letters(channel: str) -> list[dict]:
            return recorder.values(channel)

        recorder.wait("the trainer's three outcomes", lambda: {training["request_id"], f"poison-{run}-1",
                                                               f"poison-{run}-2"} <= outcomes().keys())
        recorder.wait("the stream worker's dead letters", lambda: {
            f"unknown city {gone.id}", "training event without an integer city_id"} <= {
            d["reason"] for d in letters("streamsDeadLetter")})
        recorder.wait("the command dead letters", lambda: sum(
            f"poison-{run}" in (d["value"] or "") for d in letters("commandsDeadLetter")) == 2)
        recorder.wait("the training outcome facts", lambda: any(
            f.get("kind") == "training_outcome" and f.get("request_id") == f"poison-{run}-2"
            for v in recorder.values("facts") for f in (v if isinstance(v, list) else [v])))
        recorder.wait("Debezium's heartbeat", lambda: bool(recorder.records["debeziumHeartbeat"]), timeout=60)
        recorder.wait("every change event", lambda: all(recorder.records[t] for t in topics.WATCHED_TABLES))
        recorder.drain()
        assert recorder.exists("faustLeader") and recorder.exists("cityStateChangelog")
    finally:
        labeller.close()
        worker.stop()
        labelling.join(60)
        recorder.close()

    # What the services said, beyond the document's schemas.
    answered = outcomes()[training["request_id"]]
    assert answered["status"] == "succeeded" and answered.get("duplicate") is True, answered
    assert outcomes()[f"poison-{run}-1"]["city_id"] is None
    assert outcomes()[f"poison-{run}-2"]["reason"].startswith("bad request: unknown reason 'whim'")
    ops = {(table, v["op"]) for table in topics.WATCHED_TABLES for v in recorder.values(table)}
    assert {("cities", "c"), ("cities", "u"), ("cities", "d"), ("images", "d"), ("labels", "d"), ("models", "d"),
            ("sights", "d")} <= ops, ops

    # Every message on every topic, key and value, against the document.
    failures: list[str] = []
    counts: dict[str, int] = {}
    for channel, records in recorder.records.items():
        counts[channel] = 0
        for msg in records:
            if (msg.topic(), msg.partition(), msg.offset()) in poison:
                continue  # malformed by design: documented as what goes to the dead letters
            counts[channel] += 1
            value = None if msg.value() is None else json.loads(msg.value())
            errors = errors_against_document(channel, value, msg.key())
            if errors:
                failures.append(f"{msg.topic()}[{msg.partition()}]@{msg.offset()}: {errors}\n"
                                f"    {(msg.value() or b'')[:600]!r}")
    assert not failures, f"{len(failures)} messages do not match the document:\n" + "\n".join(failures[:15])
    # The check can fail: a real command missing a field, or under another key, does not match.
    crawl = recorder.records["crawlCommands"][0]
    value = json.loads(crawl.value())
    assert not errors_against_document("crawlCommands", value, crawl.key())
    assert errors_against_document("crawlCommands", {k: v for k, v in value.items() if k != "city"}, crawl.key())
    assert errors_against_document("crawlCommands", value, b'{"id": 1}')
    # Every documented topic carried messages, except Faust's leader topic, documented as never written to.
    assert counts.pop("faustLeader") == 0
    assert all(n > 0 for n in counts.values()), counts
    print(f"\n[asyncapi] validated {sum(counts.values())} messages: {counts}")
