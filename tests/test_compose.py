"""docker-compose.yml runs the same stack as `./dev up`. No Docker engine runs here, so this checks the file:
it parses, every service the project needs is there, and the settings match the local stack's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from sightscan.config import Settings
from sightscan.stack.kafka import Connect, Kafka

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_the_stack_and_our_jobs():
    services = _compose()["services"]
    assert {"postgres", "kafka", "connect", "migrate", "register-connector"} <= set(services)
    assert services["connect"]["image"].startswith("quay.io/debezium/connect:3.")
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert "wal_level=logical" in services["postgres"]["command"]
    assert services["register-connector"]["command"] == ["sightscan", "connector", "register"]


def test_compose_settings_match_the_local_stack(tmp_path):
    settings = Settings.from_env({"SIGHTSCAN_HOME": str(tmp_path)})
    kafka_local = Kafka(settings, "java", tmp_path).config()
    kafka_env = _compose()["services"]["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == kafka_local["process.roles"]
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr", "group.initial.rebalance.delay.ms", "num.partitions"):
        assert kafka_env["KAFKA_" + key.replace(".", "_").upper()] == str(kafka_local[key]), key

    connect_local = Connect(settings, "java", tmp_path, tmp_path).config()
    connect_env = _compose()["services"]["connect"]["environment"]
    assert connect_env["KEY_CONVERTER"] == connect_local["key.converter"]
    assert connect_env["CONNECT_VALUE_CONVERTER_SCHEMAS_ENABLE"] == connect_local["value.converter.schemas.enable"]
    assert connect_env["OFFSET_FLUSH_INTERVAL_MS"] == str(connect_local["offset.flush.interval.ms"])
    assert connect_env["CONFIG_STORAGE_TOPIC"] == connect_local["config.storage.topic"]


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
    from sightscan.stack.services import SERVICES

    services = _compose()["services"]
    for spec in SERVICES:
        assert spec.name in services, f"docker-compose.yml lacks the {spec.name} service"
        command = services[spec.name]["command"]
        assert command[0] == "python" and command[1:len(spec.argv) + 1] == list(spec.argv), spec.name
    # torch only where training runs
    assert services["trainer"]["build"]["args"]["EXTRAS"] == "train"
    assert all("train" not in services[s]["build"]["args"]["EXTRAS"] for s in ("streams", "gateway"))
