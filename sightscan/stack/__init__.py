"""The local stack: PostgreSQL (logical WAL), Kafka (KRaft, one node) and Kafka Connect with Debezium.

`sightscan stack up` starts what is not running, health-checks each part, migrates the warehouse and registers
the connector; a second `up` is a no-op. `down` stops everything and leaves no process behind; `down --purge`
also deletes the state (and with it the replication slot). State and logs live in SIGHTSCAN_HOME.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import connectors
from sightscan import db
from sightscan.config import Settings
from sightscan.stack.kafka import Connect, Kafka
from sightscan.stack.postgres import Postgres
from sightscan.stack.proc import StackError, require_free_port
from sightscan.stack.tools import find_java, resolve_jars

log = logging.getLogger(__name__)

__all__ = ["LocalStack", "StackError", "ServiceStatus"]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    healthy: bool
    where: str


class LocalStack:
    def __init__(self, settings: Settings, progress: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.progress = progress or (lambda msg: log.info(msg))
        self.postgres = Postgres(settings)
        self._kafka: Kafka | None = None
        self._connect: Connect | None = None

    def _java_services(self) -> tuple[Kafka, Connect]:
        if self._kafka is None or self._connect is None:
            java = find_java()
            self.progress("resolving Kafka and Debezium jars (Maven Central, cached)")
            jars = resolve_jars(self.settings.cache)
            self._kafka = Kafka(self.settings, java, jars["kafka"])
            self._connect = Connect(self.settings, java, jars["kafka"], jars["debezium"].parent)
        return self._kafka, self._connect

    @property
    def kafka(self) -> Kafka:
        return self._java_services()[0]

    @property
    def connect(self) -> Connect:
        return self._java_services()[1]

    def up(self) -> dict[str, float]:
        """Start what is not running; returns seconds spent per step."""
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        self.settings.home.mkdir(parents=True, exist_ok=True)
        kafka, connect = self._java_services()
        timings["jars"] = time.monotonic() - t0
        self._preflight()

        steps: list[tuple[str, Callable[[], object]]] = [
            ("postgres", self.postgres.start),
            ("migrate", lambda: db.migrate(self.settings)),
            ("kafka", kafka.start),
            ("connect", connect.start),
            ("connector", self._register_connector),
        ]
        for i, (name, step) in enumerate(steps, 1):
            started = time.monotonic()
            self.progress(f"[{i}/{len(steps)}] {name}…")
            step()
            timings[name] = time.monotonic() - started
            self.progress(f"[{i}/{len(steps)}] {name} ready in {timings[name]:.1f} s")
        timings["total"] = time.monotonic() - t0
        return timings

    def _preflight(self) -> None:
        """Every port a stopped service needs must be free before anything starts: fail early and plainly."""
        s = self.settings
        wanted = []
        if not self.postgres.running():
            wanted.append((s.pgport, "PostgreSQL", "PGPORT"))
        if not self.kafka.running():
            wanted += [(s.kafka_port, "Kafka", "KAFKA_BOOTSTRAP_SERVERS"),
                       (s.kafka_controller_port, "the Kafka controller", "KAFKA_CONTROLLER_PORT")]
        if not self.connect.running():
            wanted.append((s.connect_port, "Kafka Connect", "CONNECT_URL"))
        for port, what, env_name in wanted:
            require_free_port(port, what, env_name)

    def _register_connector(self) -> None:
        connectors.register(self.settings)
        connectors.wait_running(self.settings)

    def down(self, purge: bool = False) -> None:
        """Stop Connect, Kafka, PostgreSQL (in that order); with purge, delete all state."""
        if self.connect.running() or self.kafka.running() or self.postgres.running():
            self.progress("stopping the stack")
        self.connect.stop()
        self.kafka.stop()
        self.postgres.stop()
        if purge:
            self.progress(f"deleting {self.settings.home}")
            shutil.rmtree(self.settings.home, ignore_errors=True)

    def status(self) -> list[ServiceStatus]:
        out = [ServiceStatus("postgres", self.postgres.running(), self.postgres.healthy(),
                             self.postgres.describe())]
        for svc in (self.kafka, self.connect):
            running = svc.running()
            healthy = False
            if running:
                try:
                    healthy = svc.healthy()
                except Exception:
                    healthy = False
            out.append(ServiceStatus(svc.name, running, healthy, f"127.0.0.1:{svc.port()}"))
        conn = None
        try:
            conn = connectors.status(self.settings) if self.connect.running() else None
        except Exception:
            conn = None
        state = conn["connector"]["state"] if conn else "absent"
        tasks = ",".join(t["state"] for t in conn.get("tasks", [])) if conn else ""
        out.append(ServiceStatus("debezium", state == "RUNNING", state == "RUNNING" and tasks == "RUNNING",
                                 f"{connectors.CONNECTOR_NAME} connector={state} tasks={tasks or '-'}"))
        return out
