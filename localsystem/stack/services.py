"""SightScan's own services as local processes beside the stack: stream worker, crawler, labeller, trainer,
gateway; and, while `sightscan demo` runs the system, the demo's local web sources.

The demo leaves its state in SIGHTSCAN_HOME/run/demo.json (the rendered city it serves, its port, and the settings
it gives every service). While that file exists the web sources are one of the services (`status` lists them,
`up` starts them, `down` stops them and removes the file) and each service starts with the demo's settings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from gateway.settings import GatewaySettings
from localsystem.stack.proc import PidFile, require_free_port, start_detached, stop_process, wait_for
from sightscan.config import ConfigError, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: tuple[str, ...]
    port: int | None = None  # the port it serves on: must be free before it starts
    port_env: str = ""       # what chooses that port, named when the port is taken
    probe: str = ""          # an HTTP path on that port that answers 200 once it serves
    stop_children: bool = True  # stopping it also stops what it started (not the supervisor's restarted services)


SERVICES = (
    ServiceSpec("streams", ("-m", "streams", "worker", "-l", "info")),
    ServiceSpec("crawler", ("-m", "producers", "serve")),
    ServiceSpec("labeller", ("-m", "consumers", "serve")),
    ServiceSpec("trainer", ("-m", "trainer", "serve")),
    ServiceSpec("gateway", ("-m", "gateway.app")),
)


DEMO_SOURCES = "websources"

# Restarts a crashed service (localsystem/stack/supervisor.py); `up` starts it last, `down` stops it first.
SUPERVISOR = ServiceSpec("supervisor", ("-m", "localsystem.stack.supervisor"), stop_children=False)


def gateway_port() -> int:
    """The gateway's DOS_PORT; the local system probes and prints it, so 0 (any free port) is refused here."""
    port = GatewaySettings.from_env().port
    if port == 0:
        raise ConfigError("DOS_PORT=0 picks a free port for a gateway run alone; the local system needs a fixed one")
    return port


def demo_state_path(settings: Settings) -> Path:
    return settings.home / "run" / "demo.json"


def demo_state(settings: Settings) -> dict[str, Any] | None:
    """What `sightscan demo` left running here ({"city", "folder", "port", "clip", "env"}), or None."""
    try:
        return json.loads(demo_state_path(settings).read_text())
    except (OSError, ValueError):
        return None


def write_demo_state(settings: Settings, state: Mapping[str, Any]) -> None:
    path = demo_state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(state), indent=1))


def demo_sources_spec(state: Mapping[str, Any]) -> ServiceSpec:
    """The demo's web sources: a synthetic city on local Wikidata, Commons and Maps (localsystem.demo.web_sources)."""
    port = int(state["port"])
    return ServiceSpec(DEMO_SOURCES, ("-m", "localsystem.demo.web_sources", "--folder", str(state["folder"]),
                                      "--city", str(state["city"]), "--port", str(port)),
                       port=port, port_env="DEMO_SOURCES_PORT", probe="/robots.txt")


class PythonService:
    def __init__(self, settings: Settings, spec: ServiceSpec) -> None:
        self.settings, self.spec, self.name = settings, spec, spec.name
        self.log_path = settings.home / "logs" / f"{spec.name}.log"
        self.pidfile = PidFile(settings.home / "run" / f"{spec.name}.pid", str(settings.home))

    def running(self) -> bool:
        return self.pidfile.process() is not None

    def env(self) -> dict[str, str]:
        demo = demo_state(self.settings) or {}
        return {**os.environ, **self.settings.env(), **demo.get("env", {}),
                "SIGHTSCAN_API_TOKEN": api_token(self.settings), "PYTHONUNBUFFERED": "1"}

    def started_with(self, env: Mapping[str, str]) -> bool:
        """Whether the running process has these environment variables (False when it does not run)."""
        proc = self.pidfile.process()
        try:
            return proc is not None and all(proc.environ().get(k) == v for k, v in env.items())
        except psutil.Error:
            return False

    def healthy(self) -> bool:
        if not self.running():
            return False
        if self.spec.probe:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.spec.port}{self.spec.probe}", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        return True

    def start(self) -> None:
        if self.running():
            return
        if self.spec.port is not None:
            require_free_port(self.spec.port, f"the {self.name} service", self.spec.port_env)
        proc = start_detached([sys.executable, *self.spec.argv], self.log_path, env=self.env())
        self.pidfile.write(proc.pid)
        started = time.monotonic()
        # Services have no readiness probe but the gateway: they must at least survive their start-up.
        wait_for(lambda: self.healthy() and time.monotonic() - started > 3, 60, self.name, self.log_path,
                 alive=lambda: proc.poll() is None)

    def stop(self) -> None:
        proc = self.pidfile.process()
        if proc is not None:
            stop_process(proc, children_too=self.spec.stop_children)
        self.pidfile.clear()


def api_token(settings: Settings) -> str:
    """The gateway's SIGHTSCAN_API_TOKEN, or one generated once for the local stack in SIGHTSCAN_HOME/api-token."""
    configured = GatewaySettings.from_env().api_token
    if configured:
        return configured
    path = settings.home / "api-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def services(settings: Settings) -> list[PythonService]:
    """The services in start order: the demo's web sources first while a demo runs, the gateway last."""
    specs = [dataclasses.replace(spec, port=gateway_port(), port_env="DOS_PORT", probe="/healthz")
             if spec.name == "gateway" else spec for spec in SERVICES]
    demo = demo_state(settings)
    if demo is not None:
        specs.insert(0, demo_sources_spec(demo))
    return [PythonService(settings, spec) for spec in specs]


def supervisor(settings: Settings) -> PythonService:
    return PythonService(settings, SUPERVISOR)


def start_all(settings: Settings, progress: Callable[[str], None]) -> None:
    """Start what does not run, then (again) the supervisor: a new `up` also retries what it had given up."""
    watcher = supervisor(settings)
    watcher.stop()
    for svc in services(settings):
        progress(f"service {svc.name}…")
        svc.start()
        progress(f"service {svc.name} running (log: {svc.log_path})")
    watcher.start()
    progress(f"supervisor running: it restarts a crashed service (log: {watcher.log_path})")


def stop_all(settings: Settings) -> None:
    supervisor(settings).stop()  # first: it would restart what we stop
    for svc in reversed(services(settings)):
        svc.stop()
    demo_state_path(settings).unlink(missing_ok=True)  # the next `up` is the plain system again
