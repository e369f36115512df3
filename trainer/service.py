"""The trainer service: training requests from Kafka, on the shared command loop (sightscan.commands.CommandWorker),
each answered by one outcome event on `<prefix>.events.training`.

Delivery: a request's offset is committed only after its outcome is stored and the event acknowledged, so a crash
mid-training redelivers the request rather than losing it; a redelivered request that already has its model is
answered again, not trained again. A malformed request is dead-lettered with its reason, as every command is, and
announced as a "failed" event. A database outage is retried with backoff from the same offset. In cloud mode a
second role, the dispatcher, runs beside the stack and starts the EC2 training instance for each request; the
trainer on that instance stops it once it is idle.
"""

from __future__ import annotations

import gc
import json
import logging
import traceback
from dataclasses import dataclass
from typing import Any

import psycopg2
from confluent_kafka import Message

from sightscan import db, kafka
from sightscan.commands import BadCommand, CommandWorker
from sightscan.config import Settings
from sightscan.memory import release_free_memory
from sightscan.topics import training_events_topic
from trainer import cloud
from trainer.data import NotEnoughData
from trainer.guard import Rejected
from trainer.pipeline import train_city
from trainer.settings import TrainerSettings, load

log = logging.getLogger(__name__)

REASONS = ("threshold", "growth", "corrections", "manual")
# One training may take much longer than the default 5 min between polls.
MAX_TRAINING_S = 6 * 3600.0


@dataclass(frozen=True)
class TrainingRequest:
    city_id: int
    city: str
    epochs: int
    classes: list[str]
    reason: str
    request_id: str

    @classmethod
    def of(cls, command: dict[str, Any]) -> TrainingRequest:
        """From the command's JSON object (city_id already checked by the command loop); BadCommand if not."""
        try:
            epochs = int(command.get("epochs") or 0)
        except (TypeError, ValueError) as exc:
            raise BadCommand(f"epochs is not an integer: {command.get('epochs')!r}") from exc
        reason = command.get("reason", "manual")
        if reason not in REASONS:
            raise BadCommand(f"unknown reason {reason!r}; expected one of {', '.join(REASONS)}")
        return cls(command["city_id"], str(command.get("city") or ""), epochs, list(command.get("classes") or []),
                   reason, str(command.get("request_id") or ""))


def _field_of(value: bytes | None, name: str) -> Any:
    """A field of a request that did not parse, if it can be read at all (for its failure event)."""
    try:
        raw = json.loads(value or b"")
        return raw.get(name) if isinstance(raw, dict) else None
    except (ValueError, TypeError):
        return None


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
        self.events_topic = training_events_topic(settings.topic_prefix)
        group = self.ts.group_id + ("-dispatch" if role == "dispatch" else "")
        self.worker = CommandWorker(settings, "training", group, self._handle, required={"city_id": int},
                                    max_poll_interval_s=MAX_TRAINING_S, on_dead_letter=self._announce_bad_request)

    def close(self) -> None:
        self.worker.close()

    def run(self, max_requests: int | None = None, idle_exit_s: float | None = None) -> int:
        """Serve until close(), `max_requests` handled, or idle for `idle_exit_s`; the cloud trainer also stops
        its own instance once idle for TRAINER_IDLE_STOP_S (no work left: stop paying for it, as the original)."""
        stop_instance_after = self.ts.idle_stop_s if self.role == "train" and self.ts.cloud else None
        waits = [w for w in (idle_exit_s, stop_instance_after) if w is not None]
        handled = self.worker.run(max_commands=max_requests, idle_exit_s=min(waits) if waits else None)
        if self.worker.idle_exit and stop_instance_after is not None and stop_instance_after == min(waits):
            assert self.ts.cloud is not None
            cloud.stop_instance(self.ts.cloud)
        return handled

    def publish(self, event: dict[str, Any], key: bytes | None) -> None:
        """Send the outcome and wait for the broker's ack: the request's offset is committed only after this."""
        kafka.deliver(self.worker.producer, self.events_topic, json.dumps(event).encode(), key=key)
        log.info("training event", extra={k: v for k, v in event.items() if k != "metrics"})

    def _announce_bad_request(self, msg: Message, reason: str) -> None:
        city_id = _field_of(msg.value(), "city_id")
        self.publish({"request_id": _field_of(msg.value(), "request_id"),
                      "city_id": city_id if isinstance(city_id, int) else None, "status": "failed",
                      "reason": f"bad request: {reason}"}, msg.key())

    def _handle(self, command: dict[str, Any], msg: Message) -> dict[str, Any]:
        request = TrainingRequest.of(command)
        try:
            event = self.answer(request)
        finally:
            # A training frees gigabytes from several threads; without a trim glibc keeps them all (bench/soak).
            gc.collect()
            release_free_memory()
        self.publish(event, msg.key())
        return {k: v for k, v in event.items() if k not in ("metrics", "trace", "classes", "guard")}

    def answer(self, request: TrainingRequest) -> dict[str, Any]:
        """The outcome of one request: trained, dispatched, already answered, rejected (the poisoning guard refused
        the model: trainer/guard.py) or failed (never a crash)."""
        base = {"request_id": request.request_id, "city_id": request.city_id, "city": request.city,
                "trigger": request.reason}
        if self.role == "dispatch":
            return self._dispatch(request, base)
        done = self._already_trained(request)
        if done is not None:  # a redelivered copy of a request we answered: answer again, do not train again
            return {**base, "status": "succeeded", "model_id": done[0], "version": done[1], "duplicate": True}
        try:
            outcome = train_city(self.settings, request.city_id, progress=False, epochs=request.epochs or None,
                                 trainer_settings=self.ts,
                                 extra_metrics={"request_id": request.request_id, "trigger": request.reason})
        except (NotEnoughData, LookupError) as exc:
            return {**base, "status": "failed", "reason": str(exc)}
        except Rejected as exc:  # learned from corrections and did worse: no model row; the stream waits for more
            return {**base, "status": "rejected", "reason": str(exc), "guard": exc.guard}
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            raise  # the warehouse is away: retried with backoff by the command loop, not reported as a failure
        except Exception as exc:  # a crash in training must not kill the service nor lose the request's outcome
            log.exception("training crashed", extra={"city_id": request.city_id})
            return {**base, "status": "failed", "reason": f"crash: {type(exc).__name__}: {exc}",
                    "trace": traceback.format_exc(limit=5)}
        return {**base, "status": "succeeded", "version": outcome.version, "model_id": outcome.model_id,
                "classes": outcome.classes, "metrics": outcome.metrics}

    def _already_trained(self, request: TrainingRequest) -> tuple[int, int] | None:
        if not request.request_id:
            return None
        with db.transaction(self.settings) as cur:
            return db.model_for_request(cur, request.city_id, request.request_id)

    def _dispatch(self, request: TrainingRequest, base: dict[str, Any]) -> dict[str, Any]:
        assert self.ts.cloud is not None
        try:
            state = cloud.start_instance(self.ts.cloud)
        except cloud.InstanceStartFailed as exc:
            return {**base, "status": "failed", "reason": str(exc)}
        return {**base, "status": "dispatched", "instance_id": self.ts.cloud.instance_id, "instance_state": state}
