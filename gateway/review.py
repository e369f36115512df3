"""The review queue (docs/corrections.md, "Review queue"): live frames on which the model was unsure, kept for a
person to accept or fix, in the cities whose operator opted in.

The sampler sits on the frame path. `ReviewSampler.offer` runs on the event loop after each answer and never
awaits: it looks up the city's opt-in in memory (refreshed in the background every GATEWAY_REVIEW_RECHECK_S, at
once when changed through this gateway), decides from the detections already answered whether the frame is
unsure, checks the per-minute cap in memory, and hands the frame to a task that stores it on the warehouse's
threads. At most MAX_IN_FLIGHT frames are being stored at once; past that a frame is dropped, never waited for.
The warehouse checks every cap again under a lock of the city's row (sightscan/db.py: keep_review_frame), so
several gateways together keep no more than the caps allow.

Endpoints: `GET /api/cities/{city}/review` (any valid token: the queue, newest first),
`GET /api/cities/{city}/review/{id}/frame` (the frame's bytes), `DELETE /api/cities/{city}/review/{id}` (take it
out of the queue: dismissed, or corrected when a correction has its bytes) and `PUT /api/cities/{city}/review`
`{"sample": true | false}` (the operator's: the opt-in). Accepting or fixing a frame is a correction like any
(`POST /api/cities/{city}/corrections` with the frame's bytes): once stored, the frame is no longer in the queue.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import Any
from urllib.parse import quote

from aiohttp import web
from prometheus_client import Counter

from gateway.auth import require_operator, require_token
from gateway.errors import fail, read_json
from gateway.registry import LoadedModel
from gateway.rest import city_or_fail
from gateway.state import STATE, GatewayState
from gateway.warehouse import PgWarehouse
from sightscan import db
from sightscan.detector import Detection

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

MAX_IN_FLIGHT = 2  # frames being stored at once, the whole gateway; more are dropped
FULL_BACKOFF_S = 60.0  # after the warehouse says a city's day or queue is full, no store is tried for this long
MAX_ID = 2**63 - 1
MAX_LIMIT = 200


# Deciding ---------------------------------------------------------------------------------------------------


def model_threshold(model: LoadedModel, fallback: float) -> float:
    """The model's calibrated operating threshold (its metrics' "threshold"), or `fallback` when it has none."""
    value = model.metrics.get("threshold")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1:
        return float(value)
    return fallback


def unsure(found: Sequence[Detection], threshold: float, threshold_margin: float,
           close_margin: float) -> str | None:
    """Why a frame's answer is unsure, or None: 'near-threshold' when its top score lies within `threshold_margin`
    of `threshold`, else 'close-sights' when its two best sights (each by its best detection) score within
    `close_margin` of each other. A frame answered with nothing is never unsure: scores under the threshold do not
    leave the model."""
    best: dict[str, float] = {}
    for d in found:
        if d.score > best.get(d.sight, -1.0):
            best[d.sight] = d.score
    scores = sorted(best.values(), reverse=True)
    if not scores:
        return None
    if abs(scores[0] - threshold) <= threshold_margin:
        return "near-threshold"
    if len(scores) > 1 and scores[0] - scores[1] <= close_margin:
        return "close-sights"
    return None


def mime_type(data: bytes) -> str | None:
    """The type of a frame that decoded, from its first bytes (JPEG, PNG or WebP, the only ones accepted)."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


class ReviewSampler:
    """Keeps a capped sample of unsure live frames of the cities that opted in (see the module docstring)."""

    def __init__(self, state: GatewayState) -> None:
        self.settings = state.settings
        self._pg = state.warehouse if isinstance(state.warehouse, PgWarehouse) else None  # a fixed model: none
        self.caps = db.ReviewCaps(self.settings.review_per_minute, self.settings.review_per_day,
                                  self.settings.review_max_queue)
        self._flags: dict[int, tuple[bool, float]] = {}  # city id -> (samples, when learned)
        self._refreshing: set[int] = set()
        self._recent: dict[int, deque[float]] = {}  # city id -> when stores were tried, the last 60 s
        self._full: dict[int, tuple[float, str]] = {}  # city id -> (no store tried until, why)
        self._in_flight = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.outcomes = Counter("sightscan_gateway_review_frames",
                                "unsure live frames offered to the review queue, by outcome: kept, or why not "
                                "(busy, per_minute, per_day, queue_full, duplicate, corrected, off, failed)",
                                ["outcome"], registry=state.metrics.registry)

    def known(self, city_id: int, sample: bool) -> None:
        """The city's opt-in as just set through this gateway."""
        self._flags[city_id] = (sample, time.monotonic())
        self._full.pop(city_id, None)

    def offer(self, city_id: int, model: LoadedModel, data: bytes, width: int, height: int,
              found: Sequence[Detection], shown: list[dict[str, Any]]) -> str | None:
        """Called on the event loop with each answered frame; never waits. The reason when the frame goes to be
        stored, else None (not sampled, sure of itself, over a cap, or the gateway busy storing others)."""
        if self._pg is None or not found:
            return None
        now = time.monotonic()
        if not self._sampling(city_id, now):
            return None
        threshold = model_threshold(model, self.settings.score_threshold)
        reason = unsure(found, threshold, self.settings.review_threshold_margin, self.settings.review_close_margin)
        if reason is None:
            return None
        full = self._full.get(city_id)
        if full is not None and full[0] > now:
            self.outcomes.labels(full[1]).inc()
            return None
        recent = self._recent.setdefault(city_id, deque())
        while recent and now - recent[0] >= 60.0:
            recent.popleft()
        if len(recent) >= self.caps.per_minute:
            self.outcomes.labels("per_minute").inc()
            return None
        mime = mime_type(data)
        if self._in_flight >= MAX_IN_FLIGHT or mime is None:
            self.outcomes.labels("busy" if mime else "failed").inc()
            return None
        recent.append(now)
        self._in_flight += 1
        new = db.NewReviewFrame(city_id=city_id, reason=reason, model_version=model.version, threshold=threshold,
                                shown=shown, data=data, mime_type=mime, width=width, height=height)
        self._spawn(self._store(new))
        return reason

    def _sampling(self, city_id: int, now: float) -> bool:
        entry = self._flags.get(city_id)
        if (entry is None or now - entry[1] >= self.settings.review_recheck_s) and city_id not in self._refreshing:
            self._refreshing.add(city_id)
            self._spawn(self._refresh(city_id))
        return entry is not None and entry[0]

    async def _refresh(self, city_id: int) -> None:
        assert self._pg is not None
        started = time.monotonic()
        try:
            sample = await self._pg.review_sampling(city_id)
        except Exception as exc:  # keep what was believed; asked again after the recheck interval
            log.warning("review opt-in lookup failed", extra={"city_id": city_id, "error": str(exc)[:200]})
            sample = self._flags.get(city_id, (False, 0.0))[0]
        finally:
            self._refreshing.discard(city_id)
        entry = self._flags.get(city_id)
        if entry is not None and entry[1] > started:
            return  # set through this gateway meanwhile: newer than what this lookup read
        self._flags[city_id] = (sample, time.monotonic())

    async def _store(self, new: db.NewReviewFrame) -> None:
        assert self._pg is not None
        try:
            kept = await self._pg.keep_review_frame(new, self.caps)
        except Exception as exc:
            log.warning("review frame not stored", extra={"city_id": new.city_id, "error": str(exc)[:200]})
            kept = "failed"
        finally:
            self._in_flight -= 1
        if isinstance(kept, int):
            self.outcomes.labels("kept").inc()
            log.info("review frame kept", extra={"city_id": new.city_id, "review_id": kept, "reason": new.reason,
                                                 "model_version": new.model_version})
            return
        self.outcomes.labels(kept).inc()
        if kept == "off":
            self._flags[new.city_id] = (False, time.monotonic())
        elif kept in ("per_day", "queue_full"):
            self._full[new.city_id] = (time.monotonic() + FULL_BACKOFF_S, kept)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work, name="review")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, app: web.Application | None = None) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


SAMPLER: web.AppKey[ReviewSampler] = web.AppKey("review_sampler", ReviewSampler)


def setup(app: web.Application) -> None:
    """Register the sampler (the websocket offers it each answered frame) and the routes on the gateway app."""
    sampler = ReviewSampler(app[STATE])
    app[SAMPLER] = sampler
    app.on_shutdown.append(sampler.close)
    app.add_routes(routes)


# Endpoints --------------------------------------------------------------------------------------------------


def _positive(raw: str) -> int | None:
    """A positive row id from text, or None when it is not one."""
    if raw.isascii() and raw.isdigit() and len(raw) < 20 and 0 < int(raw) <= MAX_ID:
        return int(raw)
    return None


def _query_id(raw: str, what: str) -> int:
    value = _positive(raw)
    if value is None:
        fail(web.HTTPBadRequest, "bad_query", f"{what} must be a positive integer")
    return value


def frame_json(city: db.City, f: db.ReviewFrame) -> dict[str, Any]:
    top = max(f.shown, key=lambda d: d["score"]) if f.shown else None
    accept = ({"action": "confirm", "sight": top["sight"], "box": top["box"]} if top is not None
              else {"action": "no-sight"})
    return {"id": f.id, "reason": f.reason, "model_version": f.model_version, "threshold": round(f.threshold, 6),
            "shown": f.shown, "width": f.width, "height": f.height, "mime_type": f.mime_type,
            "kept_at": f.kept_at.isoformat(),
            "frame": f"/api/cities/{quote(city.name, safe='')}/review/{f.id}/frame", "accept": accept}


@routes.get("/api/cities/{city:[^/]+}/review")
async def get_queue(request: web.Request) -> web.Response:
    await require_token(request)
    state = request.app[STATE]
    query = request.query
    unknown = sorted(set(query) - {"limit", "before"})
    if unknown:
        fail(web.HTTPBadRequest, "bad_query", f"unknown parameter(s) {', '.join(unknown)}; there are limit and "
             "before")
    limit = _query_id(query.get("limit", "50"), "limit")
    if limit > MAX_LIMIT:
        fail(web.HTTPBadRequest, "bad_query", f"limit must be at most {MAX_LIMIT}")
    before = _query_id(query["before"], "before") if "before" in query else None
    city = await city_or_fail(state, request.match_info["city"])
    frames, waiting = await state.pg.list_review_frames(city.id, before, limit)
    sample = await state.pg.review_sampling(city.id)
    return web.json_response({"city": city.name, "sample": sample, "waiting": waiting,
                              "frames": [frame_json(city, f) for f in frames]})


@routes.put("/api/cities/{city:[^/]+}/review")
async def put_sampling(request: web.Request) -> web.Response:
    await require_operator(request)  # frames of people's cameras are kept: the operator's call
    state = request.app[STATE]
    body = await read_json(request, '{"sample": true}')
    if not (isinstance(body, dict) and set(body) == {"sample"} and isinstance(body["sample"], bool)):
        fail(web.HTTPBadRequest, "bad_review", 'send {"sample": true} to keep unsure live frames of this city for '
             'review, or {"sample": false} to stop')
    city = await city_or_fail(state, request.match_info["city"])
    sample, updated_at = await state.pg.set_review_sampling(city.id, body["sample"])
    request.app[SAMPLER].known(city.id, sample)
    log.info("review sampling set", extra={"city_id": city.id, "sample": sample})
    return web.json_response({"city": city.name, "sample": sample, "updated_at": updated_at.isoformat()})


def _unknown(city: db.City, raw: str) -> None:
    fail(web.HTTPNotFound, "unknown_review_frame", f"{city.name} has no frame {raw} waiting for review")


@routes.get("/api/cities/{city:[^/]+}/review/{id:[0-9]+}/frame")
async def get_frame(request: web.Request) -> web.Response:
    await require_token(request)
    state = request.app[STATE]
    city = await city_or_fail(state, request.match_info["city"])
    raw = request.match_info["id"]
    frame_id = _positive(raw)
    found = None if frame_id is None else await state.pg.review_frame_data(city.id, frame_id)
    if found is None:
        _unknown(city, raw)
    data, mime = found
    # Someone's camera: not for shared caches, and never sniffed as anything but the image it is.
    return web.Response(body=data, content_type=mime, headers={"Cache-Control": "private, no-store",
                                                               "X-Content-Type-Options": "nosniff"})


@routes.delete("/api/cities/{city:[^/]+}/review/{id:[0-9]+}")
async def finish(request: web.Request) -> web.Response:
    writer = await require_token(request)
    state = request.app[STATE]
    city = await city_or_fail(state, request.match_info["city"])
    raw = request.match_info["id"]
    frame_id = _positive(raw)
    done = None if frame_id is None else await state.pg.finish_review_frame(city.id, frame_id)
    if done is None:
        _unknown(city, raw)
    log.info("review frame done", extra={"city_id": city.id, "review_id": frame_id, "outcome": done.outcome,
                                         "correction_id": done.correction_id, "user": writer.name})
    return web.Response(status=204)
