"""Labelling a city's images: Google Vision landmarks (matched to sights, boxes normalised) or offline weak labels.

What gets written, one transaction per Vision request (so a failure later in a command keeps what was paid for):
- a landmark matched to a sight -> a label row (labeller 'google-vision', its score and box); one row per sight per
  image, the best-scoring landmark of that sight;
- an image where Vision found no usable landmark -> a label row with sight_id NULL (labeller 'google-vision'): the
  stream agent counts it as "no landmark" and never requests the image again;
- offline (no Google credentials), or once the city's budget is spent: the sight the image was crawled or uploaded
  for becomes a weak label (labeller 'weak-query', weak=true, box = the whole image);
- an image with no such sight that cannot go to Vision (offline, or over budget) is left unlabelled and reported
  (log warning, `left_unlabelled` in the summary, images_over_budget in labelling_costs): there is nothing true to
  write, and `sightscan label CITY` labels it later once Vision is configured or the cap raised.
An image that already has a label, or no longer exists, is skipped: redelivered requests change nothing.
One labeller works on a city at a time (a PostgreSQL advisory lock), so two never label the same image twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg2.extensions

from consumers import warehouse
from consumers.boxes import Box, normalise_box
from consumers.budget import Budget
from consumers.matching import SightMatcher
from consumers.settings import LabellerSettings
from consumers.vision import ImageAnswer, VisionClient, VisionUnavailable
from sightscan import db
from sightscan.config import Settings
from sightscan.names import nameable

log = logging.getLogger(__name__)

VISION_LABELLER = "google-vision"
WEAK_LABELLER = "weak-query"
WHOLE_IMAGE: Box = (0.0, 0.0, 1.0, 1.0)


@dataclass
class Outcome:
    """What one labelling run did; `summary()` is what the service logs."""
    requested: int = 0
    labelled_images: int = 0      # images that got their label row(s) in this run
    skipped_labelled: int = 0
    skipped_missing: int = 0
    sent_to_vision: int = 0
    landmark_labels: int = 0
    no_landmark: int = 0
    weak: int = 0
    over_budget: int = 0
    degenerate_boxes: int = 0
    unnamed_landmarks: int = 0    # Vision answered a landmark whose description names nothing (sightscan.names)
    new_sights: list[str] = field(default_factory=list)
    left_unlabelled: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)   # image id -> a per-image error that will not pass
    retry: dict[int, str] = field(default_factory=dict)    # image id -> a per-image error that may pass

    def add(self, other: Outcome) -> None:
        for name in ("requested", "skipped_labelled", "skipped_missing", "sent_to_vision", "landmark_labels",
                     "no_landmark", "weak", "over_budget", "degenerate_boxes", "unnamed_landmarks", "labelled_images"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.new_sights += other.new_sights
        self.left_unlabelled += other.left_unlabelled
        self.failed.update(other.failed)
        self.retry.update(other.retry)

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k not in ("failed", "retry", "left_unlabelled", "new_sights")}
        out.update(new_sights=self.new_sights, left_unlabelled=len(self.left_unlabelled),
                   failed=len(self.failed), retry=len(self.retry))
        return out


class Labeller:
    """Labels given images of a city with the configured backend ('vision' or 'weak'). One thread uses it."""

    def __init__(self, settings: Settings, lsettings: LabellerSettings, vision: VisionClient | None = None) -> None:
        self.settings, self.lsettings = settings, lsettings
        self.backend = lsettings.active_backend
        self.vision = vision if vision is not None or self.backend == "weak" else VisionClient(lsettings)
        self.budget = Budget(settings.max_google_vision_calls_per_new_city)
        self._conn: psycopg2.extensions.connection | None = None

    def describe(self) -> dict[str, Any]:
        """The active backend, for the start-up log line."""
        if self.backend == "weak":
            reason = ("offline: no GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_VISION_ENDPOINT"
                      if self.lsettings.backend == "auto" else "LABELLER_BACKEND=weak")
            return {"backend": WEAK_LABELLER, "reason": reason}
        assert self.vision is not None
        return {"backend": VISION_LABELLER, "endpoint": self.vision.endpoint, "transport": self.lsettings.transport,
                "batch_size": self.lsettings.batch_size, "cap_images_per_city": self.budget.cap}

    def label(self, city_id: int, image_ids: list[int], request_id: str = "") -> Outcome:
        """Label those of `image_ids` that exist in the city and have no label yet.

        Raises VisionUnavailable (passing) or VisionRefused (permanent) for a failed Vision request; labels written
        for earlier requests of the run stay. Per-image errors are returned in Outcome.failed / Outcome.retry."""
        outcome = Outcome(requested=len(image_ids))
        conn = self._connection()
        try:
            with conn, conn.cursor() as cur:
                warehouse.lock_city_labelling(cur, city_id)  # session lock: held across the transactions below
            try:
                self._label_locked(conn, city_id, image_ids, outcome)
            finally:
                with conn, conn.cursor() as cur:
                    warehouse.unlock_city_labelling(cur, city_id)
        except psycopg2.Error:
            self.close()  # a broken connection (or one in an unknown state) is not reused; closing also unlocks
            raise
        if outcome.left_unlabelled:
            log.warning("images left unlabelled: no Vision answer possible and no query sight to fall back on",
                        extra={"city_id": city_id, "request_id": request_id, "image_ids": outcome.left_unlabelled,
                               "backend": self.backend})
        return outcome

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg2.extensions.connection:
        # One connection per labeller, reused: connecting costs more than a small request's queries.
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.settings)
        return self._conn

    def _label_locked(self, conn: psycopg2.extensions.connection, city_id: int, image_ids: list[int],
                      outcome: Outcome) -> None:
        with conn, conn.cursor() as cur:
            images = warehouse.images_to_label(cur, city_id, image_ids, with_data=self.backend == "vision")
            cur.execute("SELECT count(*) FROM images WHERE id = ANY(%s) AND city_id = %s", (list(image_ids), city_id))
            present = cur.fetchone()[0]
        outcome.skipped_missing = len(set(image_ids)) - present
        outcome.skipped_labelled = present - len(images)
        if self.backend == "weak":
            with conn, conn.cursor() as cur:
                self._write_weak(cur, city_id, images, outcome, reason="offline")
            return
        for start in range(0, len(images), self.lsettings.batch_size):
            self._vision_batch(conn, city_id, images[start:start + self.lsettings.batch_size], outcome)

    # Vision ------------------------------------------------------------------------------------------

    def _vision_batch(self, conn: psycopg2.extensions.connection, city_id: int, images: list[warehouse.ImageToLabel],
                      outcome: Outcome) -> None:
        assert self.vision is not None
        granted = self.budget.reserve(conn, city_id, len(images))
        send, over = images[:granted], images[granted:]
        answers: list[ImageAnswer] = []
        if send:
            try:
                answers = self.vision.annotate([image.data for image in send])
            except VisionUnavailable as exc:
                if exc.refundable:
                    self.budget.refund(conn, city_id, granted)
                raise
            outcome.sent_to_vision += len(send)
        with conn, conn.cursor() as cur:
            # Locked again: a label written meanwhile (another tool) or an image deleted meanwhile is skipped.
            still = {i.id for i in warehouse.images_to_label(cur, city_id, [i.id for i in images], with_data=False,
                                                      lock=True)}
            matcher = SightMatcher(warehouse.city_sights(cur, city_id), warehouse.vision_landmark_sights(cur, city_id),
                                   self.lsettings.match_cutoff)
            for image, answer in zip(send, answers, strict=True):
                if image.id not in still:
                    continue
                if answer.error is not None:
                    bucket = outcome.retry if answer.transient else outcome.failed
                    bucket[image.id] = f"code {answer.error[0]}: {answer.error[1]}"
                    continue
                self._write_landmarks(cur, matcher, image, answer, outcome)
            over = [i for i in over if i.id in still]
            if over:
                outcome.over_budget += len(over)
                warehouse.count_over_budget(cur, city_id, len(over))
                self._write_weak(cur, city_id, over, outcome, reason="over budget")

    def _write_landmarks(self, cur: psycopg2.extensions.cursor, matcher: SightMatcher, image: warehouse.ImageToLabel,
                         answer: ImageAnswer, outcome: Outcome) -> None:
        best: dict[int, tuple[float, Box]] = {}
        for lm in answer.landmarks:
            if lm.score < self.lsettings.min_score or not lm.description.strip():
                continue
            if lm.vertices:
                box = normalise_box(lm.vertices, image.width, image.height)
            else:
                box = normalise_box(lm.normalised_vertices, image.width, image.height, normalised=True)
            if box is None:
                outcome.degenerate_boxes += 1
                continue
            if not nameable(lm.description):
                outcome.unnamed_landmarks += 1
                continue
            match = matcher.match(lm.description, lm.mid)
            sight_id = match.sight_id
            if sight_id is None:
                sight_id = db.ensure_sight(cur, image.city_id, lm.description, source="vision")
                outcome.new_sights.append(lm.description)
            matcher.add(sight_id, matcher.names.get(sight_id, lm.description), lm.mid)
            if lm.mid:
                warehouse.remember_vision_landmark(cur, image.city_id, lm.mid, sight_id, lm.description)
            log.debug("landmark matched", extra={"image_id": image.id, "description": lm.description, "mid": lm.mid,
                                                 "sight_id": sight_id, "how": match.how,
                                                 "similarity": round(match.similarity, 3)})
            score = min(1.0, max(0.0, lm.score))
            if sight_id not in best or score > best[sight_id][0]:
                best[sight_id] = (score, box)
        for sight_id, (score, box) in best.items():
            db.insert_label(cur, db.NewLabel(image.id, image.city_id, VISION_LABELLER, sight_id, score, box))
        if best:
            outcome.landmark_labels += len(best)
        else:
            db.insert_label(cur, db.NewLabel(image.id, image.city_id, VISION_LABELLER))
            outcome.no_landmark += 1
        outcome.labelled_images += 1

    # Offline -----------------------------------------------------------------------------------------

    def _write_weak(self, cur: psycopg2.extensions.cursor, city_id: int, images: list[warehouse.ImageToLabel],
                    outcome: Outcome, reason: str) -> None:
        if reason == "offline":
            # Re-read under lock: the first read was outside this transaction.
            still = {i.id for i in warehouse.images_to_label(cur, city_id, [i.id for i in images], with_data=False,
                                                      lock=True)}
            images = [i for i in images if i.id in still]
        for image in images:
            if image.sight_id is None:
                outcome.left_unlabelled.append(image.id)
                continue
            db.insert_label(cur, db.NewLabel(image.id, city_id, WEAK_LABELLER, image.sight_id, None, WHOLE_IMAGE,
                                             weak=True))
            outcome.weak += 1
            outcome.labelled_images += 1
