"""CDC latency: rows committed at a steady rate -> their Debezium events on Kafka.

Reports commit-to-Kafka latency p50/p99 and the rows/s achieved (target: p99 <= 200 ms at 1,000 rows/s), and the
stack's start time from a warm jar cache (target <= 60 s): a fresh private stack, then a restart over its state.

    .venv/bin/python -m bench.cdc_latency.run [--rate 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import TopicPartition

from bench.stats import exit_cleanly_on_sigterm, report, summary_ms
from sightscan import db, kafka
from sightscan.stack import LocalStack
from sightscan.topics import change_topic
from tests.support.stack import ephemeral_settings


class Receiver(threading.Thread):
    """Reads the images topic from its current end and notes when each image id arrives."""

    def __init__(self, settings, topic: str) -> None:
        super().__init__(daemon=True)
        self.arrived: dict[int, float] = {}
        self.stop = threading.Event()
        self.consumer = kafka.consumer(settings, "bench-cdc", **{"fetch.wait.max.ms": 10})
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        parts = [TopicPartition(topic, p) for p in meta.partitions]
        self.consumer.assign([TopicPartition(topic, tp.partition,
                                             self.consumer.get_watermark_offsets(tp, timeout=10)[1]) for tp in parts])

    def run(self) -> None:
        while not self.stop.is_set():
            msg = self.consumer.poll(0.05)
            if msg is None or msg.error() or not msg.value():
                continue
            now = time.time()
            value = json.loads(msg.value())
            if value.get("op") == "c":
                self.arrived[value["after"]["id"]] = now
        self.consumer.close()


def _writer(settings, city_id: int, rate: float, seconds: float, offset: float, tag: str,
            committed: dict[int, float]) -> None:
    """One image row per transaction, paced to `rate` on this connection."""
    conn = db.connect(settings)
    start, n = time.monotonic() + offset, int(rate * seconds)
    with conn.cursor() as cur:
        for i in range(n):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            image_id = db.insert_image(cur, db.NewImage(city_id, f"bench-{tag}-{i}-{time.time_ns()}".encode() * 8,
                                                        "image/jpeg", 64, 48, "crawl"))
            conn.commit()
            committed[image_id] = time.time()
    conn.close()


def insert_at_rate(settings, city_id: int, rate: float, seconds: float, writers: int) -> dict[int, float]:
    """Rows at `rate` in all, from `writers` connections (as several services write at once); id -> commit time.

    Each commit waits for its WAL flush, so one connection alone tops out near 1 / fsync latency."""
    committed: dict[int, float] = {}
    threads = [threading.Thread(target=_writer, args=(settings, city_id, rate / writers, seconds,
                                                      w / rate, str(w), committed)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return committed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--writers", type=int, default=4, help="concurrent writer connections")
    parser.add_argument("--warmup", type=float, default=10, help="seconds at the rate before measuring (JIT)")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()

    with tempfile.TemporaryDirectory(prefix="bench-cdc-") as home:
        stack = LocalStack(ephemeral_settings(Path(home)), progress=lambda m: print(f"  [stack] {m}", flush=True))
        try:
            cold = stack.up()
            settings = stack.settings
            with db.transaction(settings) as cur:
                city, _ = db.request_city(cur, "Bench City")
                db.insert_image(cur, db.NewImage(city.id, b"warm-up", "image/jpeg", 1, 1, "crawl"))
            time.sleep(3)  # let the first event create the topic
            if args.warmup:  # the same load first, unmeasured: Connect's JIT compiles its hot paths
                insert_at_rate(settings, city.id, args.rate, args.warmup, args.writers)
                time.sleep(5)
            receiver = Receiver(settings, change_topic("images"))
            receiver.start()
            committed = insert_at_rate(settings, city.id, args.rate, args.seconds, args.writers)
            elapsed_insert = max(committed.values()) - min(committed.values())
            deadline = time.time() + 30
            while len(set(committed) & set(receiver.arrived)) < len(committed) and time.time() < deadline:
                time.sleep(0.1)
            receiver.stop.set()
            receiver.join()
            latencies = [receiver.arrived[i] - t for i, t in committed.items() if i in receiver.arrived]
            report("cdc_latency", {
                "target_rate_rows_s": args.rate,
                "writers": args.writers,
                "achieved_rate_rows_s": round(len(committed) / elapsed_insert, 1),
                "rows_committed": len(committed),
                "rows_received": len(latencies),
                **{f"commit_to_kafka_{k}": v for k, v in summary_ms(latencies).items() if k != "n"},
            })
            stack.down()
            restart = stack.up()
            report("stack_start", {
                "fresh_state_warm_jar_cache_s": round(cold["total"], 1),
                "restart_over_state_s": round(restart["total"], 1),
                "fresh_steps_s": {k: round(v, 1) for k, v in cold.items() if k != "total"},
            })
        finally:
            stack.down(purge=True)


if __name__ == "__main__":
    main()
