"""The demo's page on this device (issue 22, "Done when"): the `sightscan demo` system (its web sources, every
service, a synthetic city) on a private stack; once the city is learnt, the page as the demo prints it, in headless
Chromium, its camera playing the city's clip. It must name the city's sights with no frame sent to the server.

    .venv/bin/python -m bench.browser.demo_local [--seed 31] [--sights 3] [--per-sight 30] [--seconds 20]

Prints what the page said (its path, frames on each path, time per frame, the sights it named), the gateway's
count of frames received on /ws/detect over the whole visit, and keeps a screenshot of the page.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.corrections.latency import wait_for_model
from bench.loop.run import _free_port, wait_trainer_idle
from bench.stats import exit_cleanly_on_sigterm, machine_note, percentile, report
from localsystem.demo.system import DemoOptions, page_url, prepare_city, request_city, start_system
from localsystem.stack import LocalStack
from localsystem.stack.services import api_token, stop_all
from tests.support.browser import Browser, browser_runtime, poll
from tests.support.gateway import metric
from tests.support.stack import ephemeral_settings

# What the page says of its path and what it named (the elements app.js and local.js keep up to date).
PAGE = """typeof Local !== "object" ? null : JSON.stringify({...Local.report(),
  text: document.getElementById("path").textContent,
  seen: [...document.querySelectorAll("#seen li")].map((li) => li.dataset.sight)})"""


def frames_received(gateway: str) -> float:
    with urllib.request.urlopen(f"{gateway}/metrics", timeout=10) as resp:
        return metric(resp.read().decode(), "sightscan_gateway_frames_received_total")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=31)
    p.add_argument("--sights", type=int, default=3)
    p.add_argument("--per-sight", type=int, default=30)
    p.add_argument("--seconds", type=float, default=20.0, help="how long the page runs once it is on this device")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--screenshot", type=Path, default=Path("demo-local.png"))
    a = p.parse_args()
    exit_cleanly_on_sigterm()
    browser_runtime()  # onnxruntime-web, as ./dev installs it
    os.environ["DOS_PORT"] = str(_free_port())  # the private system's gateway; the demo's services read it
    gateway = f"http://127.0.0.1:{os.environ['DOS_PORT']}"
    with tempfile.TemporaryDirectory(prefix="bench-demo-local-") as tmp:
        settings = ephemeral_settings(Path(tmp) / "stack")
        stack = LocalStack(settings, progress=lambda m: print(f"  [stack] {m}", flush=True))
        try:
            opts = DemoOptions(city=f"Pageville {a.seed}", seed=a.seed, sights=a.sights, per_sight=a.per_sight,
                               sources_port=_free_port(), timeout=0)
            say = lambda m: print(f"  {m}", flush=True)  # noqa: E731
            info, clip = prepare_city(settings, opts, say)
            start_system(settings, opts, info, clip, say)
            request_city(gateway, api_token(settings), opts.city)
            version = wait_for_model(settings, opts.city, a.sights, a.timeout)
            wait_trainer_idle(settings)  # a retraining's swap would only add a model load to the visit
            say(f"model v{version} or later live; opening the page")
            before = frames_received(gateway)
            browser = Browser(page_url(gateway, opts.city, autostart=True), Path(tmp) / "profile", clip,
                              Path(tmp) / "chromium.log")
            try:
                poll(browser, PAGE, lambda v: bool(v) and json.loads(v)["path"] == "device"
                     and json.loads(v)["local_frames"] >= 10, timeout=300)
                time.sleep(a.seconds)
                state = json.loads(asyncio.run(browser.evaluate(PAGE)))
                asyncio.run(browser.screenshot(a.screenshot.resolve()))
            finally:
                browser.close()
            after = frames_received(gateway)
        finally:
            stop_all(settings)
            stack.down(purge=True)
    named = sorted(set(state["seen"]) & set(info.sights))
    report("demo page on this device", {
        "machine": machine_note(), "city": f"{a.sights} sights x {a.per_sight} photos, seed {a.seed}",
        "path": state["path"], "page_says": state["text"], "model_version": state.get("model_version"),
        "local_frames": state["local_frames"], "server_frames": state["server_frames"],
        "local_ms_p50_p99": [round(percentile(state["local_ms"], q), 1) for q in (50, 99)],
        "frames_received_by_the_gateway": after - before, "sights_named": named,
        "sights_in_the_city": list(info.sights), "screenshot": str(a.screenshot.resolve()),
        "done_when": "path 'device', frames received 0, every sight named"})


if __name__ == "__main__":
    main()
