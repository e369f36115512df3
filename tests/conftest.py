"""Session-wide fixtures: one real local stack (PostgreSQL, Kafka, Debezium Connect) for the whole test run.

SIGHTSCAN_TEST_STACK_HOME=<dir> keeps that stack between runs (fast iteration); by default each run starts a
private stack on free ports and deletes it at the end.

Tiers (tests/README.md): a test that uses the `stack` fixture, directly or through another fixture, is marked
`stack` here, so nobody has to remember the marker; `./dev test --quick` runs `-m "not stack and not slow"`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from localsystem.stack import LocalStack
from sightscan import kafka
from sightscan.config import Settings
from tests.support.stack import ephemeral_settings

_OWN_BASETEMP = "_sightscan_basetemp"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Temporary folders of our own, not under /tmp/pytest-of-<user>: every pytest run that starts on the machine
    # resets that folder's mode to 0700, which locks a stack's PostgreSQL (it runs as its own user, reaching its
    # data through o+x folders) out of its data directory mid-run: "could not open pg_control: Permission denied".
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="sightscan-pytest-")
        setattr(config, _OWN_BASETEMP, config.option.basetemp)


def pytest_unconfigure(config: pytest.Config) -> None:
    own = getattr(config, _OWN_BASETEMP, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.stack)


def _show_logs_of_a_failed_run(home: Path, lines: int = 60) -> None:
    """The tail of every stack log, printed before the purge deletes them: a CI run that failed keeps its evidence
    (a database or broker that died mid-run is otherwise invisible once the stack is gone)."""
    for log_file in sorted((home / "logs").glob("*.log")):
        tail = log_file.read_text(errors="replace").splitlines()[-lines:]
        print(f"\n[stack] ---- last {len(tail)} lines of {log_file.name} ----", flush=True)
        print("\n".join(tail), flush=True)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    kept = os.environ.get("SIGHTSCAN_TEST_STACK_HOME")
    if kept:
        home = Path(kept).resolve()
        ports = home / "ports.json"
        if ports.exists():
            settings = Settings.from_env({**os.environ, **json.loads(ports.read_text())})
        else:
            settings = ephemeral_settings(home)
            home.mkdir(parents=True, exist_ok=True)
            ports.write_text(json.dumps({k: v for k, v in settings.env().items() if k in (
                "SIGHTSCAN_HOME", "PGPORT", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_CONTROLLER_PORT", "CONNECT_URL")}))
    else:
        settings = ephemeral_settings(tmp_path_factory.mktemp("stack"))
    st = LocalStack(settings, progress=lambda msg: print(f"[stack] {msg}", flush=True))
    st.up()
    yield st
    if not kept:
        if request.session.testsfailed:
            capture = request.config.pluginmanager.getplugin("capturemanager")
            with capture.global_and_fixture_disabled():  # to the terminal, not into a test's captured output
                _show_logs_of_a_failed_run(settings.home)
        st.down(purge=True)
        # `down` must leave no process behind.
        left = [p.info for p in psutil.process_iter(["pid", "cmdline"])
                if str(settings.home) in " ".join(p.info["cmdline"] or [])]
        assert not left, f"processes left after stack down: {left}"


@pytest.fixture(scope="session")
def settings(stack: LocalStack) -> Settings:
    return stack.settings


def _decode(raw: bytes | None) -> Any:
    """JSON when it is JSON, else text (keys written by hand need not be JSON)."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


class TopicReader:
    """Reads every partition of a topic from its start (or from now), waiting for messages that match.

    Partitions are assigned explicitly (no consumer group), so "now" is the high watermark at creation time.
    A topic that does not exist yet is read from its start once it appears.
    """

    def __init__(self, settings: Settings, topic: str, from_now: bool = False) -> None:
        self.topic = topic
        self.consumer = kafka.consumer(settings, f"test-{uuid.uuid4()}")
        self.assigned = False
        self.start: dict[int, int] = {}
        if from_now:
            for p in self._partitions():
                self.start[p] = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        self._assign()

    def _partitions(self) -> list[int]:
        meta = self.consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if meta is None or meta.error is not None:
            return []
        return sorted(meta.partitions)

    def _assign(self) -> None:
        parts = self._partitions()
        if parts:
            self.consumer.assign([TopicPartition(self.topic, p, self.start.get(p, OFFSET_BEGINNING)) for p in parts])
            self.assigned = True

    def collect(self, until: Callable[[list[dict[str, Any]]], bool], timeout: float = 30) -> list[dict[str, Any]]:
        """Messages as {"key", "value", "partition", "offset"} (JSON decoded) until `until(messages)` holds."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.assigned:
                self._assign()
                if not self.assigned:
                    time.sleep(0.2)
                    continue
            msg = self.consumer.poll(0.5)
            if msg is None or msg.error():
                if until(out):
                    return out
                continue
            out.append({
                "key": _decode(msg.key()),
                "value": _decode(msg.value()),
                "partition": msg.partition(), "offset": msg.offset(),
            })
            if until(out):
                return out
        raise AssertionError(f"timed out after {timeout} s on {self.topic}; got {len(out)} messages: {out[-3:]}")

    def drain(self, quiet_s: float = 3.0, timeout: float = 30) -> list[dict[str, Any]]:
        """Every message there is now: read until nothing new has come for `quiet_s` (or `timeout`)."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        quiet_until = time.monotonic() + quiet_s
        while time.monotonic() < min(deadline, quiet_until):
            got = self.collect(lambda ms, q=quiet_until: bool(ms) or time.monotonic() >= q,
                               timeout=max(1.0, deadline - time.monotonic()))
            if got:
                out.extend(got)
                quiet_until = time.monotonic() + quiet_s
        return out

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def topic_reader(settings: Settings) -> Iterator[Callable[..., TopicReader]]:
    readers: list[TopicReader] = []

    def make(topic: str, from_now: bool = False) -> TopicReader:
        reader = TopicReader(settings, topic, from_now)
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()
