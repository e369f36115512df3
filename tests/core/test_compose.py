"""docker-compose.yml runs the same stack as `./dev up`. No Docker engine runs here, so this checks the file:
it parses, every service the project needs is there, and the settings match the local stack's."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from localsystem.stack.kafka import Connect, Kafka
from sightscan.config import Settings

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


THREE_BROKERS = COMPOSE.parent / "compose-three-brokers.env"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def _interpolate(value: object, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, as `docker compose` would substitute them."""
    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            return f"<{name} required>"
        return arg or ""
    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:-|:\?)([^}]*))?\}", one, str(value))


def _service_env(compose: dict, service: str, env: dict[str, str]) -> dict[str, str]:
    return {k: _interpolate(v, env) for k, v in compose["services"][service]["environment"].items()}


def test_compose_has_the_stack_and_our_jobs():
    services = _compose()["services"]
    assert {"postgres", "kafka", "connect", "migrate", "register-connector"} <= set(services)
    assert services["connect"]["image"].startswith("quay.io/debezium/connect:3.")
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert "wal_level=logical" in services["postgres"]["command"]
    assert services["register-connector"]["command"] == ["sightscan", "connector", "register"]
    # The three-brokers profile adds nodes 2 and 3, on the same image, and only that profile.
    for node in ("kafka-2", "kafka-3"):
        assert services[node]["profiles"] == ["three-brokers"] and services[node]["image"] == services["kafka"]["image"]
    assert _env_file(THREE_BROKERS)["COMPOSE_PROFILES"] == "three-brokers"


@pytest.mark.parametrize("brokers", [1, 3])
def test_compose_settings_match_the_local_stack(tmp_path, brokers):
    compose = _compose()
    env = _env_file(THREE_BROKERS) if brokers == 3 else {}
    settings = Settings.from_env({"SIGHTSCAN_HOME": str(tmp_path), "KAFKA_BROKERS": str(brokers)})
    nodes = ["kafka", "kafka-2", "kafka-3"][:brokers]
    for i, node in enumerate(nodes, 1):
        kafka_local = Kafka(settings, "java", tmp_path, i).config()
        kafka_env = _service_env(compose, node, env)
        assert kafka_env["KAFKA_NODE_ID"] == str(kafka_local["node.id"])
        assert kafka_env["KAFKA_PROCESS_ROLES"] == kafka_local["process.roles"]
        assert len(kafka_env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == brokers
        for key in ("default.replication.factor", "min.insync.replicas", "offsets.topic.replication.factor",
                    "transaction.state.log.replication.factor", "transaction.state.log.min.isr",
                    "share.coordinator.state.topic.replication.factor", "share.coordinator.state.topic.min.isr",
                    "group.initial.rebalance.delay.ms", "num.partitions"):
            assert kafka_env["KAFKA_" + key.replace(".", "_").upper()] == str(kafka_local[key]), (node, key)

    connect_local = Connect(settings, "java", tmp_path, tmp_path).config()
    connect_env = _service_env(compose, "connect", env)
    assert connect_env["KEY_CONVERTER"] == connect_local["key.converter"]
    assert connect_env["CONNECT_VALUE_CONVERTER_SCHEMAS_ENABLE"] == connect_local["value.converter.schemas.enable"]
    assert connect_env["OFFSET_FLUSH_INTERVAL_MS"] == str(connect_local["offset.flush.interval.ms"])
    assert connect_env["CONFIG_STORAGE_TOPIC"] == connect_local["config.storage.topic"]
    for key in ("config.storage.replication.factor", "offset.storage.replication.factor",
                "status.storage.replication.factor"):
        assert connect_env[key.replace(".", "_").upper()] == str(connect_local[key]), key
    for key in ("producer.acks", "producer.enable.idempotence", "producer.linger.ms",
                "connector.client.config.override.policy"):
        assert connect_env["CONNECT_" + key.replace(".", "_").upper()] == str(connect_local[key]), key
    assert len(connect_env["BOOTSTRAP_SERVERS"].split(",")) == brokers

    # Our services see every broker and create topics replicated as the cluster is.
    ours = Settings.from_env(_service_env(compose, "streams", env))
    assert len(ours.bootstrap_servers.split(",")) == brokers
    assert (ours.replication_factor, ours.min_insync_replicas) == (settings.replication_factor,
                                                                   settings.min_insync_replicas)


def test_docker_compose_config_parses_where_compose_exists():
    # `docker compose config` needs only the compose plugin, not an engine; this machine may lack the plugin.
    docker = shutil.which("docker")
    has_compose = docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    if has_compose:
        result = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    else:
        # Without the plugin, check what it would: every depends_on names a service, every build has a Dockerfile.
        services = _compose()["services"]
        for name, svc in services.items():
            assert set(svc.get("depends_on", {})) <= set(services), name
            if "build" in svc:
                context = svc["build"]["context"] if isinstance(svc["build"], dict) else svc["build"]
                assert (COMPOSE.parent / context / "Dockerfile").exists()


def test_compose_runs_each_of_our_services_as_the_local_stack_does():
    from localsystem.stack.services import SERVICES

    services = _compose()["services"]
    for spec in SERVICES:
        assert spec.name in services, f"docker-compose.yml lacks the {spec.name} service"
        command = services[spec.name]["command"]
        assert command[0] == "python" and command[1:len(spec.argv) + 1] == list(spec.argv), spec.name
    # torch only where training runs
    assert services["trainer"]["build"]["args"]["EXTRAS"] == "train"
    assert all("train" not in services[s]["build"]["args"]["EXTRAS"] for s in ("streams", "gateway"))
