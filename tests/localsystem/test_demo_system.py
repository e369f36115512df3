"""`sightscan demo` on the real stack: its web sources run as a service of the local system, every service runs
with the demo's settings, the city is requested through the gateway and crawled from those sources; `down` ends
it all. (A model is not waited for: training has its own tests.)"""

from __future__ import annotations

import time
import uuid

import psutil

from localsystem.cli import main as cli_main
from localsystem.demo.system import DemoOptions, city_status, demo_env, page_url, run_demo
from localsystem.stack.proc import port_in_use
from localsystem.stack.services import DEMO_SOURCES, demo_state, demo_state_path, services, stop_all
from tests.support.stack import free_port


def test_the_demo_runs_the_system_on_its_own_sources(settings, monkeypatch, capsys):
    gateway_port, sources_port = free_port(), free_port()
    monkeypatch.setenv("DOS_PORT", str(gateway_port))
    for name in ("MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING", "MIN_IMAGE_NUMBER_PER_LABEL", "MAX_SIGHTS_PER_CITY",
                 "MAX_IMAGES_PER_SIGHT", "CRAWLER_DOWNLOAD_DELAY_S"):
        monkeypatch.delenv(name, raising=False)
    city = f"Demoville {uuid.uuid4().hex[:6]}"  # its own city: a kept stack may hold earlier runs' cities
    opts = DemoOptions(city=city, seed=4, sights=2, per_sight=6, sources_port=sources_port, timeout=3, poll_s=1)
    said: list[str] = []
    procs: dict[str, psutil.Process] = {}
    try:
        # A short timeout: the demo gives up waiting for a model, and leaves the system running.
        assert run_demo(settings, opts, progress=print, say=said.append) == 1
        gateway = f"http://127.0.0.1:{gateway_port}"
        assert said[0].startswith(f"{city} requested (new")
        assert said[1] == f"open {page_url(gateway, city)}"
        assert any("crawled" in line and "/12" in line for line in said[2:])
        assert any(line.startswith(f"no model for {city} yet after 3 s") for line in said)
        assert said[-3:] == [f"open {page_url(gateway, city)}",
                             f"webcam clip of the city: {settings.home / 'demo'}/{city.lower().replace(' ', '-')}"
                             "-seed4-2x6/clip.y4m",
                             f"a fake webcam playing it: chromium --use-fake-device-for-media-stream "
                             f"--use-file-for-fake-video-capture={settings.home / 'demo'}/"
                             f"{city.lower().replace(' ', '-')}-seed4-2x6/clip.y4m "
                             f"'{page_url(gateway, city, autostart=True)}'"]

        running = services(settings)
        assert running[0].name == DEMO_SOURCES and all(s.healthy() for s in running)
        procs = {s.name: s.pidfile.process() for s in running}
        env = demo_env(opts, f"http://127.0.0.1:{sources_port}")
        assert env["MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING"] == "8" and env["MIN_IMAGE_NUMBER_PER_LABEL"] == "1"
        assert all(s.started_with(env) for s in running if s.name != DEMO_SOURCES)
        assert demo_state(settings)["env"] == env

        # `sightscan status` lists the sources with the rest.
        for key, value in settings.env().items():  # the stack's own places, not the pipeline's thresholds
            if key in ("SIGHTSCAN_HOME", "PGPORT", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_CONTROLLER_PORT", "CONNECT_URL",
                       "TOPIC_PREFIX"):
                monkeypatch.setenv(key, value)
        capsys.readouterr()
        cli_main(["status"])
        assert any(line.split()[:2] == [DEMO_SOURCES, "healthy"] for line in capsys.readouterr().out.splitlines())

        # The stream worker asked for the crawl; the crawler found the city's sights and photos on the sources.
        deadline, row = time.monotonic() + 240, {}
        while (row.get("sights"), row.get("images")) != (2, 12):
            assert time.monotonic() < deadline, row
            time.sleep(1)
            row = city_status(gateway, city)

        # A second demo run finds everything in place: nothing restarts, nothing is rendered again.
        again: list[str] = []
        rendered: list[str] = []
        assert run_demo(settings, DemoOptions(**{**opts.__dict__, "timeout": 0}), progress=rendered.append,
                        say=again.append) == 0
        assert again[0].startswith(f"{city} requested (known already")
        assert not [m for m in rendered if m.startswith(("rendering", "restarting"))]
        assert {s.name: s.pidfile.process().pid for s in services(settings)} == {n: p.pid for n, p in procs.items()}
    finally:
        stop_all(settings)
    assert not demo_state_path(settings).exists()
    assert [s.name for s in services(settings)][0] != DEMO_SOURCES
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs.values())
    assert not port_in_use(sources_port) and not port_in_use(gateway_port)
