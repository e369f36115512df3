"""The supervisor `sightscan up` leaves behind: each service SIGKILLed in turn comes back, with backoff; a service
that cannot start is given up loudly, and `sightscan status` shows restarts and give-ups."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path

import pytest

from localsystem import cli
from localsystem.stack import LocalStack
from localsystem.stack.proc import StackError
from localsystem.stack.services import services, start_all, stop_all, supervisor
from localsystem.stack.settings import SystemSettings
from localsystem.stack.supervisor import Supervisor, read_state
from sightscan.config import Settings
from tests.support.stack import free_port

# The supervisor's own logic, on units that only pretend to be processes ---------------------------------------


class FakeUnit:
    def __init__(self, name: str, starts_fail: int = 0) -> None:
        self.name, self.log_path, self.alive, self.starts, self.starts_fail = name, Path("/dev/null"), True, 0, 0
        self.starts_fail = starts_fail

    def running(self) -> bool:
        return self.alive

    def start(self) -> None:
        self.starts += 1
        if self.starts_fail:
            self.starts_fail -= 1
            raise StackError(f"{self.name} exited during start-up.\nLast lines of its log: …")
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


# The real thing: every service and the stack's JVMs SIGKILLed in turn --------------------------------------------


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.3)
    raise AssertionError(f"timed out: {what}")


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
