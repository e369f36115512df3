"""Stream-worker processes and warehouse truths, for the streams tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import TopicPartition

from sightscan import db, kafka
from sightscan.children import stop_popen
from sightscan.config import Settings

ROOT = Path(__file__).resolve().parents[2]

class Worker:
    """One `python -m streams worker` process."""

    def __init__(self, settings: Settings, app_id: str, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.env = {**os.environ, **settings.env(), **(env or {}), "STREAMS_APP_ID": app_id,
                    "SIGHTSCAN_LOG_FORMAT": "console", "SIGHTSCAN_LOG_LEVEL": "INFO"}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen([sys.executable, "-m", "streams", "worker", "-l", "info"], cwd=ROOT,
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc:
            stop_popen(self.proc, timeout=30)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# The marts as SQL counts them (streams/state.py, docs/corrections.md): an image is labelled when a label of any kind
# names a sight; "no landmark" when none does and the labeller found none; corrections one per label.
TRUTH_SQL = """
SELECT c.id,
  (SELECT count(*) FROM images i WHERE i.city_id = c.id),
  (SELECT count(*) FROM images i WHERE i.city_id = c.id
     AND EXISTS (SELECT 1 FROM labels l WHERE l.image_id = i.id AND l.sight_id IS NOT NULL)),
  (SELECT count(*) FROM images i WHERE i.city_id = c.id
     AND EXISTS (SELECT 1 FROM labels l WHERE l.image_id = i.id AND l.kind = 'labeller')
     AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.image_id = i.id AND l.sight_id IS NOT NULL)),
  (SELECT count(*) FROM models m WHERE m.city_id = c.id),
  (SELECT count(*) FROM labels l WHERE l.city_id = c.id AND l.kind = 'user-box'),
  (SELECT count(*) FROM labels l WHERE l.city_id = c.id AND l.kind = 'user-negative')
FROM cities c WHERE c.id = ANY(%s)
"""

SIGHT_TRUTH_SQL = """
SELECT s.id, (SELECT count(DISTINCT l.image_id) FROM labels l WHERE l.sight_id = s.id),
  (SELECT count(*) FROM labels l WHERE l.sight_id = s.id AND l.kind = 'user-box')
FROM sights s WHERE s.city_id = ANY(%s)
"""


def truth(settings: Settings, city_ids: list[int]) -> tuple[dict, dict]:
    with db.transaction(settings) as cur:
        cur.execute(TRUTH_SQL, (city_ids,))
        cities = {r[0]: tuple(r[1:]) for r in cur.fetchall()}
        cur.execute(SIGHT_TRUTH_SQL, (city_ids,))
        sights = {r[0]: tuple(r[1:]) for r in cur.fetchall()}
    return cities, sights


def marts(settings: Settings, city_ids: list[int]) -> tuple[dict, dict]:
    with db.transaction(settings) as cur:
        cur.execute("SELECT city_id, images, labelled_images, no_landmark_images, models, user_boxes, user_negatives"
                    " FROM city_marts WHERE city_id = ANY(%s)", (city_ids,))
        cities = {r[0]: tuple(r[1:]) for r in cur.fetchall()}
        cur.execute("SELECT sight_id, labelled_images, user_boxes FROM sight_marts WHERE city_id = ANY(%s)",
                    (city_ids,))
        sights = {r[0]: tuple(r[1:]) for r in cur.fetchall()}
    return cities, sights


def wait_marts_match(settings: Settings, city_ids: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        expected, got = truth(settings, city_ids), marts(settings, city_ids)
        if expected == got:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"marts never matched SQL counts.\nexpected {expected}\ngot      {got}")
        time.sleep(0.5)


# What makes a command the same command. Copies of one request id come from a resend after a crash (identical)
# or from a worker that finished a batch of partitions it was losing in a rebalance (no fencing: see README);
# such a copy names the same city and crossing, but its snapshot fields (ts_ms, labelled_images, classes) may be
# those of another batch. Consumers deduplicate by request id (the trainer by the model it already stored).
IDENTITY = ("request_id", "city_id", "reason", "epochs", "max_sights_per_city", "max_images_per_sight")


def one_per_crossing(cmds: list[dict]) -> dict[str, dict]:
    """Distinct commands by request id; copies of one id must be the same command."""
    by_id: dict[str, dict] = {}
    for c in cmds:
        first = by_id.setdefault(c["request_id"], c)
        assert {k: first.get(k) for k in IDENTITY} == {k: c.get(k) for k in IDENTITY}, \
            f"two different commands share {c['request_id']}: {first} {c}"
    return by_id


def start_at_the_end(settings: Settings, group: str, topics: list[str]) -> None:
    """Commit `group`'s offsets at the end of each topic: a new group would otherwise read them from their start,
    and work through every earlier test's (or benchmark run's) events first."""
    consumer = kafka.consumer(settings, group)
    try:
        ends = []
        for topic in topics:
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                ends.append(TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                                                    timeout=10)[1]))
        if ends:  # topics not created yet hold nothing to skip
            consumer.commit(offsets=ends, asynchronous=False)
    finally:
        consumer.close()
