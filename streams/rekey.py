"""Change events -> city-keyed facts, exactly once, with Kafka transactions (confluent-kafka).

The first stage of the stream worker. Debezium keys change events by row id; the city state needs them keyed by
city, so each event becomes a fact on `<app_id>.facts` (or a dead letter with the reason). Facts and the source
offsets are committed in one Kafka transaction (consume-transform-produce, KIP-447 fencing through the group
metadata): a worker killed at any moment, or a rebalance, neither loses an event nor commits one unread.

Why not a Faust agent: faust-streaming 0.15's consumer acks (and then commits) messages its stream loop skipped
during a rebalance, and its offset bookkeeping restarts from scratch at each revocation; our kill and rebalance
tests lost change events through it (see faust_fixes.py for the part that is patched there). The facts topic is
read by the Faust `marts` agent, which deduplicates by LSN, so a fact from an aborted transaction read by it (it
reads uncommitted) changes nothing that its committed copy would not.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from sightscan import kafka
from sightscan.commands import Backoff
from sightscan.config import Settings
from sightscan.events import PoisonEvent
from streams.facts import fact_from_change, fact_from_training_outcome

log = logging.getLogger("streams.rekey")



class StuckCall(RuntimeError):
    """A client call that did not return long after its own timeout."""


class ProducerLost(RuntimeError):
    """The transactional producer cannot go on (a fatal error, a failed abort): a new one must take over."""


class CallGuard:
    """Runs librdkafka calls that have their own timeout on one helper thread (a daemon, kept between calls: a thread
    per call cost the rekey stage a tenth of its time), and gives up on one that has not returned `grace_s` after
    that timeout: StuckCall. The stuck thread is abandoned (a C call cannot be interrupted) and the next call gets a
    new one."""

    def __init__(self, name: str = "rekey-call") -> None:
        self.name = name
        self._jobs: queue.SimpleQueue | None = None

    def _serve(self, jobs: queue.SimpleQueue) -> None:
        while True:
            call, outcome, done = jobs.get()
            try:
                outcome["value"] = call()
            except BaseException as exc:  # handed to the caller
                outcome["error"] = exc
            finally:
                done.set()

    def __call__(self, what: str, call: Callable[[], Any], timeout_s: float, grace_s: float = 15.0) -> Any:
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(self._jobs,), name=self.name, daemon=True).start()
        outcome: dict[str, Any] = {}
        done = threading.Event()
        self._jobs.put((call, outcome, done))
        if not done.wait(timeout_s + grace_s):
            self._jobs = None
            raise StuckCall(f"{what} did not return in {timeout_s + grace_s:.0f} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")


def guarded(what: str, call: Callable[[], Any], timeout_s: float, grace_s: float = 15.0) -> Any:
    """`call()` under a guard of its own (CallGuard)."""
    return CallGuard()(what, call, timeout_s, grace_s)


def rekey_group(app_id: str) -> str:
    """The consumer group of the rekey stage (the Faust agents' group is the app id itself)."""
    return f"{app_id}-rekey"


class Rekeyer(threading.Thread):
    """Reads the change topics (and the trainer's outcomes) in consumer group `<app_id>-rekey`; one per worker."""

    def __init__(self, settings: Settings, app_id: str, table_of_topic: dict[str, str], outcomes_topic: str,
                 facts_topic: str, dead_letter_topic: str, batch_size: int = 1000,
                 facts_per_message: int = 1000) -> None:
        super().__init__(name="rekey", daemon=True)
        self.settings, self.app_id = settings, app_id
        self.table_of_topic, self.outcomes_topic = table_of_topic, outcomes_topic
        self.facts_topic, self.dead_letter_topic = facts_topic, dead_letter_topic
        self.batch_size = batch_size
        self.facts_per_message = facts_per_message
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self.guarded = CallGuard()

    def close(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # the worker's health check reads it; the thread must not die silently
            self.failure = exc
            log.exception("rekey stopped")

    def _run(self) -> None:
        consumer = kafka.consumer(self.settings, rekey_group(self.app_id), **{
            "isolation.level": "read_committed",  # only facts of committed transactions, never an aborted one
            # A killed worker's partitions move after 10 s, as the Faust agents' do.
            "session.timeout.ms": 10000, "heartbeat.interval.ms": 2000,
        })
        producer = self._new_producer()
        consumer.subscribe([*self.table_of_topic, self.outcomes_topic])
        try:
            while not self.stopping.is_set():
                # Wait for the first event, then take what has already arrived: one event alone does not wait
                # for a batch to fill, and a burst still goes in one transaction.
                first = consumer.poll(0.5)
                if first is None:
                    continue
                batch = [first, *consumer.consume(self.batch_size - 1, 0)]
                messages = [m for m in batch if self._usable(m)]
                if not messages:
                    continue
                try:
                    self._transfer(consumer, producer, messages)
                except (StuckCall, ProducerLost) as exc:
                    # librdkafka can block in a transactional call past its timeout when the group coordinator
                    # dies (confluentinc/librdkafka issues 5456 and 5511, open). The stuck producer is left
                    # behind; its open transaction is aborted by the coordinator after transaction.timeout.ms,
                    # so nothing of the batch counts, and a new producer (a new transactional id) reads it again.
                    log.warning(f"rekey producer unusable ({exc}): replacing it and reading the batch again")
                    producer = self._new_producer()
                    self._rewind(consumer)
        finally:
            consumer.close()

    def _until_done(self, what: str, step: Callable[[], Any]) -> Any:
        """`step()` retried with backoff while Kafka cannot do it (KafkaException, StuckCall), as when the cluster
        has lost its quorum: the worker waits for Kafka rather than dying of its absence."""
        for delay in Backoff(first_s=1.0).delays():
            try:
                return step()
            except (KafkaException, StuckCall) as exc:
                log.warning(f"rekey could not {what}, retrying in {delay:.0f} s: {exc}")
            if self.stopping.wait(delay):
                raise RuntimeError(f"stopped before the rekey stage could {what}")

    def _new_producer(self) -> Producer:
        """A producer with its transactions initialised (a new transactional id each time)."""
        def start() -> Producer:
            producer = kafka.transactional_producer(self.settings, f"{self.app_id}-rekey-{uuid.uuid4().hex[:12]}", **{
                "linger.ms": 5, "transaction.timeout.ms": 30000,
                # Java's partitioner, as Faust's producer uses: a city's facts and its table changelog records must
                # land in the same partition number (the marts table relies on it).
                "partitioner": "murmur2_random",
            })
            self.guarded("init_transactions", lambda: producer.init_transactions(60), 60)
            return producer

        return self._until_done("start a transactional producer", start)

    @staticmethod
    def _usable(msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning(f"rekey consumer error: {err}")
        return False

    def _transfer(self, consumer: Consumer, producer: Producer, messages: list[Message]) -> None:
        """One transaction: the batch's facts and dead letters, and the offsets after it."""
        producer.begin_transaction()
        try:
            by_city: dict[int, list[dict]] = {}
            for msg in messages:
                fact = self._fact_or_dead_letter(producer, msg)
                if fact is not None:
                    by_city.setdefault(fact["city_id"], []).append(fact)
            for city_id, facts in by_city.items():
                # One message per city and batch, its facts in order: the marts agent's cost is per message.
                per = self.facts_per_message
                for start in range(0, len(facts), per):
                    producer.produce(self.facts_topic, orjson.dumps(facts[start:start + per]),
                                     key=str(city_id).encode())
                producer.poll(0)
            ends: dict[tuple[str, int], int] = {}
            for msg in messages:
                ends[(msg.topic(), msg.partition())] = msg.offset() + 1
            offsets = [TopicPartition(t, p, o) for (t, p), o in ends.items()]
            group = consumer.consumer_group_metadata()
            self.guarded("send_offsets_to_transaction",
                         lambda: producer.send_offsets_to_transaction(offsets, group, 30), 30)
            self.guarded("commit_transaction", lambda: producer.commit_transaction(30), 30)
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal():
                # Fatal for this producer only, e.g. fenced because its transaction timed out while the cluster
                # had no quorum (the coordinator aborted it and bumped the epoch): nothing of the batch counted.
                raise ProducerLost(f"fatal producer error: {error}") from exc
            # Abortable (a rebalance fenced our offsets, a broker moved…): nothing of the batch counts; read it
            # again from the group's committed offsets.
            log.warning(f"rekey transaction aborted, reading the batch again: {error}")
            try:
                self.guarded("abort_transaction", lambda: producer.abort_transaction(30), 30)
            except KafkaException as abort_error:  # the cluster is away: this producer is done with
                raise ProducerLost(f"abort_transaction failed: {abort_error}") from abort_error
            self._rewind(consumer)
            time.sleep(0.2)

    def _fact_or_dead_letter(self, producer: Producer, msg: Message) -> dict | None:
        """The message's fact; None when it has none (a tombstone, a progress event) or is sent to the dead-letter
        topic."""
        topic, value = msg.topic(), msg.value()
        try:
            if topic == self.outcomes_topic:
                fact = fact_from_training_outcome(orjson.loads(value or b"null"))
            else:
                fact = fact_from_change(self.table_of_topic[topic], value)
        except (PoisonEvent, ValueError, TypeError) as exc:
            log.warning(f"dead letter {topic}@{msg.partition()}:{msg.offset()}: {exc}",
                        extra={"topic": topic, "offset": msg.offset(), "reason": str(exc)})
            record = kafka.dead_letter_of(msg, str(exc))
            producer.produce(self.dead_letter_topic, kafka.dead_letter_bytes(record), key=msg.key())
            return None
        return fact

    def _rewind(self, consumer: Consumer) -> None:
        """Back to the group's committed offsets. Never skipped: reading on past an uncommitted batch would lose
        it, so an unreachable coordinator is waited for."""
        assignment = consumer.assignment()
        if not assignment:
            return
        committed = self._until_done("read its committed offsets", lambda: consumer.committed(assignment, timeout=30))
        for tp in committed:
            try:
                consumer.seek(TopicPartition(tp.topic, tp.partition,
                                             tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
            except KafkaException as exc:  # not fetching yet: it will start from the committed offset anyway
                log.info(f"rekey rewind of {tp.topic}[{tp.partition}] skipped: {exc}")
