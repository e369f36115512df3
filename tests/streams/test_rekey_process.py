"""The rekey stage's child process lives and dies with its worker: a worker SIGKILLed alone (not its process group)
takes its rekey process with it, so no orphan keeps the rekey group's partitions; a rekey process that dies stops
its worker loudly, so no worker runs on without the stage that feeds it."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

from sightscan.config import Settings
from tests.support.streams import Worker


def _rekey_child(worker: Worker, timeout: float = 60) -> int:
    """The pid of the worker's rekey process, once it runs."""
    assert worker.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{worker.proc.pid}/task/{worker.proc.pid}/children")
        for pid in children.read_text().split() if children.exists() else []:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():  # not the resource tracker
                return int(pid)
        assert worker.alive(), worker.log_path.read_text()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"no rekey process under the worker after {timeout} s")


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":  # exited, not yet reaped by its (new) parent
            return True
        time.sleep(0.2)
    return False


def test_a_sigkilled_worker_takes_its_rekey_process_with_it(settings: Settings, tmp_path: Path) -> None:
    worker = Worker(settings, f"rekey-proc-{uuid.uuid4().hex[:8]}", tmp_path / "worker.log").start()
    try:
        child = _rekey_child(worker)
        assert worker.proc is not None
        os.kill(worker.proc.pid, signal.SIGKILL)  # the worker alone: its child gets no signal from us
        worker.proc.wait(10)
        assert _gone(child, 10), "the rekey process outlived its worker"
        assert "the worker is gone" in worker.log_path.read_text()
    finally:
        worker.kill()


def test_a_dead_rekey_process_stops_its_worker(settings: Settings, tmp_path: Path) -> None:
    worker = Worker(settings, f"rekey-proc-{uuid.uuid4().hex[:8]}", tmp_path / "worker.log").start()
    try:
        os.kill(_rekey_child(worker), signal.SIGKILL)
        assert worker.proc is not None
        code = worker.proc.wait(90)
        assert code != 0
        assert "the rekey process ended with exit code -9" in worker.log_path.read_text()
    finally:
        worker.kill()
