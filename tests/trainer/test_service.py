"""The trainer service against the real stack: Kafka requests in, model rows and events out, Debezium announces."""

from __future__ import annotations

import dataclasses
import json
import uuid

import boto3
import numpy as np
import pytest
from confluent_kafka import TopicPartition

from sightscan import db, kafka
from sightscan.config import Settings
from sightscan.detector import INPUT_NAME, OUTPUT_NAMES
from sightscan.events import parse_change
from sightscan.topics import change_topic, command_topic, training_events_topic
from tests.trainer.trainer_helpers import load_city
from trainer import cloud
from trainer.export import session
from trainer.service import TrainerService
from trainer.settings import CloudConfig, load

ENV = {"TRAINER_THREADS": "2"}


@pytest.fixture
def isolated(settings: Settings) -> Settings:
    """Own command/event topics per test (the prefix is configuration), so no test sees another's requests."""
    return dataclasses.replace(settings, topic_prefix=f"t{uuid.uuid4().hex[:10]}")


def _request(settings: Settings, payload: dict | bytes, key: str) -> None:
    value = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    kafka.deliver(kafka.producer(settings), command_topic("training", settings.topic_prefix), value, key.encode())


def _events(topic_reader, settings: Settings, n: int) -> list[dict]:
    reader = topic_reader(training_events_topic(settings.topic_prefix))
    return [m["value"] for m in reader.collect(lambda msgs: len(msgs) >= n, timeout=60)]


def test_request_trains_stores_next_version_and_announces_it(isolated, small_city, topic_reader):
    city_id, sights = load_city(isolated, small_city, f"Smallville {uuid.uuid4().hex[:6]}")
    with db.transaction(isolated) as cur:  # a previous model: the new one must be version 2
        db.insert_model(cur, city_id, b"previous-onnx", ["old"], 256, {"map50": 0.1})
    models = topic_reader(change_topic("models"), from_now=True)
    _request(isolated, {"city_id": city_id, "city": "Smallville", "epochs": 2, "classes": sights,
                        "reason": "threshold", "request_id": "req-1"}, str(city_id))

    service = TrainerService(isolated, load(isolated, {**ENV, "TRAINER_GROUP_ID": f"g-{uuid.uuid4()}"}))
    assert service.run(max_requests=1, idle_exit_s=60) == 1

    [event] = _events(topic_reader, isolated, 1)
    assert event["status"] == "succeeded" and event["request_id"] == "req-1" and event["city_id"] == city_id
    assert event["version"] == 2 and sorted(event["classes"]) == sorted(sights)
    # The city's labels are true boxes (load_city): top-1 and the confusion matrix, and box mAP on them.
    assert {"top1", "confusion", "map50", "map", "per_sight_map"} <= event["metrics"].keys()
    assert event["metrics"]["labels"] == {"image_level": 0, "boxes": event["metrics"]["train_images"], "negatives": 0}
    assert event["metrics"]["evaluated_on"] == "heldout" and event["metrics"]["heldout_images"] >= 3

    with db.transaction(isolated) as cur:
        stored = db.latest_model(cur, city_id)
        cur.execute("SELECT status FROM cities WHERE id = %s", (city_id,))
        assert cur.fetchone()[0] == "live"
    assert stored.version == 2 and stored.input_size == 224 and stored.classes == event["classes"]
    outputs = session(stored.onnx).run(list(OUTPUT_NAMES), {INPUT_NAME: np.zeros((1, 3, 224, 224), np.float32)})
    assert outputs[0].shape == (1, len(sights), 4) and outputs[2].dtype == np.int64

    # Debezium's change event announces the new model (metadata only) to the gateways.
    msgs = models.collect(lambda ms: any(m["value"] and m["value"]["after"] and
                                         m["value"]["after"]["id"] == stored.id for m in ms), timeout=60)
    change = next(parse_change("models", m["value"]) for m in msgs
                  if m["value"] and m["value"]["after"] and m["value"]["after"]["id"] == stored.id)
    assert change.op == "c" and change.row["version"] == 2 and change.row["city_id"] == city_id
    assert change.row["metrics"]["top1"] == pytest.approx(event["metrics"]["top1"])

    # The offset was committed after the outcome was published: the group has nothing left to read.
    group = kafka.consumer(isolated, service.ts.group_id)
    topic = command_topic("training", isolated.topic_prefix)
    parts = group.list_topics(topic, timeout=10).topics[topic].partitions
    committed = group.committed([TopicPartition(topic, p) for p in parts], timeout=10)
    ends = {p: group.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    assert all(tp.offset == ends[tp.partition] for tp in committed if ends[tp.partition] > 0)
    group.close()

    # A redelivered copy of the request (same request id) is answered again, not trained again.
    _request(isolated, {"city_id": city_id, "city": "Smallville", "epochs": 2, "classes": sights,
                        "reason": "threshold", "request_id": "req-1"}, str(city_id))
    restarted = TrainerService(isolated, service.ts)
    assert restarted.run(max_requests=1, idle_exit_s=60) == 1
    copy = [e for e in _events(topic_reader, isolated, 2) if e.get("duplicate")]
    assert copy and copy[0]["version"] == 2 and copy[0]["status"] == "succeeded"
    with db.transaction(isolated) as cur:
        assert db.latest_model(cur, city_id).version == 2


def test_failures_are_events_and_the_previous_model_stays(isolated, topic_reader):
    with db.transaction(isolated) as cur:
        city, _ = db.request_city(cur, f"Empty {uuid.uuid4().hex[:6]}")
        previous = db.insert_model(cur, city.id, b"previous-onnx", ["Old Tower"], 256, {"map50": 0.9})
    _request(isolated, {"city_id": city.id, "city": city.name, "epochs": 1, "classes": [], "reason": "manual",
                        "request_id": "req-empty"}, str(city.id))
    _request(isolated, {"city_id": 987654321, "city": "Nowhere", "epochs": 1, "classes": [], "reason": "growth",
                        "request_id": "req-missing"}, "987654321")
    _request(isolated, b"{not json", "x")
    service = TrainerService(isolated, load(isolated, {**ENV, "TRAINER_GROUP_ID": f"g-{uuid.uuid4()}"}))
    assert service.run(max_requests=3, idle_exit_s=60) == 3

    events = {e["request_id"]: e for e in _events(topic_reader, isolated, 3)}
    assert all(e["status"] == "failed" for e in events.values())
    assert "no labelled images" in events["req-empty"]["reason"]
    assert "no city" in events["req-missing"]["reason"]
    assert events[None]["reason"].startswith("bad request")
    with db.transaction(isolated) as cur:
        assert db.latest_model(cur, city.id).id == previous.id


def _instance(endpoint: str, state: str) -> str:
    ec2 = boto3.client("ec2", region_name="eu-central-1", endpoint_url=endpoint)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance_id = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    if state == "stopped":
        ec2.stop_instances(InstanceIds=[instance_id])
    elif state == "terminated":
        ec2.terminate_instances(InstanceIds=[instance_id])
    return instance_id


@pytest.mark.parametrize("state", ["stopped", "terminated"])
def test_dispatcher_starts_the_training_instance_or_reports_why_not(isolated, aws_env, topic_reader, state):
    instance_id = _instance(aws_env, state)
    ts = load(isolated, {**ENV, "TRAINER_GROUP_ID": f"g-{uuid.uuid4()}", "MTS_EC2_INSTANCE_ID": instance_id,
                         "AWS_REGION": "eu-central-1", "AWS_ENDPOINT_URL": aws_env})
    _request(isolated, {"city_id": 1, "city": "Anywhere", "epochs": 1, "classes": [], "reason": "threshold",
                        "request_id": f"req-{state}"}, "1")
    assert TrainerService(isolated, ts, role="dispatch").run(max_requests=1, idle_exit_s=60) == 1
    [event] = _events(topic_reader, isolated, 1)
    assert event["request_id"] == f"req-{state}"
    if state == "stopped":
        assert event["status"] == "dispatched" and event["instance_state"] == "running"
        assert cloud.instance_state(ts.cloud) == "running"
    else:
        assert event["status"] == "failed" and "terminated" in event["reason"]


def test_trainer_on_the_instance_stops_it_when_no_work_is_left(isolated, aws_env):
    instance_id = _instance(aws_env, "running")
    ts = load(isolated, {**ENV, "TRAINER_GROUP_ID": f"g-{uuid.uuid4()}", "MTS_EC2_INSTANCE_ID": instance_id,
                         "AWS_REGION": "eu-central-1", "AWS_ENDPOINT_URL": aws_env, "TRAINER_IDLE_STOP_S": "3"})
    assert ts.cloud == CloudConfig(instance_id, "eu-central-1", aws_env)
    assert TrainerService(isolated, ts).run(idle_exit_s=60) == 0
    assert cloud.instance_state(ts.cloud) == "stopped"


def test_train_command_trains_a_city_by_name_and_fails_clearly(settings, small_city, monkeypatch, capsys):
    from trainer.cli import main

    name = f"Cli Town {uuid.uuid4().hex[:6]}"
    city_id, _ = load_city(settings, small_city, name)
    for key, value in {**settings.env(), **ENV, "SIGHTSCAN_LOG_FORMAT": "console"}.items():
        monkeypatch.setenv(key, value)
    assert main(["train", name, "--epochs", "1", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["city"] == name and summary["version"] == 1 and summary["sights"] == 3
    with db.transaction(settings) as cur:
        assert db.latest_model(cur, city_id).version == 1
    assert main(["train", "No Such City", "--no-progress"]) == 1
    assert "no city 'No Such City'" in capsys.readouterr().err
