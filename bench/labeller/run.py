"""Labeller benchmark: images/s end to end (labelling request on Kafka -> labels in the warehouse) through the
real google-cloud-vision client and the local Vision server with a simulated service time, batched (16 images per
Vision request) against one image per request, in the same run, on the same images.

    .venv/bin/python -m bench.labeller.run [--images 320] [--single-images 160] [--latency-ms 100] [--per-image-ms 5]
                                 [--stack-home DIR]

The Vision service time is simulated as latency-ms per HTTP request plus per-image-ms per image in it. Without
--stack-home it starts a private stack (PostgreSQL, Kafka, Debezium Connect) and deletes it after; with it, it
reuses a running one (e.g. the tests' SIGHTSCAN_TEST_STACK_HOME). Each mode gets its own city, topic prefix and
consumer group; the timed part starts once the labeller has handled a warm-up request.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import Producer

from bench.stats import exit_cleanly_on_sigterm, report
from consumers import warehouse
from consumers.service import LabellerService
from consumers.settings import LabellerSettings
from localsystem.demo.city import render_city
from sightscan import db, kafka
from sightscan.config import Settings
from sightscan.topics import command_dead_letter_topic, command_topic
from tests.support.stack import ephemeral_stack
from tests.support.vision_server import FakeVision, VisionServer, box_landmark

REQUEST_SIZE = 16  # LABELLING_BATCH_SIZE: images per labelling request from the stream agent


def render(n: int, out: Path) -> tuple[list[dict], dict[str, bytes]]:
    sights = 5
    render_city(out, city="Benchville", seed=21, sights=sights, per_sight=-(-n // sights))
    coco = json.loads((out / "annotations.json").read_text())
    images = coco["images"][:n]
    boxes = {a["image_id"]: a["bbox"] for a in coco["annotations"]}
    for img in images:
        img["bbox"] = boxes[img["id"]]
    return images, {img["file_name"]: (out / img["file_name"]).read_bytes() for img in images}


def seed(settings: Settings, images: list[dict], data: dict[str, bytes], name: str) -> tuple[int, list[int]]:
    with db.transaction(settings) as cur:
        city, _ = db.request_city(cur, f"{name} {uuid.uuid4().hex[:8]}")
        sights = {s: db.ensure_sight(cur, city.id, s, "crawl") for s in sorted({i["query_sight"] for i in images})}
        ids = [db.insert_image(cur, db.NewImage(city.id, data[i["file_name"]], "image/jpeg", i["width"], i["height"],
                                                "crawl", sights[i["query_sight"]])) for i in images]
    return city.id, ids


def publish(producer: Producer, settings: Settings, city_id: int, ids: list[int]) -> None:
    topic = command_topic("labelling", settings.topic_prefix)
    for seq, start in enumerate(range(0, len(ids), REQUEST_SIZE), 1):
        command = {"request_id": f"label-{city_id}-{seq}", "city_id": city_id, "city": "bench",
                   "image_ids": ids[start:start + REQUEST_SIZE], "ts_ms": int(time.time() * 1000)}
        producer.produce(topic, json.dumps(command).encode(), key=str(city_id).encode())
    producer.flush(30)


def labelled(settings: Settings, city_id: int) -> int:
    with db.transaction(settings) as cur:
        cur.execute("SELECT count(DISTINCT image_id) FROM labels WHERE city_id = %s", (city_id,))
        return cur.fetchone()[0]


def wait_labelled(settings: Settings, city_id: int, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while labelled(settings, city_id) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {labelled(settings, city_id)} of {n} images labelled after {timeout} s")
        time.sleep(0.02)


def run_mode(base: Settings, server: VisionServer, images: list[dict], data: dict[str, bytes], batch: int,
             latency_s: float, per_image_s: float) -> dict:
    settings = dataclasses.replace(base, topic_prefix=f"bench{uuid.uuid4().hex[:8]}",
                                   max_google_vision_calls_per_new_city=10 * len(images) + 10)
    server.fake.latency_s, server.fake.per_image_s = latency_s, per_image_s
    lsettings = LabellerSettings.from_env({}, vision_endpoint=server.endpoint, batch_size=batch, timeout_s=30.0)
    service = LabellerService(settings, lsettings)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    producer = kafka.producer(settings)
    try:
        warm_city, warm_ids = seed(settings, images[:2], data, "Warmup")  # group join, connections, imports
        publish(producer, settings, warm_city, warm_ids)
        wait_labelled(settings, warm_city, len(warm_ids), 60)
        city_id, ids = seed(settings, images, data, "Benchville")
        before = len(server.fake.requests)
        t0 = time.perf_counter()
        publish(producer, settings, city_id, ids)
        wait_labelled(settings, city_id, len(ids), 600)
        elapsed = time.perf_counter() - t0
    finally:
        service.close()
        thread.join(30)
        producer.flush(10)
        del producer, service
        gc.collect()  # the Kafka clients go now, not after the private stack is down (their reconnect noise)
        delete_topics(settings)
    with db.transaction(settings) as cur:
        costs = warehouse.labelling_costs(cur, city_id)
    return {"images": len(ids), "seconds": round(elapsed, 2), "images_per_s": round(len(ids) / elapsed, 1),
            "vision_requests": len(server.fake.requests) - before, "calls_spent": costs.calls_spent}


def delete_topics(settings: Settings) -> None:
    """This mode's command topics: a reused stack (--stack-home) would otherwise keep them."""
    admin = kafka.admin(settings)
    names = [command_topic("labelling", settings.topic_prefix), command_dead_letter_topic(settings.topic_prefix)]
    for future in admin.delete_topics(names, operation_timeout=30).values():
        with contextlib.suppress(Exception):  # one never created is fine
            future.result(30)


@contextlib.contextmanager
def stack_settings(home: str | None) -> Iterator[Settings]:
    if home:
        ports = json.loads((Path(home) / "ports.json").read_text())
        settings = Settings.from_env({**os.environ, **ports})
        db.migrate(settings)
        yield settings
        return
    with tempfile.TemporaryDirectory(prefix="bench-labeller-") as tmp, ephemeral_stack(Path(tmp) / "stack") as stack:
        yield stack.settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=320, help="images labelled in the batched runs")
    p.add_argument("--single-images", type=int, default=160,
                   help="images labelled one per request (fewer: that mode is slow; rates are per image)")
    p.add_argument("--latency-ms", type=float, default=100.0, help="simulated Vision time per HTTP request")
    p.add_argument("--per-image-ms", type=float, default=5.0, help="simulated Vision time per image in a request")
    p.add_argument("--stack-home", help="reuse the running stack whose ports.json is in this folder")
    a = p.parse_args()
    exit_cleanly_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="bench-labeller-city-") as tmp:
        images, data = render(a.images, Path(tmp))
    fake = FakeVision()
    for img in images:  # every image shows its sight, so every label is a matched landmark with a box
        x, y, w, h = img["bbox"]
        fake.know_image(data[img["file_name"]], [box_landmark(img["query_sight"], (round(x), round(y),
                                                                                   round(x + w), round(y + h)))])
    latency, per_image = a.latency_ms / 1000, a.per_image_ms / 1000
    with stack_settings(a.stack_home) as settings, VisionServer(fake) as server:
        print(f"  {len(images)} images, Vision simulated as {a.latency_ms:g} ms/request + {a.per_image_ms:g} "
              "ms/image", flush=True)
        batched = run_mode(settings, server, images, data, 16, latency, per_image)
        print(f"  batched (16/request): {batched}", flush=True)
        single = run_mode(settings, server, images[:a.single_images], data, 1, latency, per_image)
        print(f"  single (1/request):   {single}", flush=True)
        overhead = run_mode(settings, server, images, data, 16, 0.0, 0.0)
        print(f"  batched, no Vision latency (the labeller's own cost): {overhead}", flush=True)
    report("labeller", {
        "images_batched": batched["images"],
        "images_single": single["images"],
        "vision_latency_ms_per_request": a.latency_ms,
        "vision_ms_per_image": a.per_image_ms,
        "batched_images_per_s": batched["images_per_s"],
        "single_images_per_s": single["images_per_s"],
        "batched_over_single": round(batched["images_per_s"] / single["images_per_s"], 1),
        "batched_vision_requests": batched["vision_requests"],
        "single_vision_requests": single["vision_requests"],
        "no_latency_images_per_s": overhead["images_per_s"],
        "calls_spent_per_run": batched["calls_spent"],
    })


if __name__ == "__main__":
    main()
