"""The demo's page on this device (issue 22, "Done when"): the `sightscan demo` system (its web sources, every
service, a synthetic city) on a private stack; once the city is learnt, the page as the demo prints it, in headless
Chromium, its camera playing the city's clip. It must name the city's sights with no frame sent to the server.

    .venv/bin/python -m bench.browser.demo_local [--seed 31] [--sights 3] [--per-sight 30] [--seconds 20]
                                                 [--path auto|device]

Prints what the page said (its path and why, frames on each path, time per frame, the sights it named), the
gateway's count of frames received on /ws/detect over the whole visit, and keeps a screenshot of the page; exits 1
when the done-when is missed. The page settles either on this device or, when "auto" judges this device too slow
for the gateway's frame budget (or it cannot run the model), on the server: either way the visit is measured and
reported, with the page's reason. --path device is the user's "on this device" choice (?path=device): the local
path whatever its speed (not the done-when, which is the page as the demo prints it).
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
from typing import Any

from bench.corrections.latency import wait_for_model
from bench.loop.run import _free_port, wait_trainer_idle
from bench.stats import exit_cleanly_on_sigterm, machine_note, percentile, report
from localsystem.demo.system import DemoOptions, page_url, prepare_city, request_city, start_system
from localsystem.stack import LocalStack
from localsystem.stack.services import api_token, stop_all
from sightscan.config import Settings
from tests.support.browser import Browser, browser_runtime, poll
from tests.support.gateway import metric
from tests.support.stack import ephemeral_settings

# What the page says of its path and what it named (the elements app.js and local.js keep up to date).
PAGE = """typeof Local !== "object" ? null : JSON.stringify({...Local.report(),
  text: document.getElementById("path").textContent,
  seen: [...document.querySelectorAll("#seen li")].map((li) => li.dataset.sight)})"""


def settled(value: str | None) -> bool:
    """The page runs on this device (10 frames answered), or runs on the server for a reason (5 frames sent)."""
    if not value:
        return False
    s = json.loads(value)
    return (s["path"] == "device" and s["local_frames"] >= 10) or (s["path"] == "server" and s["server_frames"] >= 5)


def served_graph(settings: Settings, city: str, version: int | None) -> dict[str, Any]:
    """A stored model's (the latest if no version) size, input size, which graph the trainer served (int8 or fp32,
    and why) and the size of the graph pages get (the fp32 one kept beside a served int8 graph, else the same)."""
    from sightscan import db

    with db.transaction(settings) as cur:
        cur.execute("SELECT length(m.onnx), m.input_size, m.metrics->'graph'->>'served', m.metrics->'graph'->>'reason',"
                    " length(COALESCE(g.onnx, m.onnx))"
                    " FROM models m JOIN cities c ON c.id = m.city_id"
                    " LEFT JOIN model_browser_graphs g ON g.model_id = m.id"
                    " WHERE c.name = %s AND (%s::int IS NULL OR m.version = %s)"
                    " ORDER BY m.version DESC LIMIT 1", (city, version, version))
        row = cur.fetchone()
    return dict(zip(("onnx_mb", "input_size", "graph", "why", "page_onnx_mb"), row, strict=True)) if row else {}


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
    p.add_argument("--path", choices=("auto", "device"), default="auto",
                   help="auto: the page as the demo prints it (the done-when); device: the user's choice")
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
            url = page_url(gateway, opts.city, autostart=True) + ("&path=device" if a.path == "device" else "")
            browser = Browser(url, Path(tmp) / "profile", clip, Path(tmp) / "chromium.log")
            try:
                first = json.loads(poll(browser, PAGE, settled, timeout=300))
                say(f"the page settled: {first['text']}")
                time.sleep(a.seconds)
                state = json.loads(asyncio.run(browser.evaluate(PAGE)))
                model = served_graph(settings, opts.city, state.get("model_version"))
                asyncio.run(browser.screenshot(a.screenshot.resolve()))
            finally:
                browser.close()
            after = frames_received(gateway)
        finally:
            stop_all(settings)
            stack.down(purge=True)
    named = sorted(set(state["seen"]) & set(info.sights))
    # With --path device the same three conditions say the local path works; the done-when is the auto page's.
    met = state["path"] == "device" and after - before == 0 and len(named) == len(info.sights)
    ms = lambda key: [round(percentile(state[key], q), 1) for q in (50, 99)] if state[key] else None  # noqa: E731
    sizes = {k: round((model.get(k) or 0) / 1e6, 1) for k in ("onnx_mb", "page_onnx_mb")}
    report("demo page on this device", {
        "machine": machine_note(), "city": f"{a.sights} sights x {a.per_sight} photos, seed {a.seed}",
        "page_url": url, "path": state["path"], "reason": state["reason"], "page_says": state["text"],
        "model_version": state.get("model_version"), "model": {**model, **sizes},
        "threads": state["threads"],
        "warm_up_ms": [round(v, 1) for v in state["warm_ms"]],
        "local_frames": state["local_frames"], "server_frames": state["server_frames"],
        "local_ms_p50_p99": ms("local_ms"), "preprocess_ms_p50_p99": ms("pre_ms"), "inference_ms_p50_p99": ms("run_ms"),
        "server_ms_p50_p99": ms("server_ms"),
        "frames_received_by_the_gateway": after - before, "sights_named": named,
        "sights_in_the_city": list(info.sights), "screenshot": str(a.screenshot.resolve()),
        "done_when": "path 'device', frames received 0, every sight named",
        "done_when_met" if a.path == "auto" else "local_path_met (not the done-when: the path forced)": met})
    if not met:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
