"""Process plumbing for the local stack: pid files, ports, detached start, graceful stop, waiting."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil


class StackError(RuntimeError):
    """The local stack cannot start or stop; the message says why and what to do."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def who_listens(port: int) -> str:
    """A short description of the process listening on a port, when we can see it."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({' '.join(proc.cmdline()[:3])[:120]})"
    return "another process"


def require_free_port(port: int, what: str, env_name: str) -> None:
    if port_in_use(port):
        raise StackError(
            f"port {port} for {what} is taken by {who_listens(port)}. Stop that process, or choose another port "
            f"with {env_name}=<port>."
        )


class PidFile:
    """A pid file plus a marker that must appear in the process's command line (or, for Python services, as the
    value of its SIGHTSCAN_HOME), so a recycled pid is not taken for ours."""

    def __init__(self, path: Path, marker: str) -> None:
        self.path, self.marker = path, marker

    def process(self) -> psutil.Process | None:
        try:
            pid = int(self.path.read_text().split()[0])
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if self.marker in " ".join(proc.cmdline()) or proc.environ().get("SIGHTSCAN_HOME") == self.marker:
                return proc
        except (OSError, ValueError, IndexError, psutil.Error):
            pass
        return None

    def write(self, pid: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{pid}\n")

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def start_detached(cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                   cwd: Path | None = None) -> subprocess.Popen:
    """Start a process in its own session so it outlives the command that started it; output goes to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)


def stop_process(proc: psutil.Process, timeout: float = 30.0, children_too: bool = True) -> None:
    """SIGTERM, wait, then SIGKILL the process and (unless told not to) any children it left."""
    with contextlib.suppress(psutil.Error):
        children = proc.children(recursive=True) if children_too else []
        proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs([proc], timeout=timeout)
        for p in alive + [c for c in children if c.is_running()]:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive + children, timeout=5)


def wait_for(check: Callable[[], bool], timeout: float, what: str, log_path: Path | None = None,
             alive: Callable[[], bool] | None = None) -> None:
    """Poll `check` until true. Fail early if `alive` says the process died, quoting its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        if alive is not None and not alive():
            raise StackError(f"{what} exited during start-up.{_log_tail(log_path)}")
        time.sleep(0.25)
    raise StackError(f"{what} was not ready after {timeout:.0f} s.{_log_tail(log_path)}")


def _log_tail(log_path: Path | None, lines: int = 25) -> str:
    if log_path is None or not log_path.exists():
        return ""
    tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    return f"\nLast lines of {log_path}:\n" + "\n".join(tail)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
