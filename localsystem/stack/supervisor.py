"""The supervisor `sightscan up` leaves running: it restarts a crashed service, with backoff, and gives up loudly.

It watches the stack's PostgreSQL, Kafka broker(s) and Kafka Connect, the Debezium connector's tasks, and
SightScan's services (stream worker, crawler, labeller, trainer, gateway, and the demo's web sources while a demo
runs), every SUPERVISOR_POLL_S. A unit found dead is restarted after SUPERVISOR_BACKOFF_S, doubling with each crash
in the last SUPERVISOR_CRASH_WINDOW_S (at most SUPERVISOR_BACKOFF_MAX_S); a restart counts only once the unit is
healthy again. After SUPERVISOR_MAX_CRASHES crashes in the window the unit is given up: an error in the log,
"gave-up" in `sightscan status`, and no more restarts until the next `sightscan up`.

PostgreSQL is dead when its postmaster is; it comes back through `LocalStack.recover_postgres` (orphaned backends
of the dead postmaster cleared, crash recovery, Debezium resumed from its replication slot). Debezium is dead when
Connect reports its connector or a task FAILED; it is restarted through Connect's REST API.

State for `sightscan status`: SIGHTSCAN_HOME/run/supervisor.json, rewritten whenever it changes.
Run it as `python -m localsystem.stack.supervisor` (what `up` does, detached, logging to logs/supervisor.log).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import connectors
from localsystem.stack import LocalStack
from localsystem.stack.proc import StackError
from localsystem.stack.services import services, supervisor
from localsystem.stack.settings import SystemSettings
from sightscan import log as slog
from sightscan.config import Settings

log = logging.getLogger("sightscan.supervisor")


class Unit(Protocol):
    """What the supervisor needs of a service: PythonService and the stack's JVM services both fit."""
    name: str
    log_path: Path

    def running(self) -> bool: ...

    def start(self) -> None: ...


@dataclass
class UnitRecord:
    """What `status` shows of one unit: its state, restarts since `up`, and the crashes that count now."""
    state: str = "running"          # running | waiting (to restart) | restarting | gave-up
    restarts: int = 0
    crashes: list[float] = field(default_factory=list)  # wall-clock times of crashes within the window
    next_try: float | None = None   # wall-clock time of the next restart
    last_crash: float | None = None
    last_error: str = ""


class Supervisor:
    def __init__(self, settings: Settings, system: SystemSettings,
                 units: Callable[[], Iterable[Unit]], clock: Callable[[], float] = time.time) -> None:
        self.settings, self.system, self.units, self.clock = settings, system, units, clock
        self.records: dict[str, UnitRecord] = {}
        self.state_path = state_path(settings)

    def check_once(self) -> None:
        """One pass: note what died, restart what is due, save the state if it changed."""
        before = json.dumps(self.snapshot(), sort_keys=True)
        for unit in self.units():
            self._check(unit)
        if json.dumps(self.snapshot(), sort_keys=True) != before:
            self.save()

    def _check(self, unit: Unit) -> None:
        rec = self.records.setdefault(unit.name, UnitRecord())
        now = self.clock()
        if rec.state == "gave-up":
            return
        if unit.running():
            if rec.state != "running":  # started by someone else (a new `up`) while we waited
                rec.state, rec.next_try = "running", None
            return
        if rec.state == "running":
            self._crashed(unit, rec, now, "exited")
        if rec.state == "waiting" and rec.next_try is not None and now >= rec.next_try:
            self._restart(unit, rec)

    def _crashed(self, unit: Unit, rec: UnitRecord, now: float, why: str) -> None:
        rec.crashes = [t for t in rec.crashes if now - t < self.system.crash_window_s] + [now]
        rec.last_crash, rec.last_error = now, why
        if len(rec.crashes) > self.system.max_crashes:
            rec.state, rec.next_try = "gave-up", None
            log.error(f"{unit.name} crashed {len(rec.crashes)} times within {self.system.crash_window_s:g} s: "
                      f"giving up on it. Read {unit.log_path}, fix the cause, then run `sightscan up`.",
                      extra={"service": unit.name, "crashes": len(rec.crashes), "last_error": why})
            return
        delay = min(self.system.backoff_max_s, self.system.backoff_s * 2 ** (len(rec.crashes) - 1))
        rec.state, rec.next_try = "waiting", now + delay
        log.warning(f"{unit.name} {why}; restarting it in {delay:g} s",
                    extra={"service": unit.name, "crashes_in_window": len(rec.crashes), "log": str(unit.log_path)})

    def _restart(self, unit: Unit, rec: UnitRecord) -> None:
        rec.state = "restarting"
        self.save()
        log.info(f"restarting {unit.name}", extra={"service": unit.name})
        try:
            unit.start()
        except Exception as exc:  # whatever it is, the supervisor goes on watching the others
            if not isinstance(exc, (StackError, OSError)):
                log.exception(f"restarting {unit.name} failed", extra={"service": unit.name})
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._crashed(unit, rec, self.clock(), f"failed to restart: {first_line}")
            return
        rec.state, rec.next_try = "running", None
        rec.restarts += 1
        log.info(f"{unit.name} restarted and healthy", extra={"service": unit.name, "restarts": rec.restarts})

    def snapshot(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "units": {name: asdict(rec) for name, rec in self.records.items()}}

    def save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot(), indent=1))
        tmp.replace(self.state_path)  # atomic: `status` never reads half a file

    def run(self) -> None:
        log.info("supervising", extra={"units": [u.name for u in self.units()]})
        self.save()
        while True:
            self.check_once()
            reap_children()
            time.sleep(self.system.poll_s)


def reap_children() -> None:
    """Collect the exit status of services this process restarted (their parent), so none stays a zombie."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def state_path(settings: Settings) -> Path:
    return settings.home / "run" / "supervisor.json"


def read_state(settings: Settings) -> dict[str, dict[str, Any]]:
    """The units' records as the running supervisor last wrote them ({} when none runs)."""
    if not supervisor(settings).running():
        return {}
    try:
        return json.loads(state_path(settings).read_text()).get("units", {})
    except (OSError, ValueError):
        return {}


class PostgresUnit:
    """The stack's PostgreSQL: dead when its postmaster is; restarted by `LocalStack.recover_postgres`."""
    name = "postgres"

    def __init__(self, stack: LocalStack) -> None:
        self.stack, self.log_path = stack, stack.postgres.log_path

    def running(self) -> bool:
        return self.stack.postgres.running()

    def start(self) -> None:
        timings = self.stack.recover_postgres()
        log.info("PostgreSQL recovered", extra={"seconds": {k: round(v, 2) for k, v in timings.items()}})


class DebeziumUnit:
    """The Debezium connector in Kafka Connect: dead when Connect reports it or one of its tasks FAILED (a task
    retries a lost database by itself; one that gave up stays FAILED until restarted). Connect not answering is
    the connect unit's business, not this one's."""
    name = "debezium"

    def __init__(self, settings: Settings) -> None:
        self.settings, self.log_path = settings, settings.home / "logs" / "connect.log"

    def running(self) -> bool:
        try:
            return not connectors.failed(connectors.status(self.settings))
        except Exception:  # noqa: BLE001 - no answer tells nothing about the connector
            return True

    def start(self) -> None:
        try:
            connectors.restart(self.settings, only_failed=True)
            time.sleep(1)  # Connect restarts it in the background; its old FAILED state may still show at once
            connectors.wait_running(self.settings, timeout=60)
        except connectors.ConnectorError as exc:
            raise StackError(str(exc)) from None


def stack_units(stack: LocalStack) -> list[Unit]:
    """The stack's parts in the order a pass checks them: PostgreSQL first, Debezium after Connect."""
    return [PostgresUnit(stack), *stack.kafka_nodes, stack.connect, DebeziumUnit(stack.settings)]


def supervised_units(settings: Settings) -> Callable[[], list[Unit]]:
    """The units, looked up anew on each pass: a demo started later adds its web sources."""
    stack = LocalStack(settings, progress=lambda msg: log.info(msg))
    parts = stack_units(stack)
    return lambda: [*parts, *services(settings)]


def main() -> int:
    settings = Settings.from_env()
    state_path(settings).unlink(missing_ok=True)  # counts start again with each `up`
    slog.setup(settings.log_level, settings.log_format)
    system = SystemSettings.from_env()

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)  # also interrupts a restart in progress: `down` stops what it started

    signal.signal(signal.SIGTERM, on_term)
    Supervisor(settings, system, supervised_units(settings)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
