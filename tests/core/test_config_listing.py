"""`sightscan config`: every setting of every service, with its value and where it came from."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from localsystem.cli import main, settings_of_every_service
from streams.settings import StreamsSettings
from trainer.settings import TrainerEnv


def _rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split(maxsplit=3) for line in out.splitlines() if line and not line.startswith("#")}


def test_every_setting_of_every_service_is_listed_with_its_source(monkeypatch, capsys) -> None:
    monkeypatch.setenv("TRAINER_SEED", "7")
    monkeypatch.setenv("SIGHTSCAN_API_TOKEN", "a-secret-token-value")
    assert main(["config"]) == 0
    rows = _rows(capsys.readouterr().out)
    declared = {f.metadata["env"] for _, cls in settings_of_every_service() for f in dataclasses.fields(cls)}
    assert declared <= rows.keys()
    assert {"STREAMS_BATCH_SIZE", "TRAINER_BACKBONE", "GATEWAY_WS_TOKEN", "CRAWLER_THREADS", "PGHOST"} <= declared
    assert rows["TRAINER_SEED"][1:3] == ["7", "environment"]
    assert rows["STREAMS_BATCH_SIZE"][1:3] == ["300", "default"]
    assert rows["SIGHTSCAN_API_TOKEN"][1:3] == ["(set)", "environment"]  # a secret is never printed


def test_every_variable_is_declared_once() -> None:
    """One declaration, one parser, one doc line: a variable read by two services is declared by one of them
    (DOS_PORT and SIGHTSCAN_API_TOKEN are the gateway's; the local system reads them from GatewaySettings)."""
    names = [f.metadata["env"] for _, cls in settings_of_every_service() for f in dataclasses.fields(cls)]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []


def test_a_malformed_value_is_named_by_config_and_at_start_up(monkeypatch, capsys) -> None:
    monkeypatch.setenv("STREAMS_BATCH_SIZE", "lots")
    assert main(["config"]) == 1
    assert "malformed" in _rows(capsys.readouterr().out)["STREAMS_BATCH_SIZE"][2]
    from sightscan.config import ConfigError

    with pytest.raises(ConfigError, match="STREAMS_BATCH_SIZE"):
        StreamsSettings.from_env()
    monkeypatch.setenv("TRAINER_INPUT_SIZE", "100")
    with pytest.raises(ConfigError, match="TRAINER_INPUT_SIZE.*multiple of 32"):
        TrainerEnv.from_env()


@pytest.mark.parametrize("environ, crawler, labeller, trainer", [
    ({}, "sightscan-crawler", "sightscan-labeller", "sightscan-trainer"),
    ({"TOPIC_PREFIX": "berlin"}, "berlin-crawler", "berlin-labeller", "berlin-trainer"),
    ({"TOPIC_PREFIX": "berlin", "CRAWLER_GROUP_ID": "c", "LABELLER_GROUP_ID": "l", "TRAINER_GROUP_ID": "t"},
     "c", "l", "t"),
])
def test_consumer_groups_follow_the_topic_prefix_unless_named(environ, crawler, labeller, trainer) -> None:
    """Two systems on one cluster (two TOPIC_PREFIXes) must not share a consumer group: each would take half of the
    other's requests and ignore them."""
    from consumers.settings import LabellerSettings
    from producers.settings import CrawlerSettings
    from sightscan.config import Settings
    from trainer.settings import load

    settings = Settings.from_env(environ)
    assert CrawlerSettings.from_env(environ).group(settings.topic_prefix) == crawler
    assert LabellerSettings.from_env(environ).group(settings.topic_prefix) == labeller
    assert load(settings, environ).group_id == trainer


def test_config_needs_no_training_or_imaging_packages() -> None:
    # `sightscan config` must work in an install without the training extra: torch, torchvision, onnxruntime and
    # OpenCV are made unimportable in a fresh interpreter, and the listing still names the trainer's settings.
    code = ("import sys\n"
            "for m in ('torch', 'torchvision', 'onnxruntime', 'cv2'): sys.modules[m] = None\n"
            "from localsystem.cli import main\n"
            "sys.argv = ['sightscan', 'config']\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "TRAINER_MIN_RECALL" in done.stdout and "MTS_EPOCHS" in done.stdout


def test_the_configuration_page_is_what_config_prints() -> None:
    """docs/configuration.md is generated; a setting added without regenerating it fails here."""
    from localsystem.cli import settings_reference

    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    assert page == settings_reference(), "regenerate: sightscan config --markdown > docs/configuration.md"
