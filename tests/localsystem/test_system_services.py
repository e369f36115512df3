"""`sightscan up` starts SightScan's own services beside the stack; `down` stops them and leaves no process."""

from __future__ import annotations

import json
import urllib.request

import psutil

from localsystem.stack import LocalStack
from localsystem.stack.proc import port_in_use
from localsystem.stack.services import services, start_all, stop_all
from tests.support.stack import free_port


def test_services_start_answer_and_stop(stack: LocalStack, monkeypatch):
    port = free_port()
    monkeypatch.setenv("DOS_PORT", str(port))
    start_all(stack.settings, progress=print)
    try:
        procs = {svc.name: svc.pidfile.process() for svc in services(stack.settings)}
        assert all(p is not None and p.is_running() for p in procs.values()), procs
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/cities", timeout=10) as resp:
            assert "cities" in json.loads(resp.read())
        start_all(stack.settings, progress=print)  # a second start is a no-op
        assert {svc.name: svc.pidfile.process().pid for svc in services(stack.settings)} == {
            n: p.pid for n, p in procs.items()}
    finally:
        stop_all(stack.settings)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs.values())
    assert not port_in_use(port)
