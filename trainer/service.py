"""The trainer service: consumes training requests from Kafka, trains, stores the model, publishes the outcome.

Offsets are committed only after the outcome is stored and its event delivered, so a crash mid-training means the
request is redelivered rather than lost. In cloud mode a second role, the dispatcher, runs next to the stack and
starts the EC2 training instance for each request; the trainer on that instance stops it once it is idle.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer

from sightscan import db
from sightscan.config import Settings
from trainer import cloud
from trainer.config import EVENTS_TOPIC, TRAINING_TOPIC, TrainerSettings, load
from trainer.data import NotEnoughData
from trainer.pipeline import train_city

log = logging.getLogger(__name__)

REASONS = ("threshold", "growth", "manual")


class BadRequest(ValueError):
    """A training request that cannot be processed; the message is the reason."""


@dataclass(frozen=True)
class TrainingRequest:
    city_id: int
    city: str
    epochs: int
    classes: list[str]
    reason: str
    request_id: str

    @classmethod
    def parse(cls, value: bytes | None) -> TrainingRequest:
        try:
            raw = json.loads(value or b"")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise BadRequest("expected a JSON object")
        try:
            city_id = int(raw["city_id"])
            epochs = int(raw.get("epochs") or 0)
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest(f"city_id/epochs missing or not integers: {exc}") from exc
        reason = raw.get("reason", "manual")
        if reason not in REASONS:
            raise BadRequest(f"unknown reason {reason!r}; expected one of {', '.join(REASONS)}")
        return cls(city_id, str(raw.get("city") or ""), epochs, list(raw.get("classes") or []), reason,
                   str(raw.get("request_id") or ""))


def topics(settings: Settings) -> tuple[str, str]:
    return f"{settings.topic_prefix}.{TRAINING_TOPIC}", f"{settings.topic_prefix}.{EVENTS_TOPIC}"


def _request_id_of(value: bytes | None) -> str | None:
    try:
        raw = json.loads(value or b"")
        return str(raw["request_id"]) if isinstance(raw, dict) and raw.get("request_id") else None
    except (ValueError, KeyError, TypeError):
        return None


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self.topic = topics(settings)[1]
        self.producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "enable.idempotence": True,
                                  "acks": "all"})

    def publish(self, event: dict[str, Any], key: str | None) -> None:
        """Send and wait for the broker's ack: the caller commits the request's offset only after this returns."""
        errors: list[Any] = []
        self.producer.produce(self.topic, json.dumps(event).encode(), key=key.encode() if key else None,
                              on_delivery=lambda err, _msg: errors.append(err) if err else None)
        remaining = self.producer.flush(30)
        if remaining or errors:
            raise KafkaException(errors[0] if errors else f"{remaining} event(s) not delivered in 30 s")
        log.info("training event", extra={k: v for k, v in event.items() if k != "metrics"})


class TrainerService:
    """Role "train" trains each request; role "dispatch" (cloud mode, beside the stack) starts the EC2 instance."""

    def __init__(self, settings: Settings, ts: TrainerSettings | None = None, role: str = "train") -> None:
        if role not in ("train", "dispatch"):
            raise ValueError(f"unknown role {role!r}")
        self.settings = settings
        self.ts = ts or load(settings)
        if role == "dispatch" and self.ts.cloud is None:
            raise ValueError("the dispatch role needs MTS_EC2_INSTANCE_ID and AWS_REGION")
        self.role = role
        self.stopping = threading.Event()
        self.publisher = Publisher(settings)
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": self.ts.group_id + ("-dispatch" if role == "dispatch" else ""),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # One training may take much longer than the default 5 min between polls.
            "max.poll.interval.ms": 6 * 3600 * 1000,
        })
        self.consumer.subscribe([topics(settings)[0]])
        self.handled = 0

    def close(self) -> None:
        self.stopping.set()

    def run(self, max_requests: int | None = None, idle_exit_s: float | None = None) -> int:
        """Serve until close(), `max_requests` handled, or (cloud trainer) idle long enough to stop the instance."""
        idle_since = time.monotonic()
        try:
            while not self.stopping.is_set():
                if max_requests is not None and self.handled >= max_requests:
                    break
                msg = self.consumer.poll(1.0)
                if msg is None:
                    idle = time.monotonic() - idle_since
                    if self.role == "train" and self.ts.cloud and idle >= self.ts.idle_stop_s:
                        # No work left: stop the instance we run on, as the original did, to stop paying for it.
                        cloud.stop_instance(self.ts.cloud)
                        break
                    if idle_exit_s is not None and idle >= idle_exit_s:
                        break
                    continue
                if msg.error():
                    log.warning("consumer error", extra={"error": str(msg.error())})
                    continue
                self.handle(msg)
                self.consumer.commit(message=msg, asynchronous=False)
                self.handled += 1
                idle_since = time.monotonic()
        finally:
            self.consumer.close()
        return self.handled

    def handle(self, msg: Message) -> dict[str, Any]:
        """Process one request and publish its outcome; every failure becomes a "failed" event, never a crash."""
        key = msg.key().decode() if msg.key() else None
        try:
            request = TrainingRequest.parse(msg.value())
        except BadRequest as exc:
            event = {"request_id": _request_id_of(msg.value()), "city_id": None, "status": "failed",
                     "reason": f"bad request: {exc}"}
            self.publisher.publish(event, key)
            return event
        base = {"request_id": request.request_id, "city_id": request.city_id, "city": request.city,
                "trigger": request.reason}
        if self.role == "dispatch":
            return self._dispatch(request, base, key)
        done = self._already_trained(request)
        if done is not None:  # a redelivered copy of a request we answered: answer again, do not train again
            event = {**base, "status": "succeeded", "model_id": done[0], "version": done[1], "duplicate": True}
            self.publisher.publish(event, key)
            return event
        try:
            outcome = train_city(self.settings, request.city_id, progress=False, epochs=request.epochs or None,
                                 trainer_settings=self.ts,
                                 extra_metrics={"request_id": request.request_id, "trigger": request.reason})
        except (NotEnoughData, LookupError) as exc:
            event = {**base, "status": "failed", "reason": str(exc)}
        except Exception as exc:  # a crash in training must not kill the service nor lose the request's outcome
            log.exception("training crashed", extra={"city_id": request.city_id})
            event = {**base, "status": "failed", "reason": f"crash: {type(exc).__name__}: {exc}",
                     "trace": traceback.format_exc(limit=5)}
        else:
            event = {**base, "status": "succeeded", "version": outcome.version, "model_id": outcome.model_id,
                     "classes": outcome.classes, "metrics": outcome.metrics}
        self.publisher.publish(event, key)
        return event

    def _already_trained(self, request: TrainingRequest) -> tuple[int, int] | None:
        if not request.request_id:
            return None
        with db.transaction(self.settings) as cur:
            return db.model_for_request(cur, request.city_id, request.request_id)

    def _dispatch(self, request: TrainingRequest, base: dict[str, Any], key: str | None) -> dict[str, Any]:
        assert self.ts.cloud is not None
        try:
            state = cloud.start_instance(self.ts.cloud)
        except cloud.InstanceStartFailed as exc:
            event = {**base, "status": "failed", "reason": str(exc)}
        else:
            event = {**base, "status": "dispatched", "instance_id": self.ts.cloud.instance_id, "instance_state": state}
        self.publisher.publish(event, key)
        return event
