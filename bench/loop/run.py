"""The whole loop, timed and scored live: request a synthetic city, then watch it become a model that recognises
its sights in the city's webcam clip, on a private stack with every service (the `sightscan demo` system).

    .venv/bin/python -m bench.loop.run [--seeds 31 32 33] [--sights 5] [--per-sight 40] [--timeout 600]

Per seed, from the city request (POST /api/cities):
  - when the first photo is stored, the crawl ends, the training threshold's label is written, the first model is
    stored and first serves a frame, and when a model covering every sight serves (stages: crawl, label, train,
    swap);
  - then the clip through /ws/detect with the newest model: top-1, mean IoU of the right sight's box, and the
    frame-to-detections latency seen by the client (p50/p99).
Seeds run one after another on one system; each starts once the trainer has answered every request of the one
before (its retrainings as the data grew), so each is timed from an idle trainer.
Targets (issues "Recognition" and "Open world", 2-core CPU, 5-8 sights x 40 photos, weak labels only): request ->
live model with every sight <= 90 s; clip top-1 on one-sight frames >= 0.97; no-sight frames answered with a sight
<= 5%; both sights boxed at IoU >= 0.5 on >= 90% of two-sight frames; mean IoU of the right box >= 0.75.
`--look photo` runs a city of real photographs (localsystem.demo.photos).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image

from bench.stats import exit_cleanly_on_sigterm, report, summary_ms
from localsystem.demo.city import ClipFrame, clip_frames
from localsystem.demo.scoring import ClipScore, frame_truths
from localsystem.demo.system import DemoOptions, prepare_city, request_city, start_system
from localsystem.stack import LocalStack
from localsystem.stack.services import api_token, stop_all
from sightscan import db, kafka
from sightscan.config import Settings
from tests.support.stack import ephemeral_settings

TARGETS = {"all_sights_live_s": "<= 90", "clip_top1": ">= 0.97", "clip_false_claims": "<= 0.05",
           "clip_both_boxed": ">= 0.9", "clip_mean_iou": ">= 0.75"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jpeg(frame: ClipFrame) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame.rgb).save(buf, "JPEG", quality=85)
    return buf.getvalue()


async def _ask(ws: Any, payload: bytes, timeout: float = 30) -> dict[str, Any]:  # noqa: ANN401 - aiohttp ws
    """Send one frame and wait for its detections (other messages, e.g. model swaps, are skipped)."""
    await ws.send_bytes(payload)
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        body = json.loads(msg.data)
        if body["type"] in ("detections", "error"):
            return body


async def watch(ws_url: str, settings: Settings, city: str, sights: int, frames: list[ClipFrame],
                timeout: float) -> tuple[dict[str, float], ClipScore, list[float], int]:
    """From the request on, a frame every 0.5 s until a model with every sight answers; then the clip, scored."""
    import aiohttp

    seen: dict[str, float] = {}
    started = time.monotonic()
    payloads = [_jpeg(f) for f in frames]
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{ws_url}?city={quote(city)}") as ws:
        i = 0
        while True:
            if time.monotonic() - started > timeout:
                raise SystemExit(f"{city}: no model with all {sights} sights served within {timeout:g} s")
            body = await _ask(ws, payloads[i % len(payloads)])
            i += 1
            version = body.get("model_version") or 0
            if version and "first_live" not in seen:
                seen["first_live"] = time.monotonic() - started
            if version:
                with db.transaction(settings) as cur:
                    cur.execute("SELECT m.classes FROM models m JOIN cities c ON c.id = m.city_id"
                                " WHERE c.name = %s AND m.version = %s", (city, version))
                    row = cur.fetchone()
                if row and len(row[0]) == sights:
                    seen["all_sights_live"] = time.monotonic() - started
                    seen["all_sights_version"] = version
                    break
            await asyncio.sleep(0.5)
        score, latencies = ClipScore(), []
        for frame, payload in zip(frames, payloads, strict=True):
            sent = time.perf_counter()
            body = await _ask(ws, payload)
            latencies.append(time.perf_counter() - sent)
            score.add(frame_truths(frame), [(d["sight"], d["score"], d["box"]) for d in body.get("detections", [])])
    return seen, score, latencies, int(seen["all_sights_version"])


def wait_trainer_idle(settings: Settings, timeout: float = 600) -> float:
    """Wait until the trainer has answered every training request (its group's committed offsets are at the end):
    the next seed must not queue behind this city's retrainings. Returns the seconds waited."""
    from confluent_kafka import TopicPartition

    from sightscan.topics import command_topic
    from trainer.settings import load

    topic = command_topic("training", settings.topic_prefix)
    consumer = kafka.consumer(settings, load(settings).group_id)
    started = time.monotonic()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions]
        while time.monotonic() - started < timeout:
            committed = consumer.committed(parts, timeout=10)
            ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
            if all(end == 0 or tp.offset == end for tp, end in zip(committed, ends, strict=True)):
                break
            time.sleep(2)
    finally:
        consumer.close()
    return time.monotonic() - started


def stage_times(settings: Settings, city: str, threshold: int) -> dict[str, float]:
    """Seconds after the request, from the warehouse's own timestamps."""
    with db.transaction(settings) as cur:
        cur.execute("""
            SELECT extract(epoch FROM (SELECT min(i.created_at) FROM images i WHERE i.city_id = c.id) - c.requested_at),
                   extract(epoch FROM (SELECT max(i.created_at) FROM images i WHERE i.city_id = c.id) - c.requested_at),
                   extract(epoch FROM (SELECT l.created_at FROM labels l WHERE l.city_id = c.id
                                       ORDER BY l.created_at, l.id OFFSET %s LIMIT 1) - c.requested_at),
                   extract(epoch FROM (SELECT min(m.created_at) FROM models m WHERE m.city_id = c.id)
                                      - c.requested_at),
                   (SELECT (m.metrics->>'total_seconds')::float FROM models m WHERE m.city_id = c.id
                    ORDER BY m.version LIMIT 1)
            FROM cities c WHERE c.name = %s""", (max(0, threshold - 1), city))
        first_image, crawl_end, threshold_label, first_model, train_s = cur.fetchone()
    return {"first_image_s": float(first_image), "crawl_done_s": float(crawl_end),
            "threshold_label_s": float(threshold_label), "first_model_stored_s": float(first_model),
            "first_model_training_s": float(train_s)}


def one_seed(settings: Settings, seed: int, a: argparse.Namespace, sources_port: int, gateway: str) -> dict:
    opts = DemoOptions(city=f"Loopville {a.look} {seed}", seed=seed, sights=a.sights, per_sight=a.per_sight,
                       sources_port=sources_port, timeout=0, look=a.look)
    info, clip = prepare_city(settings, opts, lambda m: print(f"  {m}", flush=True))
    start_system(settings, opts, info, clip, lambda m: print(f"  {m}", flush=True))
    frames = list(clip_frames(info, seconds=2.0 * a.sights, fps=10))
    threshold = int(os.environ.get("MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING")
                    or max(1, -(-6 * a.sights * a.per_sight // 10)))
    request_city(gateway, api_token(settings), opts.city)
    ws_url = gateway.replace("http://", "ws://") + "/ws/detect"
    seen, score, latencies, version = asyncio.run(watch(ws_url, settings, opts.city, a.sights, frames, a.timeout))
    stages = stage_times(settings, opts.city, threshold)
    waited = wait_trainer_idle(settings)
    print(f"  seed {seed}: the trainer finished this city's retrainings {waited:.0f} s after the clip", flush=True)
    out = {"seed": seed, **{k: round(v, 1) for k, v in stages.items()},
           "first_live_s": round(seen["first_live"], 1), "all_sights_live_s": round(seen["all_sights_live"], 1),
           "all_sights_model_version": version,
           "stages_to_first_live_s": {
               "crawl_to_first_photo": round(stages["first_image_s"], 1),
               "crawl_and_label_to_threshold": round(stages["threshold_label_s"] - stages["first_image_s"], 1),
               "train_and_store": round(stages["first_model_stored_s"] - stages["threshold_label_s"], 1),
               "swap_to_first_answer": round(seen["first_live"] - stages["first_model_stored_s"], 1)},
           "clip": score.as_dict(), "clip_latency": summary_ms(latencies)}
    print(f"  seed {seed}: {json.dumps(out)}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[31, 32, 33])
    p.add_argument("--sights", type=int, default=5)
    p.add_argument("--per-sight", type=int, default=40)
    p.add_argument("--look", choices=("synthetic", "photo"), default="synthetic",
                   help="drawn sights, or a city of real photographs (localsystem.demo.photos)")
    p.add_argument("--timeout", type=float, default=600.0, help="per seed: request -> model with every sight")
    a = p.parse_args()
    exit_cleanly_on_sigterm()
    os.environ["DOS_PORT"] = str(_free_port())  # the private system's gateway; the demo's services read it
    os.environ.setdefault("TRAINER_THREADS", "2")
    gateway = f"http://127.0.0.1:{os.environ['DOS_PORT']}"
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        settings = ephemeral_settings(Path(tmp) / "stack")
        stack = LocalStack(settings, progress=lambda m: print(f"  [stack] {m}", flush=True))
        try:
            sources_port = _free_port()
            runs = [one_seed(settings, seed, a, sources_port, gateway) for seed in a.seeds]
        finally:
            stop_all(settings)
            stack.down(purge=True)
    mean = {key: round(sum(r[key] for r in runs) / len(runs), 2) for key in ("first_live_s", "all_sights_live_s")}
    mean["clip_top1"] = round(sum(r["clip"]["top1"] for r in runs) / len(runs), 4)
    for key in ("mean_iou", "false_claims", "both_boxed"):
        mean[f"clip_{key}"] = round(sum(r["clip"][key] for r in runs) / len(runs), 4)
    report("loop", {"city": f"{a.sights} sights x {a.per_sight} photos ({a.look})", "runs": runs, "mean": mean,
                    "targets": TARGETS})


if __name__ == "__main__":
    main()
