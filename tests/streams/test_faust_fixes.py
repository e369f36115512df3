"""streams/faust_fixes.py fix 4 on a real broker: a partition its group never committed is read from its start.

Faust drops the records it fetched while a partition's flow was paused (during recovery), and relies on seeking
"to the committed offset" to read them again. aiokafka does not seek a partition without a committed offset, so
those records were skipped: four stream workers starting together lost the first facts of one partition.
"""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from sightscan import kafka
from sightscan.config import Settings
from sightscan.topics import ensure_topics
from streams.faust_fixes import seek_to_committed_or_beginning


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
