"""Kafka's own replication, on a private three-broker cluster (KAFKA_BROKERS=3: three KRaft nodes, each broker and
controller): every topic has three replicas and needs two in sync; a broker SIGKILLed mid-stream and restarted
loses no change, counts none twice, and stops no command; and the scaled-out system (two stream workers, two
gateways, two trainers) trains a city once and hot-swaps its model in both gateways while a broker is down."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import ConfigResource

import connectors
from localsystem.stack import LocalStack
from localsystem.stack.kafka import Kafka
from sightscan import db, kafka
from sightscan.children import stop_popen
from sightscan.config import Settings
from sightscan.topics import (
    COMMAND_KINDS,
    WATCHED_TABLES,
    change_topic,
    command_topic,
    ensure_topics,
    training_events_topic,
)
from streams.rekey import rekey_group
from tests.conftest import TopicReader
from tests.support.gateway import Gateway, next_message, start_gateway, stop_gateway
from tests.support.stack import ephemeral_settings
from tests.support.streams import Worker, one_per_crossing, start_at_the_end, wait_marts_match
from tests.support.synthetic import render_city
from tests.trainer.trainer_helpers import load_city

ROOT = Path(__file__).resolve().parents[2]
THRESHOLDS = {"MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING": "10", "MIN_IMAGE_NUMBER_PER_LABEL": "4",
              "LABELLING_BATCH_SIZE": "8", "MTS_EPOCHS": "2"}

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(ephemeral_settings(tmp_path_factory.mktemp("cluster"), brokers=3, TOPIC_PARTITIONS="4"),
                       progress=lambda msg: print(f"[cluster] {msg}", flush=True))
    try:
        stack.up()
        yield stack
    finally:
        stack.down(purge=True)


def busiest_broker(stack: LocalStack, topic: str) -> Kafka:
    """The node leading most partitions of `topic`: killing it moves leadership, the case worth testing."""
    meta = kafka.admin(stack.settings).list_topics(topic, timeout=10).topics[topic]
    leaders = Counter(p.leader for p in meta.partitions.values())
    node_id = leaders.most_common(1)[0][0]
    return next(n for n in stack.kafka_nodes if n.node == node_id)


def _image(cur, city_id: int, sight_id: int | None) -> int:  # noqa: ANN001 - psycopg cursor
    return db.insert_image(cur, db.NewImage(city_id, f"img-{uuid.uuid4()}".encode(), "image/jpeg", 64, 48,
                                            "crawl", sight_id))


def _label(cur, city_id: int, image_id: int, sight_id: int) -> None:  # noqa: ANN001 - psycopg cursor
    db.insert_label(cur, db.NewLabel(image_id, city_id, "test", sight_id, 0.9, (0.1, 0.1, 0.9, 0.9)))


def test_every_topic_has_three_replicas_and_needs_two_in_sync(cluster: LocalStack) -> None:
    settings = cluster.settings
    assert len(settings.bootstrap_servers.split(",")) == 3
    ensure_topics(settings, [command_topic(k) for k in COMMAND_KINDS])
    with db.transaction(settings) as cur:  # Debezium creates the change topics on their first events
        city, _ = db.request_city(cur, f"Replicas {uuid.uuid4().hex[:6]}")
        _image(cur, city.id, None)
    admin = kafka.admin(settings)
    wanted = [change_topic("cities"), change_topic("images"), *(command_topic(k) for k in COMMAND_KINDS)]
    deadline = time.monotonic() + 60
    while not set(wanted) <= set(admin.list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, f"topics missing: {set(wanted) - set(admin.list_topics().topics)}"
        time.sleep(0.5)
    topics = admin.list_topics(timeout=10).topics
    internal = ["__consumer_offsets", f"{settings.topic_prefix}-connect-configs",
                f"{settings.topic_prefix}-connect-offsets", f"{settings.topic_prefix}-connect-status"]
    for name in [*wanted, *internal]:
        for partition in topics[name].partitions.values():
            assert len(partition.replicas) == 3, (name, partition.id, partition.replicas)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in wanted]
    for resource, future in admin.describe_configs(resources).items():
        assert future.result(10)["min.insync.replicas"].value == "2", resource
    broker = ConfigResource(ConfigResource.Type.BROKER, "1")
    config = admin.describe_configs([broker])[broker].result(10)
    assert config["min.insync.replicas"].value == "2"
    assert config["transaction.state.log.replication.factor"].value == "3"


class SteadyWriter(threading.Thread):
    """Warehouse changes at a steady pace: images across several cities, and labels of one city (`crossing`) only
    once `label` is set, so its training threshold is crossed while a broker is down."""

    def __init__(self, settings: Settings, city_ids: list[int], crossing: int, sights: list[int],
                 seconds: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.city_ids, self.crossing, self.sights = settings, city_ids, crossing, sights
        self.seconds = seconds
        self.label = threading.Event()
        self.rows = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            rng, unlabelled = random.Random(7), []
            end = time.monotonic() + self.seconds
            while time.monotonic() < end:
                with db.transaction(self.settings) as cur:
                    for city_id in self.city_ids:
                        sight = self.sights[len(unlabelled) % 2] if city_id == self.crossing else None
                        image_id = _image(cur, city_id, sight)
                        self.rows += 1
                        if city_id == self.crossing:
                            unlabelled.append((image_id, sight))
                    if self.label.is_set() and unlabelled:
                        image_id, sight = unlabelled.pop(rng.randrange(len(unlabelled)))
                        _label(cur, self.crossing, image_id, sight)
                        self.rows += 1
                time.sleep(0.1)
        except BaseException as exc:  # the test reads it: a writer that died would make a vacuous pass
            self.failure = exc


def _steady_stream(settings: Settings, name: str, n_cities: int, app_id: str, folder: Path,
                   seconds: float) -> tuple[list, Worker, SteadyWriter]:
    """`n_cities` new cities (the first with two sights, to cross its training threshold), a stream worker of its
    own group, and a writer (not started) of their changes for `seconds`."""
    with db.transaction(settings) as cur:
        cities = [db.request_city(cur, f"{name} {i}")[0] for i in range(n_cities)]
        sights = [db.ensure_sight(cur, cities[0].id, sight, "test") for sight in ("Tower", "Gate")]
    worker = Worker(settings, app_id, folder / "worker.log", THRESHOLDS).start()
    return cities, worker, SteadyWriter(settings, [c.id for c in cities], cities[0].id, sights, seconds)


def _outage_mid_stream(cluster: LocalStack, writer: SteadyWriter, worker: Worker, app_id: str, folder: Path,
                       victims_of: Callable[[], list[Kafka]], down_s: float, min_rows: int, timeout: float) -> None:
    """The writer runs; after 10 s the nodes `victims_of()` names are SIGKILLed (and the crossing city's labels
    start), restarted `down_s` later; then every change must reach the marts once, and the worker be alive."""
    writer.start()
    time.sleep(10)
    victims = victims_of()
    print(f"SIGKILL {[v.name for v in victims]} after {writer.rows} rows")
    for victim in victims:
        victim.kill()
    writer.label.set()  # the crossing happens while the nodes are down
    time.sleep(down_s)
    print(f"restarting them after {writer.rows} rows")
    for victim in victims:
        victim.start()
    writer.join()
    assert writer.failure is None, writer.failure
    assert writer.rows > min_rows
    try:
        wait_marts_match(cluster.settings, writer.city_ids, timeout=timeout)  # every change counted, none twice
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_pipeline_state(cluster, app_id, folder)}") from None
    assert worker.alive(), f"the worker died during the outage\n{_tails(folder, 30)}"


def test_a_broker_killed_mid_stream_loses_no_change_and_commands_still_flow(cluster: LocalStack,
                                                                           tmp_path: Path) -> None:
    settings = cluster.settings
    run = uuid.uuid4().hex[:6]
    cities, worker, writer = _steady_stream(settings, f"Steady {run}", 4, f"cluster-{run}", tmp_path, 45)
    city_ids = writer.city_ids
    try:
        _outage_mid_stream(cluster, writer, worker, f"cluster-{run}", tmp_path,
                           lambda: [busiest_broker(cluster, change_topic("images"))], down_s=20, min_rows=400,
                           timeout=180)

        reader = TopicReader(settings, command_topic("training"))
        msgs = reader.collect(lambda ms: any(m["value"]["city_id"] == cities[0].id for m in ms), timeout=90)
        reader.close()
        training = one_per_crossing([m["value"] for m in msgs if m["value"]["city_id"] in city_ids])
        assert [c["city_id"] for c in training.values()] == [cities[0].id]
        reader = TopicReader(settings, command_topic("crawl"))
        crawls = reader.collect(lambda ms: {m["value"]["city_id"] for m in ms} >= set(city_ids), timeout=90)
        reader.close()
        assert sorted(one_per_crossing([m["value"] for m in crawls if m["value"]["city_id"] in city_ids])) == \
            sorted(f"crawl-{i}" for i in city_ids)
    finally:
        worker.stop()
        for node in cluster.kafka_nodes:  # whatever happened above, the next test gets the whole cluster
            if not node.running():
                node.start()


def _pipeline_state(stack: LocalStack, app_id: str, folder: Path) -> str:
    """Where a stalled change stopped: the connector's state, each stage's members, assignments and committed
    offsets against the ends of its topics, and the warnings and errors of Connect's, the brokers' and the test's
    service logs (the cluster's state is deleted after the test)."""
    settings = stack.settings
    consumer = kafka.consumer(settings, f"diagnose-{uuid.uuid4().hex[:6]}")
    admin = kafka.admin(settings)
    lines = [f"connector: {connectors.status(settings)}"]
    for group, topics in ((rekey_group(app_id), [change_topic(t) for t in WATCHED_TABLES]),
                          (app_id, [f"{app_id}.facts"])):
        try:
            described = admin.describe_consumer_groups([group])[group].result(15)
            members = [(m.client_id, m.host, sorted(f"{tp.topic}[{tp.partition}]" for tp in
                                                    m.assignment.topic_partitions if tp.topic in topics))
                       for m in described.members]
            lines.append(f"{group}: {described.state}, coordinator {described.coordinator.id}, members {members}")
        except Exception as exc:  # noqa: BLE001 - a diagnosis goes on without it
            lines.append(f"{group}: not described ({exc})")
        probe = kafka.consumer(settings, group)
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                continue
            parts = [TopicPartition(topic, p) for p in meta.partitions]
            ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
            committed = [tp.offset for tp in probe.committed(parts, timeout=10)]
            lines.append(f"{group} on {topic}: committed {committed}, ends {ends}")
        probe.close()
    consumer.close()
    for log in (stack.connect.log_path, *(n.log_path for n in stack.kafka_nodes)):
        tail = [line for line in log.read_text(errors="replace").splitlines() if "ERROR" in line or "WARN" in line]
        lines.append(f"--- {log.name} (errors and warnings, last 15)\n" + "\n".join(t[:300] for t in tail[-15:]))
    return _tails(folder, 30) + "\n" + "\n".join(lines)  # CI shows a long message's end: the state last


def _trainer(settings: Settings, group: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, **settings.env(), **THRESHOLDS, "TRAINER_GROUP_ID": group, "TRAINER_THREADS": "1",
           "SIGHTSCAN_LOG_FORMAT": "console"}
    return subprocess.Popen([sys.executable, "-m", "trainer", "serve"], cwd=ROOT, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


# A failure message keeps what tells a story: a service's errors, crashes, commands, group changes and training
# stages; not access logs, nor librdkafka's reconnect noise while a broker is down.
_TELLING = ("ERROR", "CRITICAL", "WARNING", "Traceback", "Error", "command ", "Joined group", "assigned partitions",
            "Worker ready", "training", "model", "succeeded", "failed", "SIGKILL")
_NOISE = ("aiohttp.access", "Unable connect to node", "Failed fetch", "|FAIL|", "NodeNotReadyError", "onnx")


def _tails(folder: Path, lines: int = 20) -> str:
    """The telling lines of every service log of a test, the last `lines` of each, for a failure message (CI keeps
    nothing else)."""
    out = []
    for log in sorted(folder.glob("*.log")):
        text = [line for line in log.read_text(errors="replace").splitlines()
                if any(t in line for t in _TELLING) and not any(n in line for n in _NOISE)]
        out.append(f"--- {log.name}\n" + "\n".join(line[:300] for line in text[-lines:]))
    return "\n".join(out)


def _training_state(settings: Settings, city_id: int) -> str:
    """The city's training requests and outcomes on their topics, and its models in the warehouse."""
    with db.transaction(settings) as cur:
        cur.execute("SELECT version, created_at FROM models WHERE city_id = %s", (city_id,))
        models = cur.fetchall()
    found = []
    for topic in (command_topic("training"), training_events_topic()):
        reader = TopicReader(settings, topic)
        found.append(f"{topic}: {[m['value'] for m in reader.drain(10) if m['value'].get('city_id') == city_id]}")
        reader.close()
    return f"models of city {city_id}: {models}\n" + "\n".join(found)


async def _hello_model(gateway: Gateway, city: str) -> dict | None:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{gateway.ws_url}?city={city}") as ws:
        return (await next_message(ws, "hello"))["model"]


def test_two_of_each_service_train_once_and_both_gateways_hot_swap_while_a_broker_is_down(
        cluster: LocalStack, tmp_path: Path) -> None:
    settings = cluster.settings
    run = uuid.uuid4().hex[:6]
    name = f"Scaledville {run}"
    # No growth retraining: the city's one crossing makes one request, so "trained once" is one model.
    once = {**THRESHOLDS, "RETRAIN_GROWTH_FRACTION": "100"}
    # Both groups start at the end of their topics: the earlier tests' cities and training requests are not ours.
    ensure_topics(settings, [command_topic("training"), training_events_topic()])
    start_at_the_end(settings, rekey_group(f"scaled-{run}"),
                     [*(change_topic(t) for t in WATCHED_TABLES), training_events_topic()])
    start_at_the_end(settings, f"trainer-{run}", [command_topic("training")])
    workers = [Worker(settings, f"scaled-{run}", tmp_path / f"worker-{i}.log", once).start() for i in range(2)]
    trainers = [_trainer(settings, f"trainer-{run}", tmp_path / f"trainer-{i}.log") for i in range(2)]
    gateways = [start_gateway(settings, tmp_path / f"gateway-{i}.log") for i in range(2)]
    victim = None
    try:
        time.sleep(8)  # the two workers and the two trainers join their groups and split the partitions
        city_id, _ = load_city(settings, render_city(tmp_path / "city", 2, 14, seed=5, city="Scaledville"), name)
        assert all(asyncio.run(_hello_model(g, name)) is None for g in gateways)
        victim = busiest_broker(cluster, command_topic("training"))
        print(f"SIGKILL {victim.name}")
        victim.kill()

        deadline = time.monotonic() + 420
        models: list[dict | None] = [None, None]
        while not all(models):
            assert time.monotonic() < deadline, \
                f"gateways' models after 420 s: {models}\n{_pipeline_state(cluster, f'scaled-{run}', tmp_path)}\n" \
                f"{_training_state(settings, city_id)}"
            for i, trainer in enumerate(trainers):
                assert trainer.poll() is None, f"trainer {i} exited\n{_tails(tmp_path)}"
            models = [asyncio.run(_hello_model(g, name)) for g in gateways]
            time.sleep(2)
        assert [m["model_version"] for m in models] == [1, 1]  # both gateways swapped in the city's model
        victim.start()
        victim = None

        time.sleep(15)  # a second training of the same request would have stored version 2 by now
        with db.transaction(settings) as cur:
            cur.execute("SELECT version FROM models WHERE city_id = %s", (city_id,))
            versions = [r[0] for r in cur.fetchall()]
        assert versions == [1], f"model versions {versions}\n{_tails(tmp_path)}"
        reader = TopicReader(settings, training_events_topic())
        events = [m["value"] for m in reader.collect(lambda ms: any(
            m["value"].get("city_id") == city_id and m["value"].get("status") == "succeeded" for m in ms), 60)]
        reader.close()
        outcomes = [e for e in events if e.get("city_id") == city_id and e.get("status") in ("succeeded", "failed")]
        assert [(e["request_id"], e["status"]) for e in outcomes] == [(f"train-{city_id}-1", "succeeded")], \
            f"{outcomes}\n{_tails(tmp_path)}"
        wait_marts_match(settings, [city_id], timeout=120)
    finally:
        for gateway in gateways:
            stop_gateway(gateway)
        for trainer in trainers:
            stop_popen(trainer, timeout=30)
        for worker in workers:
            worker.stop()
        for node in cluster.kafka_nodes:
            if not node.running():
                node.start()


def test_two_brokers_lost_stalls_the_stream_and_it_resumes_whole_when_they_return(cluster: LocalStack,
                                                                                 tmp_path: Path) -> None:
    """Two of three nodes down: no controller quorum and fewer in-sync replicas than min.insync.replicas, so no
    write is accepted anywhere. The warehouse keeps taking changes (Debezium's slot holds them in the WAL); once
    the brokers return, the worker, which stayed up, counts every change once."""
    settings = cluster.settings
    run = uuid.uuid4().hex[:6]
    start_at_the_end(settings, rekey_group(f"quorum-{run}"),  # the earlier tests' changes are not this one's
                     [*(change_topic(t) for t in WATCHED_TABLES), training_events_topic()])
    _, worker, writer = _steady_stream(settings, f"Quorum {run}", 3, f"quorum-{run}", tmp_path, 50)
    try:
        survivor = busiest_broker(cluster, change_topic("images"))
        _outage_mid_stream(cluster, writer, worker, f"quorum-{run}", tmp_path,
                           lambda: [n for n in cluster.kafka_nodes if n is not survivor], down_s=25, min_rows=300,
                           timeout=240)
        status = connectors.status(settings)
        assert status and all(t["state"] == "RUNNING" for t in status["tasks"]), status
    finally:
        worker.stop()
        for node in cluster.kafka_nodes:
            if not node.running():
                node.start()
