"""The local stack: PostgreSQL (logical WAL), Kafka (KRaft: one node, or three with KAFKA_BROKERS=3) and Kafka
Connect with Debezium.

`sightscan stack up` starts what is not running, health-checks each part, migrates the warehouse and registers
the connector; a second `up` is a no-op. `down` stops everything and leaves no process behind; `down --purge`
also deletes the state (and with it the replication slot). State and logs live in SIGHTSCAN_HOME. A stack keeps
the number of Kafka nodes it was created with: later commands need not repeat KAFKA_BROKERS.

`recover_postgres` is what the supervisor (localsystem/stack/supervisor.py) runs when PostgreSQL died: the server
back (orphaned backends cleared, crash recovery done), then Debezium streaming again from its replication slot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass

import psycopg2

import connectors
from localsystem.stack.kafka import Connect, Kafka, recorded_brokers
from localsystem.stack.postgres import Postgres
from localsystem.stack.proc import StackError, require_free_port
from localsystem.stack.tools import find_java, resolve_jars
from sightscan import db
from sightscan.config import Settings

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
        self.settings = with_recorded_brokers(settings)
        self.progress = progress or (lambda msg: log.info(msg))
        self.postgres = Postgres(self.settings)
        self._kafka: list[Kafka] | None = None
        self._connect: Connect | None = None

    def _java_services(self) -> tuple[list[Kafka], Connect]:
        if self._kafka is None or self._connect is None:
            java = find_java()
            self.progress("resolving Kafka and Debezium jars (Maven Central, cached)")
            jars = resolve_jars(self.settings.cache)
            self._kafka = [Kafka(self.settings, java, jars["kafka"], node)
                           for node in range(1, self.settings.kafka_brokers + 1)]
            self._connect = Connect(self.settings, java, jars["kafka"], jars["debezium"].parent)
        return self._kafka, self._connect

    @property
    def kafka(self) -> Kafka:
        """Kafka node 1 (the only one unless KAFKA_BROKERS > 1)."""
        return self._java_services()[0][0]

    @property
    def kafka_nodes(self) -> list[Kafka]:
        return self._java_services()[0]

    def _start_kafka(self) -> None:
        # Every node first, then wait: a node is ready only once a quorum of controllers runs.
        for node in self.kafka_nodes:
            node.launch()
        for node in self.kafka_nodes:
            node.wait_ready()

    @property
    def connect(self) -> Connect:
        return self._java_services()[1]

    def up(self) -> dict[str, float]:
        """Start what is not running; returns seconds spent per step."""
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        self.settings.home.mkdir(parents=True, exist_ok=True)
        _, connect = self._java_services()
        timings["jars"] = time.monotonic() - t0
        self._preflight()

        steps: list[tuple[str, Callable[[], object]]] = [
            ("postgres", self.postgres.start),
            ("migrate", lambda: db.migrate(self.settings)),
            ("kafka", self._start_kafka),
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
        for node in self.kafka_nodes:
            if not node.running():
                wanted += [(node.port(), node.label, "KAFKA_BOOTSTRAP_SERVERS"),
                           (node.controller_port(), f"the controller of {node.label}", "KAFKA_CONTROLLER_PORT")]
        if not self.connect.running():
            wanted.append((s.connect_port, "Kafka Connect", "CONNECT_URL"))
        for port, what, env_name in wanted:
            require_free_port(port, what, env_name)

    def _register_connector(self) -> None:
        connectors.register(self.settings)
        with contextlib.suppress(OSError):  # Connect busy: wait_running says what it comes to
            if connectors.failed(connectors.status(self.settings)):  # e.g. it lost PostgreSQL for good before
                connectors.restart(self.settings, only_failed=True)
                time.sleep(1)  # Connect restarts it in the background; its old FAILED state may still show at once
        connectors.wait_running(self.settings)

    def slot_active(self) -> bool:
        """Whether Debezium streams from its replication slot now (a walsender holds the slot)."""
        with db.transaction(self.settings) as cur:
            cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (connectors.SLOT_NAME,))
            row = cur.fetchone()
        return bool(row and row[0])

    def recover_postgres(self, resume_timeout: float = 30) -> dict[str, float]:
        """Bring back a PostgreSQL that died: its orphaned backends cleared, the server started (it accepts
        connections once crash recovery is done), then Debezium streaming again from its replication slot, which
        survives a crash (it is on disk). Debezium retries a lost connection by itself, but only every
        retriable.restart.connector.wait.ms (10 s by default), so its task is restarted through Connect: it resumes
        once Connect has replaced it (Connect gives a task that waits to retry its 5 s graceful shutdown first).
        Returns the seconds each step took; Debezium not back within `resume_timeout` is logged, not raised (a task
        that failed is restarted by the supervisor's debezium unit)."""
        timings: dict[str, float] = {}
        started = time.monotonic()
        self.postgres.start()
        timings["postgres"] = time.monotonic() - started
        if not self.connect.running():
            return timings
        try:
            if not self.slot_active():
                connectors.restart(self.settings, only_failed=False)
            deadline = time.monotonic() + resume_timeout
            while not self.slot_active():
                if time.monotonic() > deadline:
                    log.warning("Debezium has not resumed from its replication slot yet",
                                extra={"waited_s": resume_timeout})
                    return timings
                time.sleep(0.2)
        except (OSError, urllib.error.URLError, connectors.ConnectorError, psycopg2.Error) as exc:
            log.warning("Debezium not resumed after PostgreSQL's restart", extra={"error": str(exc)})
            return timings
        timings["debezium"] = time.monotonic() - started
        return timings

    def down(self, purge: bool = False) -> None:
        """Stop Connect, Kafka, PostgreSQL (in that order); with purge, delete all state."""
        if self.connect.running() or any(n.running() for n in self.kafka_nodes) or self.postgres.running():
            self.progress("stopping the stack")
        self.connect.stop()
        for node in self.kafka_nodes:
            node.stop()
        self.postgres.stop()
        if purge:
            self.progress(f"deleting {self.settings.home}")
            shutil.rmtree(self.settings.home, ignore_errors=True)

    def status(self) -> list[ServiceStatus]:
        out = [ServiceStatus("postgres", self.postgres.running(), self.postgres.healthy(),
                             self.postgres.describe())]
        for svc in (*self.kafka_nodes, self.connect):
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


def with_recorded_brokers(settings: Settings) -> Settings:
    """The settings with the number of Kafka nodes the stack in SIGHTSCAN_HOME was created with, when
    KAFKA_BROKERS is left at its default; a different explicit number is refused (a cluster cannot change size)."""
    recorded = recorded_brokers(settings)
    if recorded is None or recorded == settings.kafka_brokers:
        return settings
    if settings.kafka_brokers != 1:
        raise StackError(f"the stack in {settings.home} was created with {recorded} Kafka node(s), not "
                         f"KAFKA_BROKERS={settings.kafka_brokers}; use it as it is, or delete it first with "
                         "`sightscan down --purge`")
    return dataclasses.replace(settings, kafka_brokers=recorded)
