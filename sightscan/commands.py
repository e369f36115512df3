"""Consuming a command topic (crawl, labelling requests): one loop shared by the services that do the work.

Delivery: at least once. A command's offset is committed only after its handler returned, so a worker killed
mid-command gets it redelivered (handlers must be idempotent: commands carry a deterministic request_id, and the
warehouse dedupes images by sha256 and labels by image). A command that can never succeed (BadCommand) goes to
the command dead-letter topic with its reason and is committed: it is reported, not silently dropped. A handler
that fails for a passing reason (RetryLater, or a database error) is retried with backoff, from the same offset.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg2
from confluent_kafka import KafkaException, Message

from sightscan import kafka
from sightscan.config import Settings
from sightscan.topics import command_dead_letter_topic, command_topic, ensure_topics

log = logging.getLogger(__name__)


class BadCommand(ValueError):
    """A command that can never be processed (malformed, unknown city…); the message is the reason."""


class RetryLater(RuntimeError):
    """A passing failure (quota, outage): the command is retried from the same offset after a backoff."""


def parse_command(value: bytes | None, required: dict[str, type]) -> dict[str, Any]:
    """A command's JSON object, with `required` fields of the given types; BadCommand says what is wrong."""
    try:
        raw = json.loads(value or b"")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadCommand(f"not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise BadCommand(f"expected a JSON object, got {type(raw).__name__}")
    for name, kind in required.items():
        if not isinstance(raw.get(name), kind) or isinstance(raw.get(name), bool):
            raise BadCommand(f"field {name!r} missing or not {kind.__name__}")
    return raw


@dataclass
class Backoff:
    first_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0

    def delays(self) -> Any:
        delay = self.first_s
        while True:
            yield delay
            delay = min(self.max_s, delay * self.factor)


class CommandWorker:
    """Runs `handle(command, message)` for each command of one kind, in a consumer group.

    `handle` receives the parsed JSON object; it raises BadCommand or RetryLater, or returns a summary dict that is
    logged. `on_dead_letter(message, reason)`, if given, runs after a command was dead-lettered and before its
    offset is committed (the trainer announces the failure on its outcomes topic). Stop with close() (also on
    SIGTERM/SIGINT when run from the main thread via serve_forever()).
    """

    def __init__(self, settings: Settings, kind: str, group_id: str,
                 handle: Callable[[dict[str, Any], Message], dict[str, Any] | None],
                 required: dict[str, type] | None = None, backoff: Backoff | None = None,
                 max_attempts: int | None = None, max_poll_interval_s: float = 3600.0,
                 on_dead_letter: Callable[[Message, str], None] | None = None,
                 consumer_config: dict[str, Any] | None = None) -> None:
        self.settings, self.kind, self.handle, self.on_dead_letter = settings, kind, handle, on_dead_letter
        self.required = required or {"city_id": int}
        self.backoff = backoff or Backoff()
        self.max_attempts = max_attempts  # None: retry a passing failure until it passes (or we are stopped)
        self.topic = command_topic(kind, settings.topic_prefix)
        self.dead_letters = command_dead_letter_topic(settings.topic_prefix)
        ensure_topics(settings, [self.topic, self.dead_letters])
        self.stopping = threading.Event()
        self.handled = 0
        self.idle_exit = False  # run() returned because it was idle for idle_exit_s
        self.producer = kafka.producer(settings)
        # A command may take long (a crawl, a training): the group must not think the worker died meanwhile.
        self.consumer = kafka.consumer(settings, group_id,
                                       **{"max.poll.interval.ms": int(max_poll_interval_s * 1000),
                                          **(consumer_config or {})})
        self.consumer.subscribe([self.topic])

    def close(self) -> None:
        self.stopping.set()

    def serve_forever(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.close())
        return self.run()

    def run(self, max_commands: int | None = None, idle_exit_s: float | None = None) -> int:
        """Serve until close(), `max_commands` handled, or idle for `idle_exit_s`; returns commands handled."""
        idle_since = time.monotonic()
        try:
            while not self.stopping.is_set():
                if max_commands is not None and self.handled >= max_commands:
                    break
                msg = self.consumer.poll(0.5)
                if msg is None:
                    if idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                        self.idle_exit = True
                        break
                    continue
                if msg.error():
                    log.warning("consumer error", extra={"error": str(msg.error())})
                    continue
                if not self._process(msg):
                    continue  # stopping while retrying: not committed, redelivered to whoever runs next
                self._commit(msg)
                self.handled += 1
                idle_since = time.monotonic()
        finally:
            self.consumer.close()
            self.producer.flush(10)
        return self.handled

    def _commit(self, msg: Message) -> None:
        """Commit past `msg`. A refused commit (the group rebalanced, its coordinator moved with a broker) is not
        fatal: the command is redelivered to the partition's new owner, and every handler is idempotent (a crawl,
        a labelling and a training are each done once; a dead letter may then repeat, with the same source
        topic, partition and offset, which identify it)."""
        try:
            self.consumer.commit(message=msg, asynchronous=False)
        except KafkaException as exc:
            log.warning(f"{self.kind} command's offset not committed; it will be delivered again: {exc}",
                        extra={"kind": self.kind, "partition": msg.partition(), "offset": msg.offset()})

    def _process(self, msg: Message) -> bool:
        """True when the command is finished (done or dead-lettered) and its offset may be committed."""
        delays = self.backoff.delays()
        attempt = 0
        while True:
            attempt += 1
            try:
                command = parse_command(msg.value(), self.required)
                summary = self.handle(command, msg)
            except BadCommand as exc:
                self._dead_letter(msg, str(exc))
                return True
            except (RetryLater, psycopg2.OperationalError, psycopg2.InterfaceError, KafkaException) as exc:
                if self.max_attempts is not None and attempt >= self.max_attempts:
                    self._dead_letter(msg, f"gave up after {attempt} attempts: {exc}")
                    return True
                delay = next(delays)
                log.warning(f"{self.kind} command failed (attempt {attempt}), retrying in {delay:.1f} s: {exc}",
                            extra={"kind": self.kind, "attempt": attempt, "error": str(exc)})
                if self.stopping.wait(delay):
                    return False
                continue
            log.info(f"{self.kind} command done", extra={"kind": self.kind, **(summary or {})})
            return True

    def _dead_letter(self, msg: Message, reason: str) -> None:
        log.warning(f"{self.kind} command dead-lettered: {reason}", extra={"reason": reason})
        kafka.deliver(self.producer, self.dead_letters, kafka.dead_letter_bytes(kafka.dead_letter_of(msg, reason)),
                      key=msg.key())
        if self.on_dead_letter is not None:
            self.on_dead_letter(msg, reason)
