"""Follows model change events (Debezium, topic <prefix>.public.models) and hands them to the registry.

confluent-kafka's consumer blocks, so it polls on its own thread and passes each decoded event to the event loop.
Every gateway instance must see every model event, so each uses its own consumer group and reads the topic from
the beginning: model events are few and small (no onnx bytes), and the registry ignores old versions.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException

from sightscan import kafka
from sightscan.config import Settings
from sightscan.events import ChangeEvent, PoisonEvent, parse_change
from sightscan.topics import change_topic

log = logging.getLogger(__name__)


class ModelEventFollower:
    def __init__(self, settings: Settings, on_event: Callable[[ChangeEvent], None],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.topic = change_topic("models", settings.topic_prefix)
        self._on_event = on_event
        self._loop = loop
        self._stop = threading.Event()
        self.assigned = threading.Event()  # the group has given this consumer its partitions
        self.topic_missing = False  # no model was ever stored: nothing to miss, it is read from its start later
        self._checked_topic = 0.0
        self.error: str | None = None
        # A private group, thrown away on exit: it reads every model event from the start and commits nothing.
        self._consumer = kafka.consumer(settings, f"sightscan-gateway-{uuid.uuid4().hex[:12]}", **{
            # The topic appears only when the first model row is written; look for it often, not every 5 min.
            "topic.metadata.refresh.interval.ms": 2000,
            "allow.auto.create.topics": False,
            "session.timeout.ms": 10000,
        })
        self._thread = threading.Thread(target=self._run, name="model-events", daemon=True)

    def start(self) -> None:
        self._consumer.subscribe([self.topic], on_assign=self._assigned)
        self._thread.start()

    def _assigned(self, consumer: Consumer, partitions: list) -> None:
        log.info("model events assigned", extra={"topic": self.topic, "partitions": [p.partition for p in partitions]})
        self.assigned.set()

    @property
    def ready(self) -> bool:
        return self.assigned.is_set() or self.topic_missing

    def _check_topic(self) -> None:
        now = time.monotonic()
        if self.assigned.is_set() or now - self._checked_topic < 1.0:
            return
        self._checked_topic = now
        try:
            topics = self._consumer.list_topics(self.topic, timeout=2).topics
            meta = topics.get(self.topic)
            self.topic_missing = meta is None or meta.error is not None
        except KafkaException as exc:
            self.error = str(exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._check_topic()
            try:
                msg = self._consumer.poll(0.5)
            except KafkaException as exc:
                self.error = str(exc)
                log.warning("model event poll failed", extra={"error": str(exc)})
                continue
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() != KafkaError.UNKNOWN_TOPIC_OR_PART:  # normal until the first model exists
                    self.error = str(msg.error())
                    log.warning("model event error", extra={"error": str(msg.error())})
                continue
            self.error = None
            try:
                event = parse_change("models", msg.value())
            except PoisonEvent as exc:
                log.warning("undecodable model event skipped", extra={"reason": str(exc), "offset": msg.offset()})
                continue
            if event is not None:
                self._loop.call_soon_threadsafe(self._on_event, event)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._consumer.close()
