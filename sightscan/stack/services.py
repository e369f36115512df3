"""SightScan's own services as local processes beside the stack: stream worker, crawler, labeller, trainer,
gateway."""

from __future__ import annotations

import logging
import os
import secrets
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from sightscan.config import Settings
from sightscan.stack.proc import PidFile, require_free_port, start_detached, stop_process, wait_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: tuple[str, ...]


SERVICES = (
    ServiceSpec("streams", ("-m", "streams", "worker", "-l", "info")),
    ServiceSpec("crawler", ("-m", "producers", "serve")),
    ServiceSpec("labeller", ("-m", "consumers", "serve")),
    ServiceSpec("trainer", ("-m", "trainer", "serve")),
    ServiceSpec("gateway", ("-m", "gateway.app")),
)


def gateway_port() -> int:
    return int(os.environ.get("DOS_PORT", "8080"))


class PythonService:
    def __init__(self, settings: Settings, spec: ServiceSpec) -> None:
        self.settings, self.spec, self.name = settings, spec, spec.name
        self.log_path = settings.home / "logs" / f"{spec.name}.log"
        self.pidfile = PidFile(settings.home / "run" / f"{spec.name}.pid", str(settings.home))

    def running(self) -> bool:
        return self.pidfile.process() is not None

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.settings.env(), "SIGHTSCAN_API_TOKEN": api_token(self.settings),
                "PYTHONUNBUFFERED": "1"}

    def healthy(self) -> bool:
        if not self.running():
            return False
        if self.name == "gateway":
            with urllib.request.urlopen(f"http://127.0.0.1:{gateway_port()}/healthz", timeout=2) as resp:
                return resp.status == 200
        return True

    def start(self) -> None:
        if self.running():
            return
        if self.name == "gateway":
            require_free_port(gateway_port(), "the gateway", "DOS_PORT")
        proc = start_detached([sys.executable, *self.spec.argv], self.log_path, env=self.env())
        self.pidfile.write(proc.pid)
        started = time.monotonic()
        # Services have no readiness probe but the gateway: they must at least survive their start-up.
        wait_for(lambda: self.healthy() and time.monotonic() - started > 3, 60, self.name, self.log_path,
                 alive=lambda: proc.poll() is None)

    def stop(self) -> None:
        proc = self.pidfile.process()
        if proc is not None:
            stop_process(proc)
        self.pidfile.clear()


def api_token(settings: Settings) -> str:
    """SIGHTSCAN_API_TOKEN, or one generated once for the local stack and kept in SIGHTSCAN_HOME/api-token."""
    if os.environ.get("SIGHTSCAN_API_TOKEN"):
        return os.environ["SIGHTSCAN_API_TOKEN"]
    path = settings.home / "api-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def services(settings: Settings) -> list[PythonService]:
    return [PythonService(settings, spec) for spec in SERVICES]


def start_all(settings: Settings, progress: Callable[[str], None]) -> None:
    for svc in services(settings):
        progress(f"service {svc.name}…")
        svc.start()
        progress(f"service {svc.name} running (log: {svc.log_path})")


def stop_all(settings: Settings) -> None:
    for svc in reversed(services(settings)):
        svc.stop()
