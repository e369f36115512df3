"""The shared command loop (crawler, labeller, trainer) survives a refused offset commit, on a real broker.

A worker whose command outlasts max.poll.interval.ms is put out of its group; its commit is then refused. The loop
must not die of it: it rejoins, is handed the command again (its offset was never committed) and, handlers being
idempotent, finishes it and commits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from sightscan import kafka
from sightscan.commands import CommandWorker
from sightscan.config import Settings
from sightscan.topics import command_dead_letter_topic, command_topic, ensure_topics


@pytest.fixture
def isolated(settings: Settings) -> Iterator[Settings]:
    own = dataclasses.replace(settings, topic_prefix=f"cmdtest-{uuid.uuid4().hex[:8]}")
    yield own
    admin = kafka.admin(own)
    for future in admin.delete_topics([command_topic("crawl", own.topic_prefix),
                                       command_dead_letter_topic(own.topic_prefix)], operation_timeout=10).values():
        with contextlib.suppress(Exception):
            future.result(15)


def test_a_command_outlasting_the_poll_interval_is_done_again_and_committed(isolated: Settings, caplog) -> None:
    caplog.set_level("WARNING", logger="sightscan.commands")
    topic = command_topic("crawl", isolated.topic_prefix)
    ensure_topics(isolated, [topic])
    group = f"cmdtest-{uuid.uuid4().hex[:8]}"
    calls: list[tuple[int, int]] = []

    def handle(command: dict[str, Any], msg: Any) -> dict[str, Any]:
        calls.append((msg.partition(), msg.offset()))
        if len(calls) == 1:
            time.sleep(12)  # past max.poll.interval.ms (7 s): the group evicts this member meanwhile
        return {"city_id": command["city_id"]}

    worker = CommandWorker(isolated, "crawl", group, handle, max_poll_interval_s=7,
                           consumer_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000})
    kafka.deliver(worker.producer, topic, json.dumps({"city_id": 1}).encode(), key=b"1")
    handled: list[int] = []
    runner = threading.Thread(target=lambda: handled.append(worker.run(max_commands=2, idle_exit_s=40)))
    runner.start()
    runner.join(120)
    assert not runner.is_alive(), "the command loop hung"
    assert handled, "the command loop died (a refused commit must not end it)"
    assert any("offset not committed" in r.getMessage() for r in caplog.records), "the first commit was refused"
    assert len(calls) == 2 and calls[0] == calls[1], f"expected the same command twice, got {calls}"

    probe = kafka.consumer(isolated, group)
    try:
        committed = probe.committed([TopicPartition(topic, calls[0][0])], timeout=10)[0].offset
    finally:
        probe.close()
    assert committed == calls[0][1] + 1, "the second, in-time handling committed the command's offset"
