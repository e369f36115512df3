"""The supervisor `sightscan up` leaves behind: each service SIGKILLed in turn comes back, with backoff; a service
that cannot start is given up loudly, and `sightscan status` shows restarts and give-ups. A failed Debezium task is
restarted through Connect's REST API; a crashed PostgreSQL's orphaned backends are cleared, and only its own
(PostgreSQL SIGKILLed mid-stream, with the whole pipeline: tests/system/test_postgres_crash.py)."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg2
import pytest

from localsystem import cli
from localsystem.stack import LocalStack
from localsystem.stack.postgres import Postgres
from localsystem.stack.proc import StackError
from localsystem.stack.services import services, start_all, stop_all, supervisor
from localsystem.stack.settings import SystemSettings
from localsystem.stack.supervisor import DebeziumUnit, Supervisor, read_state
from sightscan.config import Settings
from tests.support.stack import ephemeral_settings, free_port
from tests.support.waiting import wait_until

# The supervisor's own logic, on units that only pretend to be processes ---------------------------------------


class FakeUnit:
    def __init__(self, name: str, starts_fail: int = 0, error: type[Exception] = StackError) -> None:
        self.name, self.log_path, self.alive, self.starts, self.starts_fail = name, Path("/dev/null"), True, 0, 0
        self.starts_fail, self.error = starts_fail, error

    def running(self) -> bool:
        return self.alive

    def start(self) -> None:
        self.starts += 1
        if self.starts_fail:
            self.starts_fail -= 1
            raise self.error(f"{self.name} exited during start-up.\nLast lines of its log: …")
        self.alive = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _supervisor(tmp_path: Path, units: list[FakeUnit], **system: float) -> tuple[Supervisor, Clock]:
    clock = Clock()
    settings = Settings.from_env({"SIGHTSCAN_HOME": str(tmp_path)})
    values = {"max_crashes": 3, "crash_window_s": 60.0, "backoff_s": 1.0, "backoff_max_s": 4.0, "poll_s": 0.1}
    return Supervisor(settings, SystemSettings(**{**values, **system}), lambda: units, clock), clock


def test_a_crash_is_restarted_after_the_backoff_and_counted(tmp_path):
    unit = FakeUnit("labeller")
    sup, clock = _supervisor(tmp_path, [unit])
    sup.check_once()
    assert sup.records["labeller"].state == "running" and unit.starts == 0

    unit.alive = False
    sup.check_once()
    assert sup.records["labeller"].state == "waiting" and unit.starts == 0  # not before the backoff
    clock.now += 0.5
    sup.check_once()
    assert unit.starts == 0
    clock.now += 0.6
    sup.check_once()
    assert unit.starts == 1 and unit.alive
    rec = sup.records["labeller"]
    assert (rec.state, rec.restarts, rec.last_error) == ("running", 1, "exited")
    saved = json.loads((tmp_path / "run" / "supervisor.json").read_text())
    assert saved["units"]["labeller"]["restarts"] == 1


def test_backoff_doubles_up_to_its_cap_and_repeated_crashes_are_given_up(tmp_path, caplog):
    unit = FakeUnit("trainer", starts_fail=10)
    sup, clock = _supervisor(tmp_path, [unit])
    unit.alive = False
    waits = []
    for _ in range(200):
        sup.check_once()
        rec = sup.records["trainer"]
        if rec.state == "gave-up":
            break
        waits.append(rec.next_try - clock.now)
        clock.now = rec.next_try
    assert waits == [1.0, 2.0, 4.0]          # after crash 1, 2 and 3; the fourth within the window gives up
    assert rec.state == "gave-up" and unit.starts == 3 and rec.restarts == 0
    assert rec.last_error.startswith("failed to restart: trainer exited during start-up")
    assert "giving up on it" in caplog.text
    clock.now += 3600
    sup.check_once()
    assert unit.starts == 3                  # given up stays given up until the next `sightscan up`


def test_crashes_older_than_the_window_do_not_count(tmp_path):
    unit = FakeUnit("crawler")
    sup, clock = _supervisor(tmp_path, [unit], max_crashes=2, crash_window_s=10.0)
    for _ in range(5):                       # a crash every 20 s: never two within 10 s
        unit.alive = False
        sup.check_once()
        clock.now += 1.0
        sup.check_once()
        assert unit.alive
        clock.now += 19.0
    assert sup.records["crawler"].restarts == 5 and sup.records["crawler"].state == "running"


def test_a_unit_started_by_someone_else_while_waiting_is_running_again(tmp_path):
    unit = FakeUnit("gateway")
    sup, clock = _supervisor(tmp_path, [unit])
    unit.alive = False
    sup.check_once()
    unit.alive = True                        # e.g. a new `sightscan up`
    sup.check_once()
    clock.now += 10
    sup.check_once()
    assert sup.records["gateway"].state == "running" and unit.starts == 0


def test_a_restart_that_fails_with_any_error_is_a_crash_and_the_others_are_still_watched(tmp_path, caplog):
    odd, plain = FakeUnit("postgres", starts_fail=1, error=RuntimeError), FakeUnit("labeller")
    sup, clock = _supervisor(tmp_path, [odd, plain])
    odd.alive = plain.alive = False
    sup.check_once()
    clock.now += 1.0
    sup.check_once()                         # postgres's restart raises: counted, not the supervisor's end
    assert plain.alive and sup.records["labeller"].restarts == 1
    rec = sup.records["postgres"]
    assert rec.state == "waiting" and rec.last_error.startswith("failed to restart: postgres exited during start-up")
    assert "restarting postgres failed" in caplog.text
    clock.now += 2.0
    sup.check_once()
    assert odd.alive and sup.records["postgres"].restarts == 1


# Debezium: a FAILED task restarted through Kafka Connect's REST API (a local server that speaks it) -------------


class FakeConnect(http.server.ThreadingHTTPServer):
    """Connect's REST API for one connector: its status, and POST .../restart (which makes it RUNNING)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeConnectHandler)
        self.task_state, self.answering, self.restarts = "RUNNING", True, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class FakeConnectHandler(http.server.BaseHTTPRequestHandler):
    server: FakeConnect

    def _reply(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if not self.server.answering:
            self._reply(503, {"error_code": 503, "message": "rebalancing"})
        elif self.path == "/connectors/sightscan-postgres/status":
            task = {"id": 0, "state": self.server.task_state}
            if task["state"] == "FAILED":
                task["trace"] = "org.postgresql.util.PSQLException: Connection refused"
            self._reply(200, {"name": "sightscan-postgres", "connector": {"state": "RUNNING"}, "tasks": [task]})
        else:
            self._reply(404, {"error_code": 404})

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.server.restarts.append(self.path)
        self.server.task_state = "RUNNING"
        self._reply(202, {})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def fake_connect() -> Iterator[FakeConnect]:
    server = FakeConnect()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_a_failed_debezium_task_is_restarted_through_connects_rest_api(tmp_path, fake_connect):
    settings = Settings.from_env({"SIGHTSCAN_HOME": str(tmp_path), "CONNECT_URL": fake_connect.url})
    sup, clock = _supervisor(tmp_path, [])
    sup.units = lambda: [DebeziumUnit(settings)]
    sup.check_once()
    fake_connect.answering = False           # Connect itself away: the connect unit's business, not this one's
    sup.check_once()
    assert sup.records["debezium"].state == "running" and not fake_connect.restarts
    fake_connect.answering, fake_connect.task_state = True, "FAILED"
    sup.check_once()
    assert sup.records["debezium"].state == "waiting"
    clock.now += 1.0
    sup.check_once()
    assert fake_connect.restarts == ["/connectors/sightscan-postgres/restart?includeTasks=true&onlyFailed=true"]
    rec = sup.records["debezium"]
    assert (rec.state, rec.restarts) == ("running", 1)


# PostgreSQL's orphaned backends: its own cleared, another cluster's left alone ------------------------------------


def _busy_backend(pg: Postgres) -> tuple[threading.Thread, list[BaseException]]:
    """A backend that computes for minutes: it does not notice its postmaster's death until it is done."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            conn = pg._connect("postgres")
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM generate_series(1, 100000000000)")
        except psycopg2.Error as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _backend_pids(pg: Postgres) -> set[int]:
    return {p.pid for p in pg.postmaster().children()}


def _lasting_pids(pg: Postgres) -> set[int]:
    """The postmaster and the processes that live as long as it does (not a connection's backend, not an
    autovacuum worker)."""
    lasting = ("checkpointer", "background writer", "walwriter", "autovacuum launcher", "logical replication launcher")
    postmaster = pg.postmaster()
    return {postmaster.pid} | {p.pid for p in postmaster.children()
                               if any(name in " ".join(p.cmdline()) for name in lasting)}


def _wait_busy(pg: Postgres) -> int:
    """The pid of the cluster's backend running the long query."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conn = pg._connect("postgres")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT count(*) FROM generate%'")
                row = cur.fetchone()
        finally:
            conn.close()
        if row:
            return row[0]
        time.sleep(0.2)
    raise AssertionError("the long query never started")


def test_a_killed_postmasters_orphans_are_cleared_and_another_clusters_backends_are_not(tmp_path):
    ours, theirs = (Postgres(ephemeral_settings(tmp_path / name)) for name in ("ours", "theirs"))
    try:
        for pg in (ours, theirs):
            pg.start()
        our_client, our_errors = _busy_backend(ours)
        _busy_backend(theirs)
        our_busy, their_busy = _wait_busy(ours), _wait_busy(theirs)
        theirs_before = _backend_pids(theirs) | {theirs.postmaster().pid}
        theirs_lasting = _lasting_pids(theirs) | {their_busy}
        assert ours.orphans() == []              # a live postmaster has no orphans

        postmaster = ours.postmaster()
        postmaster.kill()
        _wait(lambda: not ours.running(), 10, "the postmaster gone")
        orphans = {p.pid for p in ours.orphans()}
        assert our_busy in orphans and not orphans & theirs_before
        assert theirs.orphans() == []

        ours.start()                             # clears the orphans, then crash recovery
        assert ours.healthy() and ours.postmaster().pid != postmaster.pid
        assert not psutil.pid_exists(our_busy) or psutil.Process(our_busy).status() == psutil.STATUS_ZOMBIE
        our_client.join(10)
        assert our_errors, "the orphan's client should have lost its connection"
        assert theirs.healthy() and psutil.Process(their_busy).is_running()
        # (Its passing processes, a connection's backend or an autovacuum worker, may end on their own meanwhile.)
        assert theirs_lasting <= {p.pid for p in psutil.process_iter()}, "another cluster's process was killed"
    finally:
        for pg in (ours, theirs):
            with contextlib.suppress(StackError, OSError):
                pg.stop()
    assert not ours.running() and not theirs.running() and ours.orphans() == []


# The real thing: every service and the stack's JVMs SIGKILLed in turn --------------------------------------------


def _wait(check: Callable[[], object], timeout: float, what: str) -> None:
    wait_until(check, timeout, what, interval=0.3, tolerate=True)


def _status(settings: Settings, capsys) -> tuple[int, dict[str, str]]:
    capsys.readouterr()
    code = cli._print_status(settings, LocalStack(settings))
    lines = capsys.readouterr().out.splitlines()
    return code, {line.split()[0]: line for line in lines}


@pytest.fixture()
def supervised(stack: LocalStack, monkeypatch):
    """The whole system on the session's stack, as `sightscan up` leaves it: services plus the supervisor."""
    monkeypatch.setenv("DOS_PORT", str(free_port()))
    monkeypatch.setenv("SUPERVISOR_BACKOFF_S", "0.5")
    monkeypatch.setenv("SUPERVISOR_MAX_CRASHES", "2")
    monkeypatch.setenv("SUPERVISOR_POLL_S", "0.3")
    start_all(stack.settings, progress=print)
    try:
        yield stack
    finally:
        stop_all(stack.settings)


def test_each_service_sigkilled_in_turn_is_restarted(supervised: LocalStack, capsys):
    settings = supervised.settings
    units = {svc.name: svc for svc in services(settings)}
    units.update({"kafka": supervised.kafka, "connect": supervised.connect})
    assert set(units) >= {"streams", "crawler", "labeller", "trainer", "gateway", "kafka", "connect"}
    for name, unit in units.items():
        old = unit.pidfile.process()
        assert old is not None, name
        old.kill()                            # SIGKILL: no clean shutdown, no goodbye
        old.wait(10)
        _wait(lambda u=unit, o=old: (p := u.pidfile.process()) is not None and p.pid != o.pid and u.healthy()
              and read_state(settings)[u.name]["state"] == "running", 150, f"{name} restarted")
        assert read_state(settings)[name]["restarts"] == 1, (name, read_state(settings)[name])
    code, rows = _status(settings, capsys)
    for name in units:
        assert "restarts 1" in rows[name], rows[name]
    assert "healthy" in rows["supervisor"]
    _wait(lambda: _status(settings, capsys)[0] == 0, 60, "every part healthy after the kills")
    # A new `up` replaces the supervisor; what the old one restarted (its children) keeps running.
    pids = {name: unit.pidfile.process().pid for name, unit in units.items()}
    start_all(settings, progress=print)
    assert {name: unit.pidfile.process().pid for name, unit in units.items()} == pids
    assert supervised.kafka.healthy() and supervised.connect.healthy()


def test_a_service_that_cannot_start_is_given_up_and_up_retries_it(supervised: LocalStack, capsys):
    settings = supervised.settings
    gateway = next(svc for svc in services(settings) if svc.name == "gateway")
    with socket.socket() as squatter:
        proc = gateway.pidfile.process()
        proc.kill()
        proc.wait(10)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", gateway.spec.port))  # its port taken: each restart fails at once
        squatter.listen()
        _wait(lambda: read_state(settings)["gateway"]["state"] == "gave-up", 60, "the gateway given up")
        code, rows = _status(settings, capsys)
        assert code == 3 and rows["gateway"].split()[1] == "gave-up", rows["gateway"]
        assert f"port {gateway.spec.port}" in rows["gateway"] and "3 crash(es)" in rows["gateway"]
        log = (settings.home / "logs" / "supervisor.log").read_text()
        assert "giving up on it" in log
    start_all(settings, progress=print)       # `sightscan up` again: the gateway, and a fresh supervisor
    assert gateway.healthy() and supervisor(settings).running()
    _wait(lambda: read_state(settings).get("gateway", {}).get("state") == "running", 30, "a fresh supervisor")
