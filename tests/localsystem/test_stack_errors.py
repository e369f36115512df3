"""The stack command's errors are plain: a taken port or a missing Java says what and how to fix it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from sightscan.config import ConfigError, Settings
from tests.support.stack import ephemeral_settings


def _run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "localsystem.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_taken_port_is_named_with_the_setting_to_change(tmp_path):
    settings = ephemeral_settings(tmp_path / "home")
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", settings.kafka_port))
        squatter.listen()
        result = _run_cli(["stack", "up"], {**os.environ, **settings.env()})
    assert result.returncode == 1
    assert f"port {settings.kafka_port} for Kafka is taken" in result.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was started: the check runs before any service.
    assert not (tmp_path / "home" / "postgres" / "data").exists()


def test_missing_java_is_explained(tmp_path):
    settings = ephemeral_settings(tmp_path / "home")
    env = {**os.environ, **settings.env(), "PATH": "/nonexistent"}
    env.pop("JAVA_HOME", None)
    result = _run_cli(["stack", "up"], env)
    assert result.returncode == 1
    assert "Java 17+ was not found" in result.stderr and "JAVA_HOME" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_setting_names_the_variable():
    with pytest.raises(ConfigError, match="PGPORT.*'five'"):
        Settings.from_env({"PGPORT": "five"})
    result = _run_cli(["config"], {**os.environ, "MAX_IMAGES_PER_SIGHT": "-3"})
    assert result.returncode == 2 and "MAX_IMAGES_PER_SIGHT" in result.stderr


def test_required_setting_missing_says_how_to_set_it():
    with pytest.raises(ConfigError, match="export MAPS_KEY="):
        Settings.from_env({}).require("MAPS_KEY", environ={})


def test_kafka_cluster_ids_never_look_like_an_option():
    # One base64url UUID in 64 starts with "-", which kafka-storage's parser took for an option.
    from localsystem.stack.kafka import random_cluster_id

    ids = [random_cluster_id() for _ in range(2000)]
    assert not any(i.startswith("-") for i in ids) and len(set(ids)) == 2000 and {len(i) for i in ids} == {22}
