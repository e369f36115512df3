"""Stream agents: the state's cost per event as a city grows, the mart agent's throughput with 1, 2 and 4 workers,
commit-to-mart latency and threshold-to-command latency; each measured --repeats times (median and spread).

    .venv/bin/python -m bench.streams.run [--events 40000] [--workers 1,2,4] [--partitions 8] [--repeats 3]

Targets (issue 13): >= 10,000 events/s on one worker and near-linear scaling with 2; p99 commit -> mart row
<= 100 ms; p99 threshold-crossing commit -> training request <= 200 ms.

Throughput: the cities are requested through the warehouse (their change events reach the workers, which then
send crawl and labelling requests as in a running system); their image change events are produced straight onto
the change topic (Debezium's envelope, as fast as the producer goes: the worker, not CDC, is measured) once every
worker of the group has its partitions; the rate is taken from the first mart written to the last.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import TopicPartition

from bench.stats import exit_cleanly_on_sigterm, machine_note, median, median_spread, report, summary_ms
from bench.streams import state_cost
from localsystem.stack import LocalStack
from sightscan import db, kafka
from sightscan.topics import WATCHED_TABLES, change_topic, command_topic, training_events_topic
from streams.rekey import rekey_group
from streams.settings import StreamsSettings
from tests.support.stack import ephemeral_settings
from tests.support.streams import Worker, start_at_the_end

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


def image_event(image_id: int, city_id: int, lsn: int) -> bytes:
    """An image insert as Debezium writes it (the envelope the rekeyer reads)."""
    return json.dumps({"op": "c", "before": None, "source": {"lsn": lsn, "txId": lsn},
                       "after": {"id": image_id, "city_id": city_id, "sight_id": None}}).encode()


def group_members(admin, group: str) -> int:
    """Members of a consumer group that is stable (0 while it rebalances). `admin` must outlive the call: a client
    destroyed before its futures complete never completes them."""
    from confluent_kafka import ConsumerGroupState

    try:
        described = admin.describe_consumer_groups([group], request_timeout=5)[group].result(10)
    except Exception:  # no coordinator yet (a fresh cluster), or the group is not there yet
        return 0
    return len(described.members) if described.state == ConsumerGroupState.STABLE else 0


def throughput(settings, home: Path, n: int, cities: int, workers: int, env: dict[str, str] | None = None) -> float:
    """events/s of `workers` workers (one group) draining n image events spread over `cities` cities."""
    run = uuid.uuid4().hex[:6]
    app_id = f"bench-throughput-{run}"
    start_at_the_end(settings, rekey_group(app_id), [*(change_topic(t) for t in WATCHED_TABLES),
                                                     training_events_topic()])
    # The cities after the group's start: their own change events reach the workers, as in a running system. (A city
    # the state has never seen emits no labelling request, and its images would pile up waiting for one.)
    with db.transaction(settings) as cur:
        city_ids = [db.request_city(cur, f"Throughput {run} {c}")[0].id for c in range(cities)]
    started = [Worker(settings, app_id, home / f"throughput-{run}-{w}.log", {**ENV, **(env or {})}).start()
               for w in range(workers)]
    try:
        deadline, admin = time.monotonic() + 120, kafka.admin(settings)
        while group_members(admin, app_id) != workers:  # every worker has its partitions: no rebalance later
            if time.monotonic() > deadline:
                tail = (home / f"throughput-{run}-0.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{workers} workers did not form a stable group in 120 s; a worker's log:\n{tail}")
            time.sleep(0.5)
        producer = kafka.producer(settings, **{"linger.ms": 20, "batch.size": 1_000_000})
        topic, base = change_topic("images"), int(time.time() * 1000) * 1000
        for i in range(n):
            producer.produce(topic, key=json.dumps({"id": base + i}).encode(),
                             value=image_event(base + i, city_ids[i % cities], base + i))
            if i % 10000 == 0:
                producer.poll(0)
        producer.flush(60)
        conn = db.connect(settings)

        def total() -> int:
            with conn.cursor() as cur:
                cur.execute("SELECT coalesce(sum(images), 0) FROM city_marts WHERE city_id = ANY(%s)", (city_ids,))
                count = cur.fetchone()[0]
            conn.commit()
            return count

        deadline = time.monotonic() + 120
        while (first_count := total()) == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers wrote no mart in 120 s; see {home}")
            time.sleep(0.005)
        first = last_progress = time.monotonic()
        count = first_count
        # A stall (no mart moved for 60 s) is a lost event, not a slow machine: say so at once.
        while count < n and time.monotonic() - last_progress < 60:
            time.sleep(0.02)
            if (now := total()) != count:
                count, last_progress = now, time.monotonic()
        elapsed = last_progress - first
        conn.close()
    finally:
        for w in started:
            w.stop()
    if count < n:
        raise RuntimeError(f"{workers} workers stalled at {count} of {n} events (nothing counted for 60 s): events "
                           f"were lost; the workers' logs are in {home}")
    return (count - first_count) / elapsed


def commit_to_mart(settings, samples: int) -> list[float]:
    with db.transaction(settings) as cur:
        city, _ = db.request_city(cur, f"Latency City {uuid.uuid4().hex[:6]}")
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
    parser.add_argument("--events", type=int, default=40000)
    parser.add_argument("--cities", type=int, default=20)
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure (one group each run)")
    parser.add_argument("--partitions", type=int, default=8, help="TOPIC_PARTITIONS of the private stack")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--crossings", type=int, default=30)
    parser.add_argument("--skip-state-cost", action="store_true")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()
    if not args.skip_state_cost:
        state_cost.main([])
    print(f"  machine at the start: {machine_note()}", flush=True)
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
        home = Path(tmp)
        stack = LocalStack(ephemeral_settings(home / "stack", TOPIC_PARTITIONS=str(args.partitions)),
                           progress=lambda m: print(f"  [stack] {m}", flush=True))
        try:
            stack.up()
            settings = stack.settings
            # Latency first: a new group reads the change topics from their start, and after the throughput runs
            # they hold hundreds of thousands of events it would have to drain before its first sample.
            worker = Worker(settings, "bench-latency", home / "latency.log", ENV).start()
            try:
                mart, cmd = [], []
                for _ in range(args.repeats):
                    mart.append(commit_to_mart(settings, args.samples))
                    cmd.append(crossing_to_command(settings, args.crossings))
                    print(f"  commit-to-mart {summary_ms(mart[-1])}, crossing {summary_ms(cmd[-1])}", flush=True)
            finally:
                worker.stop()
            for name, runs in (("commit_to_mart", mart), ("threshold_to_training_request", cmd)):
                for q in ("p50_ms", "p99_ms"):
                    figures[f"{name}_{q}"] = median_spread([summary_ms(r)[q] for r in runs], " ms")
            # A first run warms the brokers' and Connect's JVMs (JIT): it was the slowest in every sweep, so it is
            # printed and left out of the figures.
            warm_up = throughput(settings, home, args.events, args.cities, 1)
            print(f"  warm-up, 1 worker (not counted): {warm_up:.0f} events/s", flush=True)
            rates: dict[int, list[float]] = {}
            for workers in (int(w) for w in args.workers.split(",")):
                for _ in range(args.repeats):
                    rates.setdefault(workers, []).append(throughput(settings, home, args.events, args.cities,
                                                                    workers))
                    print(f"  {workers} worker(s): {rates[workers][-1]:.0f} events/s", flush=True)
                figures[f"mart_agent_events_per_s_{workers}_workers"] = median_spread(rates[workers], digits=0)
            if 1 in rates:
                for workers in rates:
                    if workers != 1:
                        figures[f"scaling_{workers}_workers_vs_1"] = f"{median(rates[workers]) / median(rates[1]):.2f}x"
                # The earlier facts messages, one fact each, measured in the same run (state buckets stay on).
                before = [throughput(settings, home, args.events, args.cities, 1, {"STREAMS_FACTS_PER_MESSAGE": "1"})
                          for _ in range(args.repeats)]
                print(f"  1 worker, one fact per message: {', '.join(f'{r:.0f}' for r in before)} events/s", flush=True)
                figures["mart_agent_events_per_s_1_worker_one_fact_per_message"] = median_spread(before, digits=0)
                figures["batched_facts_vs_one_fact_per_message"] = f"{median(rates[1]) / median(before):.2f}x"
                # The marts agent's earlier batch (STREAMS_BATCH_SIZE 100 messages), in the same run.
                small = [throughput(settings, home, args.events, args.cities, 1, {"STREAMS_BATCH_SIZE": "100"})
                         for _ in range(args.repeats)]
                print(f"  1 worker, batches of 100 messages: {', '.join(f'{r:.0f}' for r in small)} events/s",
                      flush=True)
                figures["mart_agent_events_per_s_1_worker_batches_of_100"] = median_spread(small, digits=0)
                batch = StreamsSettings.from_env().batch_size  # what the workers above ran with
                figures[f"batches_of_{batch}_vs_100"] = f"{median(rates[1]) / median(small):.2f}x"
            figures["events_per_run"] = args.events
            figures["partitions"] = args.partitions
            figures["machine_at_the_end"] = machine_note()
            report("streams", figures)
        finally:
            stack.down(purge=True)


if __name__ == "__main__":
    main()
