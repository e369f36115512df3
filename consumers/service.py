"""The labeller service: consumes labelling requests (sightscan.commands.CommandWorker) and labels their images.

A request's outcome, so that none is silently dropped:
- done: labels written (see consumers/labeller.py), offset committed, summary logged;
- Vision unavailable (429 quota, 5xx, timeout) or a per-image error that may pass: RetryLater, so the worker
  retries the request from the same offset with backoff (LABELLER_BACKOFF_S, doubling); images labelled by an
  earlier attempt are skipped. After LABELLER_MAX_ATTEMPTS it goes to `<prefix>.commands.dead-letter` with the
  reason;
- Vision refused the request (400/401/403…), a per-image error that will not pass (unreadable image), or a
  malformed request: dead-lettered at once with the reason (the other images of the request keep their labels).
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Message

from consumers.labeller import Labeller
from consumers.settings import LabellerSettings
from consumers.vision import VisionClient, VisionRefused, VisionUnavailable
from sightscan import db
from sightscan.commands import Backoff, BadCommand, CommandWorker, RetryLater
from sightscan.config import ConfigError, Settings

log = logging.getLogger(__name__)


def check_schema(settings: Settings) -> None:
    """Fail at start-up, with the fix, when the warehouse lacks the labeller's migration."""
    with db.transaction(settings) as cur:
        cur.execute("SELECT to_regclass('vision_landmarks') IS NOT NULL")
        if not cur.fetchone()[0]:
            raise ConfigError("the warehouse lacks the labeller's tables (migration 0004_labeller): run "
                              "`sightscan migrate`")


def _image_ids(command: dict[str, Any]) -> list[int]:
    ids = command["image_ids"]
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise BadCommand("image_ids must be a non-empty list of integers")
    return ids


class LabellerService:
    def __init__(self, settings: Settings, lsettings: LabellerSettings | None = None,
                 vision: VisionClient | None = None) -> None:
        self.settings = settings
        self.lsettings = lsettings or LabellerSettings.from_env()
        check_schema(settings)
        self.labeller = Labeller(settings, self.lsettings, vision)
        log.info(f"labeller backend: {self.labeller.describe()['backend']}", extra=self.labeller.describe())
        self.worker = CommandWorker(
            settings, "labelling", self.lsettings.group(settings.topic_prefix), self.handle,
            required={"city_id": int, "image_ids": list},
            backoff=Backoff(first_s=self.lsettings.backoff_s, max_s=60.0),
            max_attempts=self.lsettings.max_attempts)

    def handle(self, command: dict[str, Any], message: Message | None = None) -> dict[str, Any]:
        city_id, request_id = command["city_id"], str(command.get("request_id") or "")
        image_ids = _image_ids(command)
        try:
            outcome = self.labeller.label(city_id, image_ids, request_id)
        except VisionUnavailable as exc:
            raise RetryLater(str(exc)) from exc
        except VisionRefused as exc:
            raise BadCommand(f"Vision refused the request: {exc}") from exc
        if outcome.failed:
            raise BadCommand("Vision could not label images " + "; ".join(
                f"{image_id}: {why}" for image_id, why in sorted(outcome.failed.items())))
        if outcome.retry:
            raise RetryLater("Vision failed on images " + "; ".join(
                f"{image_id}: {why}" for image_id, why in sorted(outcome.retry.items())))
        return {"request_id": request_id, "city_id": city_id, **outcome.summary()}

    def run(self, max_commands: int | None = None, idle_exit_s: float | None = None) -> int:
        try:
            return self.worker.run(max_commands=max_commands, idle_exit_s=idle_exit_s)
        finally:
            self.labeller.close()

    def serve_forever(self) -> int:
        try:
            return self.worker.serve_forever()
        finally:
            self.labeller.close()

    def close(self) -> None:
        self.worker.close()
