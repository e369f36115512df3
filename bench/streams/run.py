"""Stream agents: throughput of the mart agent on one worker, commit-to-mart latency, threshold-to-command latency.

    .venv/bin/python -m bench.streams.run [--events 20000] [--samples 200] [--crossings 30]

Targets (issue 3): >= 5,000 events/s on one worker; p99 image commit -> mart row <= 500 ms; p99 commit that
crosses the training threshold -> training request on its topic <= 1 s (the original polled every 3,600 s).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import TopicPartition

from bench.stats import exit_cleanly_on_sigterm, report, summary_ms
from sightscan import db, kafka
from sightscan.stack import LocalStack
from sightscan.topics import change_topic, command_topic
from tests.support.stack import ephemeral_settings
from tests.support.streams import Worker

ENV = {"MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING": "10", "MIN_IMAGE_NUMBER_PER_LABEL": "3"}


def mart_images(settings, city_id: int, conn=None) -> int:
    own = conn is None
    conn = conn or db.connect(settings)
    with conn.cursor() as cur:
        cur.execute("SELECT images FROM city_marts WHERE city_id = %s", (city_id,))
        row = cur.fetchone()
    conn.commit()
    if own:
        conn.close()
    return row[0] if row else 0


def topic_size(settings, topic: str) -> int:
    c = kafka.consumer(settings, "bench-size")
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    total = sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    c.close()
    return total


def throughput(settings, home: Path, n: int, cities: int) -> dict:
    """Load n image events over `cities` cities while no worker runs, then time one worker draining them.

    Cities hold at most MAX_SIGHTS_PER_CITY x MAX_IMAGES_PER_SIGHT images (2,000 by default), so n is spread."""
    with db.transaction(settings) as cur:
        city_ids = [db.request_city(cur, f"Throughput City {c}")[0].id for c in range(cities)]
    before = topic_size(settings, change_topic("images")) if n else 0
    batch = 2000
    for start in range(0, n, batch):
        with db.transaction(settings) as cur:
            for i in range(start, min(n, start + batch)):
                db.insert_image(cur, db.NewImage(city_ids[i % cities], f"t{i}-{uuid.uuid4()}".encode(),
                                                 "image/jpeg", 8, 8, "crawl"))
    print(f"  loaded {n} image rows; waiting for their change events", flush=True)
    while topic_size(settings, change_topic("images")) < before + n:  # Debezium has published them all
        time.sleep(0.2)
    worker = Worker(settings, "bench-throughput", home / "throughput.log", ENV).start()
    try:
        conn = db.connect(settings)

        def total() -> int:
            return sum(mart_images(settings, c, conn) for c in city_ids)

        deadline = time.monotonic() + 120
        while total() == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker wrote no mart in 120 s; see {home / 'throughput.log'}")
            time.sleep(0.005)
        first = time.monotonic()
        seen_at_first = total()
        deadline = first + 600
        while (count := total()) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        elapsed = time.monotonic() - first
        conn.close()
    finally:
        worker.stop()
    # Each image event passes both agents (rekey, then marts).
    return {"events": n, "drained": count, "drain_seconds": round(elapsed, 2),
            "events_per_s": round((count - seen_at_first) / elapsed, 1) if elapsed else None}


def commit_to_mart(settings, samples: int) -> list[float]:
    with db.transaction(settings) as cur:
        city, _ = db.request_city(cur, "Latency City")
    conn, probe = db.connect(settings), db.connect(settings)
    latencies = []
    with conn.cursor() as cur:
        # Unmeasured warm-up: the worker has joined its group and counts this city before the first sample.
        db.insert_image(cur, db.NewImage(city.id, f"warm-{uuid.uuid4()}".encode(), "image/jpeg", 8, 8, "crawl"))
        conn.commit()
        deadline = time.monotonic() + 120
        while mart_images(settings, city.id, probe) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the latency worker counted nothing in 120 s")
            time.sleep(0.01)
        for i in range(1, samples + 1):
            db.insert_image(cur, db.NewImage(city.id, f"l{i}-{uuid.uuid4()}".encode(), "image/jpeg", 8, 8, "crawl"))
            conn.commit()
            committed = time.monotonic()
            while mart_images(settings, city.id, probe) < i + 1:
                time.sleep(0.002)
            latencies.append(time.monotonic() - committed)
            time.sleep(0.02)
    conn.close()
    probe.close()
    return latencies


def crossing_to_command(settings, crossings: int) -> list[float]:
    consumer = kafka.consumer(settings, "bench-cmd", **{"fetch.wait.max.ms": 10})
    topic = command_topic("training")
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p))[1])
                     for p in parts])
    latencies = []
    for k in range(crossings):
        with db.transaction(settings) as cur:
            city, _ = db.request_city(cur, f"Crossing {k} {uuid.uuid4().hex[:6]}")
            sights = [db.ensure_sight(cur, city.id, "Tower"), db.ensure_sight(cur, city.id, "Gate")]
            images = [db.insert_image(cur, db.NewImage(city.id, f"c{k}-{i}-{uuid.uuid4()}".encode(), "image/jpeg",
                                                       8, 8, "crawl", sights[i % 2])) for i in range(10)]
            for i in range(9):
                db.insert_label(cur, db.NewLabel(images[i], city.id, "bench", sights[i % 2], 0.9, (0, 0, 1, 1)))
        time.sleep(1.0)  # the first nine labels are counted; the tenth crosses the threshold
        with db.transaction(settings) as cur:
            db.insert_label(cur, db.NewLabel(images[9], city.id, "bench", sights[1], 0.9, (0, 0, 1, 1)))
        committed = time.monotonic()
        while time.monotonic() - committed < 60:
            msg = consumer.poll(1)
            if msg is not None and not msg.error() and json.loads(msg.value())["city_id"] == city.id:
                latencies.append(time.monotonic() - committed)
                break
        else:
            raise RuntimeError(f"no training request for city {city.id} within 60 s")
    consumer.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--cities", type=int, default=20)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--crossings", type=int, default=30)
    args = parser.parse_args()
    exit_cleanly_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
        home = Path(tmp)
        stack = LocalStack(ephemeral_settings(home / "stack"), progress=lambda m: print(f"  [stack] {m}", flush=True))
        try:
            stack.up()
            settings = stack.settings
            tput = throughput(settings, home, args.events, args.cities)
            print(f"  throughput: {tput}", flush=True)
            worker = Worker(settings, "bench-latency", home / "latency.log", ENV).start()
            try:
                mart = commit_to_mart(settings, args.samples)
                print(f"  commit-to-mart: {summary_ms(mart)}", flush=True)
                cmd = crossing_to_command(settings, args.crossings)
            finally:
                worker.stop()
            report("streams", {
                "mart_agent_events_per_s": tput["events_per_s"],
                "events_drained": tput["events"],
                **{f"commit_to_mart_{k}": v for k, v in summary_ms(mart).items()},
                **{f"threshold_to_training_request_{k}": v for k, v in summary_ms(cmd).items()},
            })
        finally:
            stack.down(purge=True)


if __name__ == "__main__":
    main()
