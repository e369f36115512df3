"""CDC latency: rows committed at a steady rate -> their Debezium events on Kafka.

Reports commit-to-Kafka latency p50/p99 and the rows/s achieved, each over --repeats runs (median and spread),
at two rates (targets, issue 13: p99 <= 200 ms at 1,000 rows/s in every run, <= 500 ms at 2,000 rows/s), and the
stack's start time from a warm jar cache (target <= 60 s): a fresh private stack, then a restart over its state.
With --sweep, each Debezium, Connect-producer and JVM setting in SWEEP is measured on its own against the
settings in use (one change at a time, the baseline measured again at the end to show the drift).

    .venv/bin/python -m bench.cdc_latency.run [--rate 1000] [--high-rate 2000] [--seconds 10] [--sweep]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import TopicPartition

import connectors
from bench.stats import exit_cleanly_on_sigterm, machine_note, median_spread, report, summary_ms
from localsystem.stack import LocalStack
from localsystem.stack.kafka import Connect
from sightscan import db, kafka
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


def measure(settings, city_id: int, rate: float, seconds: float, writers: int, warmup: float) -> dict[str, float]:
    """One run: `warmup` s at the rate unmeasured (Connect's JIT), then `seconds` measured."""
    if warmup:
        insert_at_rate(settings, city_id, rate, warmup, writers)
        time.sleep(2)
    receiver = Receiver(settings, change_topic("images"))
    receiver.start()
    committed = insert_at_rate(settings, city_id, rate, seconds, writers)
    elapsed_insert = max(committed.values()) - min(committed.values())
    deadline = time.time() + 30
    while len(set(committed) & set(receiver.arrived)) < len(committed) and time.time() < deadline:
        time.sleep(0.1)
    receiver.stop.set()
    receiver.join()
    latencies = [receiver.arrived[i] - t for i, t in committed.items() if i in receiver.arrived]
    return {"achieved_rows_s": len(committed) / elapsed_insert, "lost": len(committed) - len(latencies),
            **{k: v for k, v in summary_ms(latencies).items() if k in ("p50_ms", "p99_ms")}}


def repeated(name: str, runs: int, measure_once: Callable[[], dict[str, float]]) -> dict[str, str]:
    results = []
    for _ in range(runs):
        results.append(measure_once())
        print(f"  {name}: p50 {results[-1]['p50_ms']:.1f} ms, p99 {results[-1]['p99_ms']:.1f} ms at "
              f"{results[-1]['achieved_rows_s']:.0f} rows/s; {machine_note()}", flush=True)
    return {f"{name}_p99": median_spread([r["p99_ms"] for r in results], " ms"),
            f"{name}_p50": median_spread([r["p50_ms"] for r in results], " ms"),
            f"{name}_rows_s": median_spread([r["achieved_rows_s"] for r in results], digits=0),
            f"{name}_rows_lost": sum(r["lost"] for r in results)}


# One setting changed at a time from what connectors/ and the stack use; "jvm" variants restart Connect.
SWEEP: list[tuple[str, str, dict[str, str]]] = [
    ("max.batch.size=512", "connector", {"max.batch.size": "512"}),
    # Debezium needs max.queue.size above max.batch.size (Connect answers a bare 500 otherwise).
    ("max.batch.size=8192", "connector", {"max.batch.size": "8192", "max.queue.size": "32768"}),
    ("poll.interval.ms=5", "connector", {"poll.interval.ms": "5"}),
    ("poll.interval.ms=100", "connector", {"poll.interval.ms": "100"}),
    ("linger.ms=0", "connector", {"producer.override.linger.ms": "0"}),
    ("linger.ms=20", "connector", {"producer.override.linger.ms": "20"}),
    ("batch.size=262144", "connector", {"producer.override.batch.size": "262144"}),
    ("compression=lz4", "connector", {"producer.override.compression.type": "lz4"}),
    ("compression=zstd", "connector", {"producer.override.compression.type": "zstd"}),
    ("gc=G1", "jvm", {"jvm_options": "-XX:+UseG1GC"}),
    ("gc=Parallel", "jvm", {"jvm_options": "-XX:+UseParallelGC"}),
    ("heap=1g", "jvm", {"jvm_heap": "1g"}),
]


def with_variant(stack: LocalStack, kind: str, change: dict[str, str]) -> Callable[[], None]:
    """Apply one variant; returns what puts the baseline back."""
    settings = stack.settings
    if kind == "connector":
        connectors.register(settings, change)
        connectors.wait_running(settings)

        def restore() -> None:
            connectors.register(settings)
            connectors.wait_running(settings)
        return restore
    base = stack.connect
    variant = Connect(dataclasses.replace(settings, **change), base.java, base.classpath, base.plugin_path)
    base.stop()
    variant.start()
    connectors.wait_running(settings)

    def restore_jvm() -> None:
        variant.stop()
        base.start()
        connectors.wait_running(settings)
    return restore_jvm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--high-rate", type=float, default=2000, help="the second rate measured (0: none)")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--writers", type=int, default=4, help="concurrent writer connections")
    parser.add_argument("--warmup", type=float, default=10, help="seconds at the rate before measuring (JIT)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweep", action="store_true",
                        help="also measure each Debezium, Connect-producer and JVM setting of SWEEP, one at a time")
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
            print(f"  machine at the start: {machine_note()}", flush=True)

            def at(rate: float, warmup: float = args.warmup) -> Callable[[], dict[str, float]]:
                return lambda: measure(settings, city.id, rate, args.seconds, args.writers, warmup)

            figures: dict[str, object] = {"writers": args.writers, "seconds_per_run": args.seconds}
            figures.update(repeated(f"at_{args.rate:.0f}_rows_s", args.repeats, at(args.rate)))
            if args.high_rate:
                figures.update(repeated(f"at_{args.high_rate:.0f}_rows_s", args.repeats, at(args.high_rate)))
            if args.sweep:
                for name, kind, change in SWEEP:
                    try:
                        restore = with_variant(stack, kind, change)
                    except connectors.ConnectorError as exc:  # a refused variant is a finding, not the end
                        print(f"  {name}: refused: {exc}", flush=True)
                        figures[f"{name} p99"] = f"refused ({str(exc)[:120]})"
                        connectors.register(settings)
                        connectors.wait_running(settings)
                        continue
                    try:
                        # Each variant gets its own warm-up: a restarted JVM is cold.
                        variant = repeated(name, args.repeats, at(args.rate, args.warmup if kind == "jvm" else 3))
                    finally:
                        restore()
                    figures[f"{name} p99"] = variant[f"{name}_p99"]
                baseline = repeated("baseline_again", args.repeats, at(args.rate, 3))
                figures["baseline again (drift) p99"] = baseline["baseline_again_p99"]
            figures["machine_at_the_end"] = machine_note()
            report("cdc_latency", figures)
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
