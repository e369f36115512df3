"""The catalogue of topics and consumer groups (sightscan/catalogue.py) and everything that reads or restates it
agree: the topic names of sightscan/topics.py, the topics the stream worker and the command consumers create, the
groups the services join, the AsyncAPI document, deploy/k8s (the generated kafka/topics.yaml, Connect, KEDA's
groups) and docker-compose.yml. No stack: Kafka clients are replaced where a constructor would make one."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from sightscan import asyncapi, catalogue, topics
from sightscan.catalogue import GROUPS, TOPICS
from sightscan.config import Settings, consumer_group
from streams.settings import StreamsSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# Settings to check the names with: the defaults, and others for every placeholder.
NAMINGS = [("sightscan", None), ("acme", None), ("acme", "acme-w")]


def _k8s_helper() -> Any:
    spec = importlib.util.spec_from_file_location("sightscan_k8s", K8S / "app" / "sightscan_k8s.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _k8s_env() -> dict[str, str]:
    """The environment every pod shares: kustomization.yaml's sightscan-config literals."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (config,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "sightscan-config"]
    return dict(literal.split("=", 1) for literal in config["literals"])


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"SIGHTSCAN_HOME": str(tmp_path), **env})


# The catalogue itself ---------------------------------------------------------------------------------------------


def test_the_catalogue_is_consistent() -> None:
    creators = {catalogue.STREAM_WORKER, catalogue.COMMAND_CONSUMERS, catalogue.FAUST, catalogue.DEBEZIUM}
    for topic in TOPICS.values():
        assert set(topic.producers) | set(topic.consumers) <= set(catalogue.SERVICES), topic.id
        assert topic.created_by and set(topic.created_by) <= creators, topic.id
        assert topic.key_format in ("json", "text", None) and (topic.key_format is None) == (not topic.producers)
        assert topic.partitions is None or topic.partitions >= 1
        assert set(topic.config) <= {"cleanup.policy", "retention.ms", "retention.bytes"}, topic.id
    for prefix, app_id in NAMINGS:  # no two topics share a name, whatever the settings
        assert len(set(catalogue.names(prefix, app_id).values())) == len(TOPICS)
    # Every group reads topics of the catalogue that name its service as a consumer; at most one group per
    # (service, topic), so the AsyncAPI binding is unambiguous.
    seen: set[tuple[str, str]] = set()
    for group in GROUPS.values():
        assert group.service in catalogue.SERVICES
        for topic_id in group.topics:
            assert group.service in TOPICS[topic_id].consumers, (group.id, topic_id)
            assert (group.service, topic_id) not in seen
            seen.add((group.service, topic_id))
    # A consumer without a group is one that Faust assigns its partitions (its table's changelog, its leader topic).
    ungrouped = {(s, t.id) for t in TOPICS.values() for s in t.consumers if catalogue.group_of(s, t.id) is None}
    assert ungrouped == {("marts", "cityStateChangelog"), ("marts", "faustLeader")}


def test_topics_py_names_every_topic_as_the_catalogue_does() -> None:
    for prefix, app_id in NAMINGS:
        app = app_id or StreamsSettings().app_id_for(prefix)
        named = {
            **{t: topics.change_topic(t, prefix) for t in topics.WATCHED_TABLES},
            **{f"{k}Commands": topics.command_topic(k, prefix) for k in topics.COMMAND_KINDS},
            "trainingEvents": topics.training_events_topic(prefix),
            "streamsDeadLetter": topics.dead_letter_topic(prefix),
            "commandsDeadLetter": topics.command_dead_letter_topic(prefix),
            "facts": topics.facts_topic(app),
        }
        names = catalogue.names(prefix, app_id)
        assert named == {cid: names[cid] for cid in named}
        # The rest are named by Faust and Debezium after their own rules.
        assert names["cityStateChangelog"] == f"{app}-{catalogue.CITY_STATE_TABLE}-changelog"
        assert names["faustLeader"] == f"{app}-__assignor-__leader"
        assert names["debeziumHeartbeat"] == f"__debezium-heartbeat.{prefix}"


# The services -----------------------------------------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return mock.MagicMock()


@pytest.mark.parametrize("prefix,app_id", NAMINGS)
def test_the_stream_worker_creates_reads_and_names_the_catalogues_topics(tmp_path, prefix, app_id) -> None:
    import streams.worker as worker

    settings = _settings(tmp_path, TOPIC_PREFIX=prefix, TOPIC_PARTITIONS="3")
    streams = StreamsSettings.from_env({"STREAMS_APP_ID": app_id or ""})
    app = streams.app_id_for(prefix)
    ensured, rekeyers = _Recorder(), _Recorder()
    with mock.patch.object(worker, "ensure_topics", ensured), mock.patch.object(worker, "Rekeyer", rekeyers):
        w = worker.StreamWorker(settings, streams)
    # It creates what the catalogue says it creates, with the catalogue's partitions.
    [((_, created), _)] = ensured.calls
    assert created == {t.name(prefix, app): t.partition_count(3) for t in catalogue.created_by(catalogue.STREAM_WORKER)}
    # ensure_topics sets no topic config: a topic it creates must need none.
    assert not any(t.config for t in catalogue.created_by(catalogue.STREAM_WORKER))
    names = catalogue.names(prefix, app)
    # Faust: the app id is the marts group; the table's changelog and the topics it writes are the catalogue's.
    assert w.app.conf.id == GROUPS["streams"].name(prefix, app)
    assert w.city_state.changelog_topic.get_topic_name() == names["cityStateChangelog"]
    assert w.facts.get_topic_name() == names["facts"] and w.dead_letters.get_topic_name() == names["streamsDeadLetter"]
    assert {t.get_topic_name() for t in w.commands.values()} == {names[f"{k}Commands"] for k in catalogue.COMMAND_KINDS}
    # The rekeyer reads the rekey group's topics in that group, and writes facts and dead letters.
    [((_, rekey_app, table_of_topic, outcomes, facts, dead_letters), _)] = rekeyers.calls
    from streams.rekey import rekey_group

    assert rekey_group(rekey_app) == GROUPS["rekey"].name(prefix, app)
    assert {*table_of_topic, outcomes} == {names[t] for t in GROUPS["rekey"].topics}
    assert (facts, dead_letters) == (names["facts"], names["streamsDeadLetter"])
    written = {cid for cid, t in TOPICS.items() if {"rekeyer", "marts"} & set(t.producers)}
    assert written == {"facts", "streamsDeadLetter", "cityStateChangelog", *(f"{k}Commands" for k in
                                                                             catalogue.COMMAND_KINDS)}


def test_command_consumers_create_their_topics_and_the_dead_letters(tmp_path) -> None:
    from sightscan import commands

    settings = _settings(tmp_path, TOPIC_PREFIX="acme")
    created: set[str] = set()
    for kind in catalogue.COMMAND_KINDS:
        ensured = _Recorder()
        with mock.patch.object(commands, "ensure_topics", ensured), \
                mock.patch.object(commands, "kafka", mock.MagicMock()):
            commands.CommandWorker(settings, kind, "g", lambda command, message: None)
        [((_, names), _)] = ensured.calls
        assert topics.command_topic(kind, "acme") in names
        created |= set(names)
    assert created == {t.name("acme") for t in catalogue.created_by(catalogue.COMMAND_CONSUMERS)}


def test_every_service_joins_the_catalogues_group(tmp_path) -> None:
    from consumers.settings import LabellerSettings
    from producers.settings import CrawlerSettings
    from trainer.settings import load as load_trainer_settings

    for prefix in ("sightscan", "acme"):
        settings = _settings(tmp_path, TOPIC_PREFIX=prefix)
        assert CrawlerSettings.from_env({}).group(prefix) == GROUPS["crawler"].name(prefix)
        assert LabellerSettings.from_env({}).group(prefix) == GROUPS["labeller"].name(prefix)
        assert load_trainer_settings(settings, {}).group_id == GROUPS["trainer"].name(prefix)
        assert StreamsSettings().app_id_for(prefix) == GROUPS["streams"].name(prefix)
        for service in ("crawler", "labeller", "trainer", "streams"):  # the rule of sightscan.config
            assert consumer_group(prefix, service) == GROUPS[service].name(prefix)
            assert consumer_group(prefix, service, "mine") == "mine"
    # Each group's setting names it instead of the default.
    named = {"crawler": lambda env: CrawlerSettings.from_env(env).group("x"),
             "labeller": lambda env: LabellerSettings.from_env(env).group("x"),
             "trainer": lambda env: load_trainer_settings(_settings(tmp_path), env).group_id,
             "streams": lambda env: StreamsSettings.from_env(env).app_id_for("x")}
    assert {g.id for g in GROUPS.values() if g.setting} == set(named)
    for group in GROUPS.values():
        if group.setting:
            assert named[group.id]({group.setting: "mine"}) == "mine", group.id


def test_the_dispatcher_and_the_gateway_join_the_catalogues_groups(tmp_path) -> None:
    import gateway.follower as follower
    import trainer.service as service
    from trainer.settings import load as load_trainer_settings

    settings = _settings(tmp_path, TOPIC_PREFIX="acme")
    workers = _Recorder()
    ts = load_trainer_settings(settings, {"MTS_EC2_INSTANCE_ID": "i-0", "AWS_REGION": "eu-central-1"})
    with mock.patch.object(service, "CommandWorker", workers):
        service.TrainerService(settings, ts, role="dispatch")
    [((_, kind, group, *_), _)] = workers.calls
    assert (kind, group) == ("training", GROUPS["dispatcher"].name("acme"))

    consumers = _Recorder()
    with mock.patch.object(follower.kafka, "consumer", consumers):
        f = follower.ModelEventFollower(settings, lambda event: None, mock.MagicMock())
    [((_, group), _)] = consumers.calls
    template = GROUPS["gateway"].template
    assert re.fullmatch(re.escape(template).replace(re.escape("{random}"), "[0-9a-f]+"), group), group
    assert [f.topic] == [TOPICS[t].name("acme") for t in GROUPS["gateway"].topics]


# The AsyncAPI document --------------------------------------------------------------------------------------------


def test_the_asyncapi_channels_and_operations_are_the_catalogues() -> None:
    doc = asyncapi.document()
    assert list(doc["channels"]) == list(TOPICS)
    for prefix, app_id in NAMINGS:
        assert asyncapi.topics(prefix, app_id) == catalogue.names(prefix, app_id)
    for cid, channel in doc["channels"].items():
        topic = TOPICS[cid]
        assert channel["address"] == topic.name() and channel["x-address-template"] == topic.template
        assert channel["title"] == topic.title and channel["description"].startswith(topic.description)
        assert channel["x-internal"] == topic.internal
        assert channel["x-publishers"] == sorted(topic.producers) and channel["x-consumers"] == sorted(topic.consumers)
        config = channel.get("bindings", {}).get("kafka", {}).get("topicConfiguration", {})
        assert {k: (v[0] if isinstance(v, list) else str(v)) for k, v in config.items()} == dict(topic.config)
        key_formats = {doc["components"]["messages"][ref["$ref"].rsplit("/", 1)[1]]["x-key-format"]
                       for ref in channel["messages"].values()}
        assert key_formats == ({topic.key_format} if topic.key_format else set()), cid
    flows = {(s, "send", t.id) for t in TOPICS.values() for s in t.producers} | \
            {(s, "receive", t.id) for t in TOPICS.values() for s in t.consumers}
    ops = doc["operations"]
    assert {(op["x-service"], op["action"], op["channel"]["$ref"].rsplit("/", 1)[1]) for op in ops.values()} == flows
    for op in ops.values():
        cid = op["channel"]["$ref"].rsplit("/", 1)[1]
        group = catalogue.group_of(op["x-service"], cid) if op["action"] == "receive" else None
        binding = op.get("bindings", {}).get("kafka", {}).get("groupId")
        assert (binding is None) == (group is None), (op["x-service"], cid)
        if group is not None:
            assert binding["examples"] == [group.name()] and binding["description"].startswith(group.template)
    assert asyncapi.SERVICES == catalogue.SERVICES


# deploy/k8s -------------------------------------------------------------------------------------------------------


def test_the_k8s_topics_manifest_is_the_catalogue() -> None:
    helper = _k8s_helper()
    env = _k8s_env()
    settings, streams = Settings.from_env(env), StreamsSettings.from_env(env)
    prefix, app = settings.topic_prefix, streams.app_id_for(settings.topic_prefix)
    # Every topic a SightScan process would create, none that only Debezium creates.
    declared = [t for t in TOPICS.values() if set(t.created_by) - {catalogue.DEBEZIUM}]
    assert helper.wanted_topics(settings, streams) == {t.name(prefix, app): t.partition_count(settings.topic_partitions)
                                                       for t in declared}
    manifest = (K8S / "kafka" / "topics.yaml").read_text()
    assert manifest == helper.topics_yaml(settings, streams), (
        "deploy/k8s/kafka/topics.yaml is not what the catalogue gives; regenerate it: "
        + " ".join(f"{k}={env[k]}" for k in ("TOPIC_PREFIX", "TOPIC_PARTITIONS", "STREAMS_APP_ID"))
        + " python deploy/k8s/app/sightscan_k8s.py topics-yaml > deploy/k8s/kafka/topics.yaml")
    resources = [d for d in yaml.safe_load_all(manifest) if d]
    assert [r["spec"]["topicName"] for r in resources] == [t.name(prefix, app) for t in declared]
    for resource, topic in zip(resources, declared, strict=True):
        assert resource["kind"] == "KafkaTopic"
        assert resource["spec"]["partitions"] == topic.partition_count(settings.topic_partitions)
        assert resource["spec"].get("config", {}) == dict(topic.config)
    # Topics the brokers or Debezium create get TOPIC_PARTITIONS too.
    kafka = next(d for d in yaml.safe_load_all((K8S / "kafka" / "kafka.yaml").read_text()) if d["kind"] == "Kafka")
    assert kafka["spec"]["kafka"]["config"]["num.partitions"] == settings.topic_partitions


def test_k8s_connect_and_keda_use_the_catalogues_names() -> None:
    env = _k8s_env()
    prefix = env["TOPIC_PREFIX"]
    app = StreamsSettings.from_env(env).app_id_for(prefix)
    docs = [d for d in yaml.safe_load_all((K8S / "kafka" / "connect.yaml").read_text()) if d]
    connect = next(d for d in docs if d["kind"] == "KafkaConnect")["spec"]
    assert connect["groupId"] == catalogue.fill(catalogue.CONNECT_GROUP, prefix)
    for kind, template in catalogue.CONNECT_STORAGE_TOPICS.items():
        assert connect[f"{kind}StorageTopic"] == catalogue.fill(template, prefix), kind
    connector = next(d for d in docs if d["kind"] == "KafkaConnector")["spec"]["config"]
    assert connector["topic.prefix"] == prefix
    assert int(connector["topic.creation.default.partitions"]) == int(env["TOPIC_PARTITIONS"])
    # KEDA reads the lag of the catalogue's groups, on their topics.
    groups = {GROUPS[g].name(prefix, app): GROUPS[g] for g in ("rekey", "streams", "labeller", "trainer")}
    for scaled in yaml.safe_load_all((K8S / "app" / "scaledobjects.yaml").read_text()):
        for trigger in scaled["spec"]["triggers"]:
            group = groups[trigger["metadata"]["consumerGroup"]]
            if "topic" in trigger["metadata"]:
                assert trigger["metadata"]["topic"] in {TOPICS[t].name(prefix, app) for t in group.topics}


# docker-compose.yml -----------------------------------------------------------------------------------------------


def test_compose_names_nothing_the_catalogue_does_not(tmp_path) -> None:
    """Compose lists no topic of ours (the services and Debezium create them) and no group of ours (their
    defaults apply); what it names is Connect's, as the catalogue has it, and its partitions are TOPIC_PARTITIONS."""
    compose = _compose()
    shared = compose["x-sightscan-env"]
    group_settings = {g.setting for g in GROUPS.values() if g.setting}
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        assert not (group_settings & set(env)), f"{name} names a consumer group: {group_settings & set(env)}"
        assert "TOPIC_PREFIX" not in env, f"{name} sets TOPIC_PREFIX; the names below assume the default"
    prefix = Settings.from_env({}).topic_prefix
    assert prefix == catalogue.DEFAULT_PREFIX
    connect = compose["services"]["connect"]["environment"]
    assert connect["GROUP_ID"] == catalogue.fill(catalogue.CONNECT_GROUP, prefix)
    for kind, template in catalogue.CONNECT_STORAGE_TOPICS.items():
        assert connect[f"{kind.upper()}_STORAGE_TOPIC"] == catalogue.fill(template, prefix), kind
    # The brokers' auto-created topics (and so every topic) get the services' TOPIC_PARTITIONS.
    for node in ("kafka", "kafka-2", "kafka-3"):
        assert compose["services"][node]["environment"]["KAFKA_NUM_PARTITIONS"] == shared["TOPIC_PARTITIONS"]
    # No topic name of ours is written out anywhere in the file.
    text = (ROOT / "docker-compose.yml").read_text()
    for topic_name in catalogue.names(prefix).values():
        assert topic_name not in text, topic_name


def test_the_local_stacks_connect_uses_the_catalogues_names(tmp_path) -> None:
    from localsystem.stack.kafka import Connect

    for prefix in ("sightscan", "acme"):
        config = Connect(_settings(tmp_path, TOPIC_PREFIX=prefix), "java", tmp_path, tmp_path).config()
        assert config["group.id"] == catalogue.fill(catalogue.CONNECT_GROUP, prefix)
        for kind, template in catalogue.CONNECT_STORAGE_TOPICS.items():
            assert config[f"{kind}.storage.topic"] == catalogue.fill(template, prefix), kind
