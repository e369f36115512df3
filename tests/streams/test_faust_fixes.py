"""streams/faust_fixes.py. Each of its five fixes has a quick test of its own that fails without it: Faust's and
aiokafka's own classes where they need no broker, small fakes of the rest (an ack recorder, a table's changelog
sends, an aiokafka consumer's committed offsets). Then the version guard, and fixes 4 and 5 on a real broker (the
tests that use the stack).

Fix 4 on a real broker: Faust drops the records it fetched while a partition's flow was paused (during recovery),
and relies on seeking "to the committed offset" to read them again. aiokafka does not seek a partition without a
committed offset, so those records were skipped: four stream workers starting together lost the first facts of one
partition.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer.fetcher import OffsetResetStrategy
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.structs import OffsetAndMetadata
from faust.events import Event
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from sightscan import kafka
from sightscan.config import Settings
from sightscan.topics import ensure_topics
from streams.faust_fixes import (
    TESTED_VERSIONS,
    ConfirmedChangelog,
    UntestedVersion,
    _original_verify_event_path,
    check_version,
    install,
    position_known,
    seek_to_committed_or_beginning,
)

REPO = Path(__file__).resolve().parents[2]


def _app(name: str) -> faust.App:
    """A Faust app that is never started: building it connects to nothing."""
    return faust.App(f"{name}-{uuid.uuid4().hex[:8]}", broker="kafka://localhost:1", web_enabled=False)


# Fix 1: a message no stream took is not acked -------------------------------------------------------------------


class AckRecorder:
    """Faust's consumer as an acked message reaches it: the offsets it would mark safe to commit."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message: ConsumerMessage) -> bool:
        self.acked.append(message.offset)
        return True


def test_fix1_a_message_skipped_in_a_rebalance_is_not_acked() -> None:
    install()
    consumer = AckRecorder()
    app = SimpleNamespace(consumer=consumer)
    skipped, taken = (ConsumerMessage("facts", 0, offset, 0.0, 0, None, b"1", b"{}", None) for offset in (7, 8))
    taken.tracked = True  # what Faust's stream loop does to a message it hands to the agent (streams.py)
    # The stream loop acks a message it skipped (a rebalance started) as if it were processed:
    assert Event(app, b"1", None, None, skipped).ack() is False
    assert not skipped.acked
    assert Event(app, b"1", None, None, taken).ack() is True
    assert consumer.acked == [8], "only the message the agent took may have its offset committed"


# Fix 2: changelog writes are confirmed ----------------------------------------------------------------------------


class ChangelogSends:
    """A table's send_changelog: each send a future the test settles, as the broker's acknowledgement would."""

    def __init__(self) -> None:
        self.sent: list[asyncio.Future[Any]] = []

    def send_changelog(self, partition: int | None, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self.sent.append(future)
        return future


async def _done_after_a_while(task: asyncio.Future[Any]) -> bool:
    for _ in range(5):
        await asyncio.sleep(0)
    return task.done()


def test_fix2_written_returns_once_every_changelog_record_is_acknowledged() -> None:
    async def run() -> None:
        table = ChangelogSends()
        confirmed = ConfirmedChangelog(table)  # type: ignore[arg-type]
        first = table.send_changelog(0, b"1", {"layout": 2})
        assert first is table.sent[0], "the table's sends still hand back their futures"
        table.send_changelog(0, b"1/images/0", {})
        written = asyncio.ensure_future(confirmed.written())
        assert not await _done_after_a_while(written), "nothing is acknowledged yet"
        table.sent[0].set_result(None)
        assert not await _done_after_a_while(written), "one record is still unacknowledged"
        table.sent[1].set_result(None)
        assert await _done_after_a_while(written)
        await written

        table.send_changelog(0, b"2", {"layout": 2})
        table.sent[2].set_exception(OSError("broker gone"))
        with pytest.raises(OSError, match="broker gone"):
            await confirmed.written()

    asyncio.run(run())


# Fix 3: the producer is idempotent --------------------------------------------------------------------------------


def test_fix3_fausts_producer_is_idempotent_with_acks_all() -> None:
    install()

    async def build() -> tuple[bool, int]:
        producer = _app("fix3").producer._new_producer()  # the aiokafka producer Faust's sends go through
        try:
            return producer._txn_manager is not None, producer._sender._acks
        finally:
            await producer.stop()

    idempotent, acks = asyncio.run(build())
    assert idempotent, "without it aiokafka may write a retried send twice"
    assert acks == -1  # acks=all


# Fix 4: a partition never committed is read from its beginning ----------------------------------------------------


class CommittedOffsets:
    """An aiokafka consumer's answer to seek_to_committed, and the partitions it was asked to seek to the start."""

    def __init__(self, committed: dict[TopicPartition, int | None]) -> None:
        self.committed = committed
        self.to_beginning: set[TopicPartition] = set()

    async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
        return dict(self.committed)  # aiokafka seeks only the partitions with an offset above 0

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self.to_beginning.update(partitions)


def test_fix4_fausts_seek_puts_a_partition_never_committed_at_its_beginning() -> None:
    install()
    app = _app("fix4")
    changelog = app.Table("city-state", partitions=2).changelog_topic.get_topic_name()
    never, at_zero, committed = (TopicPartition("facts", p) for p in range(3))
    recovering = TopicPartition(changelog, 0)
    consumer = CommittedOffsets({never: None, at_zero: 0, committed: 5, recovering: None})
    thread = app.consumer._thread
    thread._consumer = consumer

    async def in_the_thread(fun: Callable[..., Any], *args: Any) -> Any:
        return await fun(*args)

    thread.call_thread = in_the_thread  # the hop to the consumer's thread, which is not started here
    answer = asyncio.run(thread.seek_to_committed())  # what Faust calls after each assignment
    assert consumer.to_beginning == {never, at_zero}
    assert answer == consumer.committed  # Faust reads the committed offsets from it, as from aiokafka's
    # A changelog partition is left to Faust's recovery, which positions it itself.
    assert recovering not in consumer.to_beginning


# Fix 5: the livelock check reads positions only where they are known ----------------------------------------------


def test_fix5_the_livelock_check_skips_a_partition_whose_position_is_being_reset() -> None:
    install()

    async def run() -> None:
        app = _app("fix5")
        subscriptions = SubscriptionState()  # aiokafka's own: what the check reads
        tp = TopicPartition("facts", 0)
        subscriptions.assign_from_user({tp})
        state = subscriptions.subscription.assignment.state_value(tp)
        now = time.monotonic()
        state.seek(3)                       # fetched: a position, a highwater, a recent poll
        state.highwater, state.timestamp = 5, time.time() * 1000
        thread = app.consumer._thread
        thread._consumer = SimpleNamespace(_fetcher=SimpleNamespace(_subscriptions=subscriptions))
        thread.time_started = now
        assert position_known(thread._consumer, tp)
        thread.verify_event_path(now, TP("facts", 0))

        state.await_reset(OffsetResetStrategy.EARLIEST)  # seek_to_beginning, before the broker answers
        assert not position_known(thread._consumer, tp)
        with pytest.raises(AssertionError):
            _original_verify_event_path(thread, now, TP("facts", 0))  # Faust's own check: the crash fixed
        thread.verify_event_path(now, TP("facts", 0))  # what Faust's timer calls: must not raise

    asyncio.run(run())


# The version guard ------------------------------------------------------------------------------------------------


def test_the_installed_faust_and_aiokafka_are_tested_versions_and_pinned() -> None:
    check_version()
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for name, tested in TESTED_VERSIONS.items():
        assert f"{name}=={tested[-1]}" in pins


@pytest.mark.parametrize("untested", [{"faust-streaming": "0.16.0"}, {"aiokafka": "0.15.0"}])
def test_an_untested_faust_or_aiokafka_fails_loudly(untested: dict[str, str]) -> None:
    [(name, found)] = untested.items()
    with pytest.raises(UntestedVersion, match=f"{name} {found}"):
        check_version(untested)


# Fixes 4 and 5 on a real broker -----------------------------------------------------------------------------------


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
