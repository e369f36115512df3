#!/usr/bin/env python3
"""Gateway benchmark: frames/s and frame-to-detection latency with 1, 4 and 16 webcam clients at 10 fps each,
the gateway against a naive server, in one run on this machine.

    .venv/bin/python -m bench.gateway.run [--models sight,colour] [--seconds 6] [--clients 1,4,16]

Both servers run in their own process and serve the same ONNX model on the same 640x480 JPEG frames. Models:
  sight:   the trainer's default, an ImageNet MobileNetV2 sight model at 224 px (trainer.model.SightModel, heads
           untrained: the cost is the same), exported as the trainer exports it;
  colour:  the earlier benchmark model, a colour classifier behind a 4-layer strided convolution backbone at
           320 px (built with the `onnx` helper API), about the cost of the earlier tiny from-scratch detector.
  gateway: the real app (gateway.app.make_app) with a fixed model instead of PostgreSQL and no Kafka: decoding on
           worker threads, ONNX Runtime off the event loop, latest frame wins, frames of clients batched.
  naive:   every frame decoded and run through ONNX Runtime (per frame, synchronously on the event loop: torch is
           not available to the gateway), answered in order, none dropped.
Latency is measured by the client: frame sent -> its detections received (answered frames only; the gateway's
dropped frames are counted separately).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.onnx_models import solid_colour_model

REPO = Path(__file__).resolve().parents[2]


CLASSES = {"Red Gate": (220, 30, 30), "Green Tower": (30, 200, 40), "Blue Hall": (30, 40, 210)}


# Servers ------------------------------------------------------------------------------------------------------


class FixedWarehouse:
    """One city, 'Bench', with one model: the gateway's live path without PostgreSQL."""

    def __init__(self, onnx: bytes, size: int) -> None:
        from sightscan import db

        self.city = db.City(1, "Bench", "live")
        self.model = db.StoredModel(1, 1, 1, onnx, list(CLASSES), size, {})

    async def find_city(self, name: str) -> Any:
        return self.city if name.lower() == "bench" else None

    async def latest_model(self, city_id: int) -> Any:
        return self.model if city_id == 1 else None

    async def model_by_id(self, model_id: int) -> Any:
        return self.model if model_id == 1 else None


def serve_gateway(model: Path, size: int, port: int) -> None:
    from aiohttp import web

    from gateway.app import make_app
    from gateway.settings import GatewaySettings
    from sightscan.config import Settings

    settings = GatewaySettings.from_env(port=port, follow_models=False, idle_timeout_s=120.0, score_threshold=0.0)
    app = make_app(settings, Settings.from_env(), warehouse=FixedWarehouse(model.read_bytes(), size))
    web.run_app(app, host="127.0.0.1", port=port, print=lambda *_: print("ready", flush=True), access_log=None)


def serve_naive(model: Path, size: int, port: int) -> None:
    from aiohttp import web
    from PIL import Image

    from sightscan.detector import OnnxDetector, preprocess

    detector = OnnxDetector(model.read_bytes(), list(CLASSES), size)

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        frame = 0
        async for msg in ws:
            frame += 1
            started = time.perf_counter()
            rgb = np.asarray(Image.open(io.BytesIO(msg.data)).convert("RGB"))
            found = detector.detect(preprocess(rgb, size)[None])[0]  # blocks the loop: that is the point
            if ws.closed:
                break
            try:
                await ws.send_str(json.dumps({"type": "detections", "frame": frame, "model_version": 1,
                                              "detections": [d.as_json() for d in found],
                                              "latency_ms": (time.perf_counter() - started) * 1000, "dropped": 0}))
            except ConnectionError:  # the client left with frames still queued (its backlog)
                break
        return ws

    app = web.Application()
    app.router.add_get("/ws/detect", handler)
    web.run_app(app, host="127.0.0.1", port=port, print=lambda *_: print("ready", flush=True), access_log=None)


# Load --------------------------------------------------------------------------------------------------------


def frames(n: int = 20) -> list[bytes]:
    """640x480 webcam-like JPEGs: a coloured building-ish block on a gradient with noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        sky = np.linspace(120, 230, 480)[:, None, None] * np.ones((1, 640, 3))
        arr = np.clip(sky + rng.normal(0, 12, sky.shape), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        colour = list(CLASSES.values())[i % len(CLASSES)]
        ImageDraw.Draw(img).rectangle((160 + 10 * i, 120, 460 + 5 * i, 470), fill=colour)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=80)
        out.append(buf.getvalue())
    return out


async def client(url: str, payloads: list[bytes], seconds: float, fps: float, stats: dict[str, Any]) -> None:
    import aiohttp

    sent_at: dict[int, float] = {}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:

        async def receive() -> None:
            async for msg in ws:
                body = json.loads(msg.data)
                if body["type"] == "detections":
                    stats["latencies"].append(time.perf_counter() - sent_at.pop(body["frame"]))
                    stats["answered"] += 1
                    stats["dropped"] += body["dropped"]
                elif body["type"] == "error":
                    stats["errors"] += 1

        receiver = asyncio.create_task(receive())
        await asyncio.sleep(0.2)  # let the hello arrive
        start = time.perf_counter()
        frame = 0
        while time.perf_counter() - start < seconds:
            frame += 1
            sent_at[frame] = time.perf_counter()
            await ws.send_bytes(payloads[frame % len(payloads)])
            stats["sent"] += 1
            await asyncio.sleep(max(0.0, start + frame / fps - time.perf_counter()))
        stats["send_seconds"] = max(stats.get("send_seconds", 0.0), time.perf_counter() - start)
        # Answers still on their way count, within a grace period (a naive backlog shows here as latency).
        deadline = time.perf_counter() + 3
        while sent_at and time.perf_counter() < deadline:
            if stats["answered"] + stats["dropped"] >= stats["sent"]:
                break
            await asyncio.sleep(0.05)
        stats["unanswered"] += len(sent_at)
        receiver.cancel()


async def load(url: str, clients: int, seconds: float, fps: float) -> dict[str, Any]:
    payloads = frames()
    stats: dict[str, Any] = {"latencies": [], "answered": 0, "dropped": 0, "errors": 0, "sent": 0, "unanswered": 0}
    started = time.perf_counter()
    await asyncio.gather(*(client(url, payloads, seconds, fps, stats) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    lat = sorted(stats["latencies"]) or [float("nan")]
    return {"clients": clients, "sent": stats["sent"], "answered": stats["answered"],
            "dropped": stats["dropped"], "unanswered": stats["unanswered"] - stats["dropped"],
            "fps": stats["answered"] / elapsed,
            "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "mean_ms": 1000 * statistics.fmean(lat)}


def start_server(mode: str, model: Path, size: int) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    env = {**os.environ, "SIGHTSCAN_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, __file__, "serve", mode, str(model), str(size), str(port)],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "ready" not in line:
        proc.kill()
        raise SystemExit(f"{mode} server did not start: {line!r}")
    return proc, port


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        mode, model, size, port = argv[1], Path(argv[2]), int(argv[3]), int(argv[4])
        (serve_gateway if mode == "gateway" else serve_naive)(model, size, port)
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0, help="load per configuration")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second per client")
    p.add_argument("--models", default="sight,sight-int8", help="comma-separated: sight (the trainer's fp32 graph), "
                   "sight-int8 (its int8 graph, as the trainer serves it when it answers alike), colour (earlier)")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name in a.models.split(","):
        onnx, size = build_model(name)
        model = Path(os.environ.get("TMPDIR", "/tmp")) / f"sightscan-bench-{os.getpid()}-{name}.onnx"
        model.write_bytes(onnx)
        try:
            results[name] = run_servers(model, size, a)
        finally:
            model.unlink(missing_ok=True)
    print(f"{os.cpu_count()} CPUs, {a.fps:g} fps per client, {a.seconds:g} s per run")
    print(f"{'model':7} {'server':8} {'clients':>7} {'sent':>6} {'answered':>8} {'dropped':>7} {'frames/s':>9} "
          f"{'p50 ms':>8} {'p99 ms':>8}")
    for name, by_mode in results.items():
        for mode, rows in by_mode.items():
            for r in rows:
                print(f"{name:7} {mode:8} {r['clients']:>7} {r['sent']:>6} {r['answered']:>8} {r['dropped']:>7} "
                      f"{r['fps']:>9.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}")
        for r in by_mode["gateway"]:
            print(f"{name:7} gateway {r['clients']:>2} clients, mean per frame: {json.dumps(r['stages'])}")
        for naive, gw in zip(by_mode["naive"], by_mode["gateway"], strict=True):
            print(f"{name:7} {gw['clients']:>2} clients: gateway/naive frames/s x{gw['fps'] / naive['fps']:.2f}, "
                  f"p99 naive/gateway x{naive['p99_ms'] / gw['p99_ms']:.1f}")
    for other in ("sight-int8", "colour"):
        if "sight" not in results or other not in results:
            continue
        for new, old in zip(results[other]["gateway"], results["sight"]["gateway"], strict=True):
            print(f"gateway, {new['clients']:>2} clients: {other} {new['fps']:.1f} frames/s p99 "
                  f"{new['p99_ms']:.1f} ms; sight (fp32) {old['fps']:.1f} frames/s p99 {old['p99_ms']:.1f} ms; "
                  f"frames/s x{new['fps'] / old['fps']:.2f}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


def build_model(name: str) -> tuple[bytes, int]:
    """(ONNX bytes, input size) of a benchmark model."""
    if name == "colour":
        onnx, _ = solid_colour_model(CLASSES, backbone=True)
        return onnx, 320
    if name == "sight-int8":  # the trainer's int8 graph (trainer/quantize.py), calibrated on the bench's frames
        import io as _io

        from PIL import Image

        from sightscan.detector import preprocess
        from trainer.quantize import quantize

        onnx, size = build_model("sight")
        calibration = np.concatenate([preprocess(np.asarray(Image.open(_io.BytesIO(f)).convert("RGB")), size)[None]
                                      for f in frames()]).astype(np.float32)
        return quantize(onnx, calibration), size
    if name != "sight":
        raise SystemExit(f"unknown model {name!r}: sight, sight-int8 or colour")
    import torch

    from trainer.backbones import build, choose_backbone
    from trainer.export import export_onnx
    from trainer.model import SightModel

    torch.manual_seed(0)
    choice = choose_backbone("mobilenet_v2", None)
    if not choice.pretrained:
        print(f"warning: {choice.reason}", file=sys.stderr)
    model = SightModel(build(choice), len(CLASSES), 224).eval()
    return export_onnx(model), 224


STAGES = ("frame_latency_seconds", "decode_seconds", "detect_seconds", "inference_seconds", "batch_size")


def stage_totals(port: int) -> dict[str, tuple[float, float]]:
    """(sum, count) of the gateway's per-stage histograms (gateway/metrics.py) from its /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(text):
        stage = family.name.removeprefix("sightscan_gateway_")
        if stage in STAGES:
            values = {s.name.rsplit("_", 1)[-1]: s.value for s in family.samples if s.name.endswith(("_sum", "_count"))}
            out[stage] = (values.get("sum", 0.0), values.get("count", 0.0))
    return out


def where_time_goes(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean ms per frame in each stage over one run (the mean batch size as is): the gateway's own account."""
    means = {}
    for stage in STAGES:
        total, count = (a - b for a, b in zip(after.get(stage, (0, 0)), before.get(stage, (0, 0)), strict=True))
        scale = 1 if stage == "batch_size" else 1000
        means[stage.removesuffix("_seconds") + ("" if stage == "batch_size" else "_ms")] = \
            round(scale * total / count, 2) if count else float("nan")
    return means


def run_servers(model: Path, size: int, a: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {}
    for mode in ("naive", "gateway"):
        proc, port = start_server(mode, model, size)
        try:
            url = f"ws://127.0.0.1:{port}/ws/detect?city=Bench"
            asyncio.run(load(url, 1, 1.0, a.fps))  # warm-up
            results[mode] = []
            for n in a.clients.split(","):
                before = stage_totals(port) if mode == "gateway" else {}
                row = asyncio.run(load(url, int(n), a.seconds, a.fps))
                if mode == "gateway":
                    row["stages"] = where_time_goes(before, stage_totals(port))
                results[mode].append(row)
        finally:
            proc.terminate()
            proc.wait(10)
    return results


if __name__ == "__main__":
    sys.exit(main())
