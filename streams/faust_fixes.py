"""Every workaround the stream worker needs in faust-streaming, in one place, for the versions it was tested on.

1. Skipped events are not acked (faust-streaming 0.15). When a rebalance starts (or a message of an older
   consumer generation is dequeued after it), Faust's stream loop skips the message without handing it to the
   agent, and then acks it like a processed one (streams.py, _py_aiter: `if event is not None and (do_ack or
   value is skipped_value): event.ack()`). The revocation's own commit (in `wait_empty`) and later periodic
   commits then move the group's offset past events no agent ever saw; the next owner of the partition starts
   after them and they are lost. We saw exactly that: a worker killed while another joined lost one source
   partition's change events for a city (counts short, a training request never sent). A skipped message was
   never *tracked* (Faust tracks a message only once it passes that check), so the fix refuses the ack of an
   untracked consumer message: its offset stays uncommitted and the partition's next owner reads it again.
   Processed messages, including ones a processor skips with faust.Skip, are tracked and acked as before.

2. Changelog writes are confirmed (ConfirmedChangelog). Faust's producer.flush() gives up after a record takes
   0.1 s to reach the Kafka client (ProducerBuffer.flush_atmost), so it does not prove a changelog record was
   written: on a loaded machine a worker killed after its commit lost city states that way. The table's
   changelog sends are kept and awaited instead.

3. The producer is idempotent. Faust asks aiokafka for idempotence only inside its own transactions, which this
   worker does not use; without it a send retried after a broker failover can be written twice (a changelog
   record, a command). `install()` makes Faust's producer use acks=all with idempotence always.

4. A partition never committed is read from its beginning. After each (re)assignment Faust seeks the stream
   partitions "to their committed offsets", and records it fetched while its flow was paused are dropped on the
   understanding that this seek brings them back (consumer.py, getmany: "Seek back to committed offsets").
   aiokafka's seek_to_committed does not seek a partition without a committed offset (or with offset 0): its
   position stays where the fetcher left it, past the dropped records. So a new group whose workers start
   together lost the first facts another worker's rekey stage had already written into a partition still
   recovering: bench/streams with four workers came up 150 of 40,000 events short, every missing fact from the
   first three messages of one partition. The fix seeks such partitions to their beginning; the city state
   deduplicates by LSN, so reading a fact twice changes nothing.

5. The livelock check reads positions only where they are known. Every 2.5 s Faust's consumer checks each assigned
   partition's progress (consumer.py, _commit_livelock_detector, a diagnostic that only logs), reading aiokafka's
   `position`, which asserts that one exists. While a partition's position is being reset (fix 4's seek to the
   beginning, or an out-of-range offset reset), it has none until the broker answers, which takes seconds when its
   leader has just died; the assertion then crashed the whole worker. A CI run lost a worker that way in the
   three-broker test. The check now skips a partition without a position, as it already skips one without a
   highwater.

All five depend on internals of faust-streaming and of aiokafka, the Kafka client it drives (fix 3 passes aiokafka's
producer arguments, fix 4 works around its seek_to_committed, fix 5 reads its subscription state). So `install()`
refuses a version of either that they were not tested with (TESTED_VERSIONS; pyproject.toml pins both). Upgrading
one means running tests/streams/test_faust_fixes.py (each fix has a test there that fails without it) and the rest
of tests/streams (the kill and rebalance tests), then adding the version here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from importlib.metadata import version
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.events import Event
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Producer as AIOKafkaProducerDriver
from faust.types.tuples import ConsumerMessage

# distribution -> the versions the fixes were tested with; the last is the one to install (pyproject.toml pins it).
TESTED_VERSIONS: dict[str, tuple[str, ...]] = {
    "faust-streaming": ("0.15.3",),
    "aiokafka": ("0.14.0",),
}

_original_ack = Event.ack
_original_verify_event_path = AIOKafkaConsumerThread.verify_event_path


class UntestedVersion(RuntimeError):
    """faust-streaming or aiokafka is installed at a version the fixes were not tested with."""


def check_version(installed: Mapping[str, str] | None = None) -> None:
    """Raise UntestedVersion unless faust-streaming and aiokafka are at tested versions. `installed`:
    distribution -> version, read from the environment where not given."""
    untested = [f"{name} {found} (tested: {', '.join(tested)})" for name, tested in TESTED_VERSIONS.items()
                if (found := (installed or {}).get(name) or version(name)) not in tested]
    if untested:
        raise UntestedVersion(
            f"streams/faust_fixes.py patches internals of faust-streaming and aiokafka, and was not tested with "
            f"{' and '.join(untested)}. Install the versions pyproject.toml pins, or run tests/streams against "
            "these and add them to TESTED_VERSIONS.")


def _ack_only_what_a_stream_took(self: Event) -> bool:
    message = self.message
    if isinstance(message, ConsumerMessage) and not message.tracked:
        return False
    return _original_ack(self)


def install() -> None:
    """Check the versions of faust-streaming and aiokafka, and install fixes 1, 3, 4 and 5; idempotent. Called
    before any stream runs."""
    check_version()
    if Event.ack is not _ack_only_what_a_stream_took:
        Event.ack = _ack_only_what_a_stream_took  # type: ignore[method-assign]
    AIOKafkaProducerDriver._settings_extra = _idempotent_producer  # type: ignore[method-assign]
    AIOKafkaConsumerThread.seek_to_committed = _seek_to_committed_or_beginning  # type: ignore[method-assign]
    AIOKafkaConsumerThread.verify_event_path = _verify_event_path_once_positioned  # type: ignore[method-assign]


def _idempotent_producer(self: Any) -> dict[str, Any]:
    return {"acks": "all", "enable_idempotence": True}


async def seek_to_committed_or_beginning(consumer: Any, changelogs: set[str]) -> dict[Any, int | None]:
    """Fix 4 on one aiokafka consumer: every assigned partition at its committed offset, and every stream partition
    without one (or committed at 0) at its beginning. Changelog partitions are left to Faust's recovery, which
    positions them itself (they are never committed). Returns the committed offsets, as aiokafka's does."""
    committed = await consumer.seek_to_committed()
    fresh = [tp for tp, offset in committed.items() if (offset is None or offset <= 0) and tp.topic not in changelogs]
    if fresh:
        await consumer.seek_to_beginning(*fresh)
    return committed


async def _seek_to_committed_or_beginning(self: AIOKafkaConsumerThread) -> Any:
    return await self.call_thread(seek_to_committed_or_beginning, self._ensure_consumer(),
                                  self.app.tables.changelog_topics)


def position_known(consumer: Any, tp: Any) -> bool:
    """Fix 5's test: whether aiokafka `consumer` has a position for partition `tp` (assigned, and not being
    reset)."""
    subscription = consumer._fetcher._subscriptions.subscription
    assignment = subscription.assignment if subscription is not None else None
    state = assignment.state_value(TopicPartition(tp.topic, tp.partition)) if assignment is not None else None
    return state is not None and state.has_valid_position


def _verify_event_path_once_positioned(self: AIOKafkaConsumerThread, now: float, tp: Any) -> None:
    if position_known(self._ensure_consumer(), tp):
        _original_verify_event_path(self, now, tp)


class ConfirmedChangelog:
    """Fix 2 for one table: `await confirmed.written()` returns once every changelog record the table has sent so
    far is acknowledged by the broker (and raises if one failed)."""

    def __init__(self, table: faust.Table) -> None:
        self._unconfirmed: list[Any] = []
        send = table.send_changelog

        def send_and_keep(*args: Any, **kwargs: Any) -> Any:
            future = send(*args, **kwargs)
            self._unconfirmed.append(future)
            return future

        table.send_changelog = send_and_keep  # type: ignore[method-assign]

    async def written(self) -> None:
        while self._unconfirmed:
            batch = self._unconfirmed[:]
            del self._unconfirmed[:len(batch)]
            await asyncio.gather(*batch)
