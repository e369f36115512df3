"""Every Kafka client SightScan makes, configured in one place, and the one dead-letter record.

Clients come from here so that a guarantee is written once: what "committed" means for a consumer, what
"delivered" means for a producer. Callers pass only what is theirs (a group id, a transactional id, a longer
poll interval) as keyword overrides in librdkafka's dotted names, e.g. `**{"max.poll.interval.ms": 60_000}`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from sightscan.config import Settings


def client_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """The brokers, and anything the caller adds."""
    return {"bootstrap.servers": settings.bootstrap_servers, **overrides}


def consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    """A consumer in `group_id` that commits only when told to."""
    return Consumer(client_config(
        settings,
        **{"group.id": group_id,
           # Offsets are committed by the caller after its work is durable: at-least-once, never at-most-once.
           "enable.auto.commit": False,
           # A new group starts at the beginning: a command or change written before the service first ran is
           # still processed.
           "auto.offset.reset": "earliest",
           **overrides}))


def producer(settings: Settings, **overrides: Any) -> Producer:
    """A producer whose sends are acknowledged by every in-sync replica and never duplicated by its retries."""
    return Producer(client_config(
        settings,
        **{"enable.idempotence": True,  # a retried send is written once, in order
           "acks": "all",               # delivered = on every in-sync replica, so a broker failover loses nothing
           **overrides}))


def transactional_producer(settings: Settings, transactional_id: str, **overrides: Any) -> Producer:
    """A producer for read-process-write transactions (streams/rekey.py); call init_transactions() first."""
    return producer(settings, **{"transactional.id": transactional_id, **overrides})


def admin(settings: Settings) -> AdminClient:
    return AdminClient(client_config(settings))


def deliver(client: Producer, topic: str, value: bytes, key: bytes | None = None, timeout_s: float = 30) -> None:
    """Send one record and wait for the broker's acknowledgement; KafkaException if it was not delivered.
    Callers commit their input's offset only after this returns."""
    errors: list[Any] = []
    client.produce(topic, value, key=key, on_delivery=lambda err, _msg: errors.append(err) if err else None)
    remaining = client.flush(timeout_s)
    if remaining or errors:
        raise KafkaException(errors[0] if errors else f"{remaining} record(s) not delivered in {timeout_s:.0f} s")


def dead_letter(topic: str, partition: int | None, offset: int | None, key: Any, value: Any,
                reason: str) -> dict[str, Any]:
    """The record a dead-letter topic holds for an input that can never be processed: where it came from, the
    input as text, and why. Both dead-letter topics (change events, commands) use it."""
    def text(v: Any) -> Any:
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else v

    return {"topic": topic, "partition": partition, "offset": offset, "key": text(key), "value": text(value),
            "reason": reason, "ts_ms": int(time.time() * 1000)}


def dead_letter_of(msg: Message, reason: str) -> dict[str, Any]:
    """dead_letter() for a consumed message."""
    return dead_letter(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), reason)


def dead_letter_bytes(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()
