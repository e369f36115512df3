"""Corrections on the real loop, timed: a user's correction -> its label's change event on Kafka, and the
corrections that cross the retraining threshold -> the retrained model live, on a private stack with every service
(the `sightscan demo` system) and a synthetic city.

    .venv/bin/python -m bench.corrections.latency [--seed 31] [--sights 5] [--per-sight 40] [--corrections 60]

1. The city is requested and learnt as in bench/loop (crawl, weak labels, the first model); the bench waits until
   the trainer is idle.
2. Threshold: RETRAIN_MIN_CORRECTIONS honest corrections (true boxes on clip frames of a sight, "no sight" on
   street frames), one after another, through POST /api/cities/{city}/corrections. From the response to the one
   that crosses the threshold, a webcam client sends a frame every 0.25 s until the gateway answers with a newer
   model: the retrained model live.
3. Latency: --corrections more at --rate a second, each timed from its request to its label's change event on
   the labels topic (Debezium -> Kafka). Baseline in the same run: as many labels inserted by SQL at the same pace,
   timed from their commit (the CDC path alone); the ratio is what the gateway's path adds.

Targets (issue "Corrections close the loop", 2-core CPU): correction -> label event p99 <= 1 s; correction ->
the retrained model live <= 60 s after the threshold is crossed, on a 5-sight city.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.cdc_latency.run import Receiver
from bench.loop.run import _ask, _free_port, _jpeg, wait_trainer_idle
from bench.stats import exit_cleanly_on_sigterm, machine_note, report, summary_ms
from localsystem.demo.city import ClipFrame, clip_frames
from localsystem.demo.system import DemoOptions, prepare_city, request_city, start_system
from localsystem.stack import LocalStack
from localsystem.stack.services import api_token, stop_all
from sightscan import db
from sightscan.config import Settings
from sightscan.topics import change_topic
from tests.support.gateway import multipart
from tests.support.stack import ephemeral_settings

TARGETS = {"correction_to_label_event_p99_ms": "<= 1000", "threshold_to_retrained_model_live_s": "<= 60"}


def correction_for(frame: ClipFrame) -> dict[str, Any]:
    """The honest correction of a clip frame: its first sight's true box, or "no sight" on the street."""
    if not frame.truths:
        return {"action": "no-sight"}
    name, (x, y, w, h) = frame.truths[0]
    height, width = frame.rgb.shape[:2]
    return {"action": "box", "sight": name, "box": [x / width, y / height, (x + w) / width, (y + h) / height]}


def post_correction(gateway: str, token: str, city: str, frame: ClipFrame) -> dict[str, Any]:
    """One correction as the page sends it (multipart: the frame, the correction's JSON); its 201 body."""
    import urllib.request

    body, content_type = multipart({"correction": json.dumps(correction_for(frame)), "frame": ("frame.jpg",
                                                                                             _jpeg(frame))})
    req = urllib.request.Request(f"{gateway}/api/cities/{quote(city)}/corrections", data=body, method="POST",
                                 headers={"Content-Type": content_type,
                                          "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def wait_for_model(settings: Settings, city: str, sights: int, timeout: float) -> int:
    """The version of the first stored model of the city that knows every sight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.transaction(settings) as cur:
            cur.execute("SELECT max(m.version) FROM models m JOIN cities c ON c.id = m.city_id"
                        " WHERE c.name = %s AND jsonb_array_length(m.classes) >= %s", (city, sights))
            version = cur.fetchone()[0]
        if version:
            return int(version)
        time.sleep(2)
    raise SystemExit(f"{city}: no model with all {sights} sights within {timeout:g} s")


async def retrained_live(ws_url: str, city: str, frame: ClipFrame, live: int, timeout: float) -> float:
    """Seconds until the gateway answers a frame with a model newer than `live` (a frame every 0.25 s)."""
    import aiohttp

    started, payload = time.monotonic(), _jpeg(frame)
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{ws_url}?city={quote(city)}") as ws:
        while time.monotonic() - started < timeout:
            body = await _ask(ws, payload)
            if (body.get("model_version") or 0) > live:
                return time.monotonic() - started
            await asyncio.sleep(0.25)
    raise TimeoutError


def baseline_labels(settings: Settings, city_id: int, count: int, rate: float) -> dict[int, float]:
    """`count` labels inserted by SQL at `rate` a second on the city's images (the CDC path alone): id -> commit."""
    committed: dict[int, float] = {}
    conn = db.connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM images WHERE city_id = %s ORDER BY id LIMIT %s", (city_id, count))
            images = [r[0] for r in cur.fetchall()]
            conn.commit()
            start = time.monotonic()
            for i, image_id in enumerate(images):
                time.sleep(max(0.0, start + i / rate - time.monotonic()))
                cur.execute("INSERT INTO labels (city_id, image_id, sight_id, labeller, weak, kind)"
                            " VALUES (%s, %s, NULL, 'bench', true, 'labeller') RETURNING id", (city_id, image_id))
                label_id = cur.fetchone()[0]
                conn.commit()
                committed[label_id] = time.time()
    finally:
        conn.close()
    return committed


def arrivals(receiver: Receiver, sent: dict[int, float], timeout: float = 30) -> list[float]:
    """Seconds from each send to its label's event (waiting up to `timeout` for stragglers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not set(sent) <= set(receiver.arrived):
        time.sleep(0.1)
    missing = set(sent) - set(receiver.arrived)
    if missing:
        raise SystemExit(f"{len(missing)} label events never arrived: {sorted(missing)[:10]}")
    return [receiver.arrived[i] - t for i, t in sent.items()]


def run(settings: Settings, a: argparse.Namespace, gateway: str) -> dict[str, Any]:
    opts = DemoOptions(city=f"Fixville {a.seed}", seed=a.seed, sights=a.sights, per_sight=a.per_sight,
                       sources_port=_free_port(), timeout=0)
    say = lambda m: print(f"  {m}", flush=True)  # noqa: E731
    info, clip = prepare_city(settings, opts, say)
    start_system(settings, opts, info, clip, say)
    token = api_token(settings)
    request_city(gateway, token, opts.city)
    live = wait_for_model(settings, opts.city, a.sights, a.timeout)
    waited = wait_trainer_idle(settings)
    with db.transaction(settings) as cur:
        city = db.find_city(cur, opts.city)
        cur.execute("SELECT max(version) FROM models WHERE city_id = %s", (city.id,))
        live = int(cur.fetchone()[0])
    say(f"model v{live} live with every sight; trainer idle after {waited:.0f} s more")
    frames = list(clip_frames(info, seconds=2.0 * a.sights + 4, fps=10))
    sights = [f for f in frames if f.truths]
    street = [f for f in frames if not f.truths]
    # Honest corrections, sights and street interleaved, every frame used once (frames are stored once each).
    order = [f for pair in zip(sights[::2], street, strict=False) for f in pair] + sights[1::2]
    receiver = Receiver(settings, change_topic("labels", settings.topic_prefix))
    receiver.start()
    try:
        threshold = settings.retrain_min_corrections
        sent: dict[int, float] = {}
        for frame in order[:threshold]:
            t = time.time()
            sent[post_correction(gateway, token, opts.city, frame)["label_id"]] = t
            time.sleep(0.2)
        say(f"{threshold} corrections sent: the retraining threshold is crossed")
        ws_url = gateway.replace("http://", "ws://") + "/ws/detect"
        try:
            to_live = asyncio.run(retrained_live(ws_url, opts.city, sights[0], live, a.timeout))
        except TimeoutError:
            to_live = float("nan")
        with db.transaction(settings) as cur:
            cur.execute("SELECT version, metrics FROM models WHERE city_id = %s ORDER BY version DESC LIMIT 1",
                        (city.id,))
            version, metrics = cur.fetchone()
        say(f"model v{version} live {to_live:.1f} s after the threshold")
        wait_trainer_idle(settings)
        rest = order[threshold:threshold + a.corrections]
        start = time.monotonic()
        for i, frame in enumerate(rest):
            time.sleep(max(0.0, start + i / a.rate - time.monotonic()))
            t = time.time()
            sent[post_correction(gateway, token, opts.city, frame)["label_id"]] = t
        corrections = arrivals(receiver, sent)
        baseline = arrivals(receiver, baseline_labels(settings, city.id, len(sent), a.rate))
    finally:
        receiver.stop.set()
        receiver.join(10)
    figures = summary_ms(corrections)
    base = summary_ms(baseline)
    return {"city": f"{a.sights} sights x {a.per_sight} photos, seed {a.seed}", "machine": machine_note(),
            "correction_to_label_event": figures, "sql_label_to_event_baseline": base,
            "ratio_p99_vs_baseline": round(figures["p99_ms"] / base["p99_ms"], 2) if base["p99_ms"] else None,
            "threshold_to_retrained_model_live_s": round(to_live, 1),
            "retrained_model": {"version": version, "from": live,
                                "train_seconds": (metrics or {}).get("train_seconds"),
                                "total_seconds": (metrics or {}).get("total_seconds"),
                                "graph": ((metrics or {}).get("graph") or {}).get("served")},
            "targets": TARGETS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=31)
    p.add_argument("--sights", type=int, default=5)
    p.add_argument("--per-sight", type=int, default=40)
    p.add_argument("--corrections", type=int, default=60, help="timed after the threshold phase")
    p.add_argument("--rate", type=float, default=2.0, help="corrections a second in the timed phase")
    p.add_argument("--timeout", type=float, default=600.0)
    a = p.parse_args()
    exit_cleanly_on_sigterm()
    os.environ["DOS_PORT"] = str(_free_port())  # the private system's gateway; the demo's services read it
    os.environ.setdefault("TRAINER_THREADS", "2")
    # One operator sends them all: the per-credential limit (30 a minute) would pace the bench, not the system.
    os.environ["GATEWAY_CORRECTIONS_PER_MINUTE"] = str(max(600, int(a.rate * 120)))
    gateway = f"http://127.0.0.1:{os.environ['DOS_PORT']}"
    with tempfile.TemporaryDirectory(prefix="bench-corrections-") as tmp:
        settings = ephemeral_settings(Path(tmp) / "stack")
        stack = LocalStack(settings, progress=lambda m: print(f"  [stack] {m}", flush=True))
        try:
            figures = run(settings, a, gateway)
        finally:
            stop_all(settings)
            stack.down(purge=True)
    report("corrections", figures)


if __name__ == "__main__":
    main()
