"""streams/faust_fixes.py fixes 4 and 5 on a real broker. Fix 4: a partition its group never committed is read from
its start. Fix 5: Faust's livelock check does not crash on a partition whose position is being reset.

Faust drops the records it fetched while a partition's flow was paused (during recovery), and relies on seeking
"to the committed offset" to read them again. aiokafka does not seek a partition without a committed offset, so
those records were skipped: four stream workers starting together lost the first facts of one partition.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from faust.types import TP

from sightscan import kafka
from sightscan.config import Settings
from sightscan.topics import ensure_topics
from streams.faust_fixes import (
    _original_verify_event_path,
    install,
    position_known,
    seek_to_committed_or_beginning,
)


def _topic_with_records(settings: Settings, n: int) -> str:
    topic = f"fix4-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [topic])
    producer = kafka.producer(settings)
    for i in range(n):
        producer.produce(topic, f"record {i}".encode(), partition=0)
    assert producer.flush(30) == 0
    return topic


async def _positions_after_reading(settings: Settings, topic: str, read: int, commit_at: int | None,
                                   changelogs: set[str]) -> tuple[int, int, dict]:
    """(position after aiokafka's seek_to_committed, position after fix 4's, committed offsets) for a consumer
    of a fresh group that has fetched `read` records of partition 0 without committing them."""
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers.split(","),
                                group_id=f"fix4-{uuid.uuid4().hex[:8]}", enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([tp])
        if commit_at is not None:
            await consumer.commit({tp: OffsetAndMetadata(commit_at, "")})
            consumer.seek(tp, 0)
        taken = 0
        while taken < read:
            batch = await consumer.getmany(tp, timeout_ms=2000, max_records=read - taken)
            taken += len(batch.get(tp, []))
        await consumer.seek_to_committed()
        plain = await consumer.position(tp)
        committed = await seek_to_committed_or_beginning(consumer, changelogs)
        fixed = await consumer.position(tp)
        return plain, fixed, committed
    finally:
        await consumer.stop()


def test_a_partition_never_committed_goes_back_to_its_first_record(settings: Settings) -> None:
    topic = _topic_with_records(settings, 5)
    plain, fixed, committed = asyncio.run(_positions_after_reading(settings, topic, 3, None, set()))
    assert plain == 3, "aiokafka's own seek leaves the position past the dropped records (the bug fixed)"
    assert fixed == 0
    assert committed[TopicPartition(topic, 0)] is None


def test_a_committed_partition_goes_to_its_committed_offset(settings: Settings) -> None:
    topic = _topic_with_records(settings, 5)
    _, fixed, committed = asyncio.run(_positions_after_reading(settings, topic, 4, 2, set()))
    assert fixed == 2
    assert committed[TopicPartition(topic, 0)] == 2


def test_a_changelog_partition_is_left_to_fausts_recovery(settings: Settings) -> None:
    topic = _topic_with_records(settings, 5)
    _, fixed, _ = asyncio.run(_positions_after_reading(settings, topic, 3, None, {topic}))
    assert fixed == 3


async def _livelock_check_while_resetting(settings: Settings, topic: str,
                                          check: Callable[..., None]) -> tuple[bool, BaseException | None]:
    """(whether the partition had a position, what `check` raised) when Faust's livelock check runs on a partition
    whose position is being reset: it was fetched (so it has a highwater), then sought to its beginning, and the
    broker has not answered yet."""
    app = faust.App(f"fix5-{uuid.uuid4().hex[:8]}", broker=f"kafka://{settings.bootstrap_servers}",
                    web_enabled=False)
    thread = app.consumer._thread
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers.split(","),
                                group_id=f"fix5-{uuid.uuid4().hex[:8]}", enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.getmany(tp, timeout_ms=5000)
        thread._consumer, thread.time_started = consumer, time.monotonic()
        reset = asyncio.ensure_future(consumer.seek_to_beginning(tp))
        await asyncio.sleep(0)  # the reset is requested; its answer has not come
        known, raised = position_known(consumer, tp), None
        try:
            check(thread, time.monotonic(), TP(topic, 0))
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            raised = exc
        await reset
        assert position_known(consumer, tp)
        return known, raised
    finally:
        await consumer.stop()


def test_the_livelock_check_skips_a_partition_whose_position_is_being_reset(settings: Settings) -> None:
    topic = _topic_with_records(settings, 5)
    known, raised = asyncio.run(_livelock_check_while_resetting(settings, topic, _original_verify_event_path))
    assert not known
    assert isinstance(raised, AssertionError), "Faust's own check crashes on it (the bug fixed)"
    install()
    _, raised = asyncio.run(_livelock_check_while_resetting(
        settings, topic, lambda thread, now, tp: thread.verify_event_path(now, tp)))
    assert raised is None
