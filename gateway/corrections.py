"""Corrections and the users who send them (docs/corrections.md): what a user fixes on the page becomes a label.

`POST/DELETE /api/users` (the operator's), `POST/GET /api/cities/{city}/corrections` and
`DELETE /api/cities/{city}/corrections/{id}`. A correction, its label and its frame are stored in one transaction
(sightscan/db.py); each credential may send GATEWAY_CORRECTIONS_PER_MINUTE corrections a minute.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage

from gateway.auth import Writer, require_operator, require_token
from gateway.errors import HTTPTooLarge, fail, read_json
from gateway.ratelimit import RateLimiter
from gateway.rest import check_image, city_or_fail, raw_name, read_file_part
from gateway.state import STATE
from sightscan import db
from sightscan.names import MAX_NAME_CHARS

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
LIMITER: web.AppKey[RateLimiter] = web.AppKey("corrections_limiter", RateLimiter)

MAX_CORRECTION_BYTES = 65_536  # the `correction` field: 50 shown detections fit many times over
MAX_SHOWN = 50
MAX_ID = 2**63 - 1  # bigint
EXAMPLE = '{"action": "box", "sight": "Belem Tower", "box": [0.1, 0.2, 0.5, 0.9]}'
FIELDS = {"action", "sight", "box", "model_version", "shown"}


def setup(app: web.Application) -> None:
    """Register the routes and the rate limit on the gateway app."""
    app[LIMITER] = RateLimiter(app[STATE].settings.corrections_per_minute)
    app.add_routes(routes)


def _id(raw: str, code: str, what: str) -> int:
    """A positive row id from text; 400 with `code` otherwise (ids past bigint included)."""
    if not (raw.isascii() and raw.isdigit() and len(raw) < 20) or not 0 < int(raw) <= MAX_ID:
        fail(web.HTTPBadRequest, code, f"{what} must be a positive integer")
    return int(raw)


# Users ----------------------------------------------------------------------------------------------------


@routes.post("/api/users")
async def add_user(request: web.Request) -> web.Response:
    await require_operator(request)
    body = await read_json(request, '{"name": "ada"}')
    name = body.get("name") if isinstance(body, dict) else None
    if not db.valid_user_name(name):
        fail(web.HTTPBadRequest, "bad_name", "name must be 1 to 63 characters among a-z 0-9 . _ -, starting with a "
             "letter or digit")
    token = db.new_user_token()
    user = await request.app[STATE].pg.insert_user(name, db.token_sha256(token))
    if user is None:
        fail(web.HTTPConflict, "user_exists", f"there is already a user named {name!r} (a disowned name stays taken)")
    log.info("user added", extra={"user": user.name, "user_id": user.id})
    return web.json_response({"name": user.name, "token": token, "created_at": user.created_at.isoformat()},
                             status=201)


@routes.delete("/api/users/{name}")
async def disown_user(request: web.Request) -> web.Response:
    await require_operator(request)
    name = request.match_info["name"]
    done = await request.app[STATE].pg.disown_user(name) if db.valid_user_name(name) else None
    if done is None:
        fail(web.HTTPNotFound, "unknown_user", f"there is no user named {name!r}")
    log.info("user disowned", extra={"user": name, "corrections_deleted": done.corrections_deleted,
                                     "images_deleted": done.images_deleted})
    return web.json_response({"name": done.user.name, "disowned_at": done.user.disowned_at.isoformat(),
                              "corrections_deleted": done.corrections_deleted,
                              "images_deleted": done.images_deleted})


# Corrections ----------------------------------------------------------------------------------------------


@dataclass
class _Form:
    frame: bytes | None = None
    image_id: int | None = None
    correction: bytes | None = None


async def _read_text(part: BodyPartReader, limit: int, field: str) -> bytes:
    raw = b""
    while chunk := await part.read_chunk(4096):
        raw += chunk
        if len(raw) > limit:
            fail(HTTPTooLarge, "too_large", f"the {field} field may have at most {limit} bytes")
    return raw


async def _read_form(request: web.Request, frame_limit: int) -> _Form:
    if not request.content_type.startswith("multipart/"):
        fail(web.HTTPUnsupportedMediaType, "multipart_required",
             "send multipart/form-data with a field 'correction' (JSON) and a file field 'frame' (or 'image_id')")
    form, seen = _Form(), set()
    try:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader) or part.name not in ("frame", "image_id", "correction"):
                continue  # other parts are skipped unread
            if part.name in seen:
                fail(web.HTTPBadRequest, "duplicate_field", f"the field {part.name!r} is sent twice")
            seen.add(part.name)
            if part.name == "frame":
                form.frame = await read_file_part(part, frame_limit, "a frame")
            elif part.name == "image_id":
                text = (await _read_text(part, 32, "image_id")).decode("ascii", "replace").strip()
                form.image_id = _id(text, "bad_image_id", "image_id")
            else:
                form.correction = await _read_text(part, MAX_CORRECTION_BYTES, "correction")
    except (ValueError, AssertionError, BadHttpMessage):  # aiohttp's multipart parser on a malformed body
        fail(web.HTTPBadRequest, "bad_multipart", "the multipart body is malformed (a part's headers or "
             "boundaries); send multipart/form-data with the fields 'correction' and 'frame'")
    if form.correction is None:
        fail(web.HTTPBadRequest, "missing_field", f"no field named 'correction'; send JSON like {EXAMPLE}")
    if form.frame is None and form.image_id is None:
        fail(web.HTTPBadRequest, "frame_required", "send the frame as a file field 'frame', or name a frame an "
             "earlier correction stored with a field 'image_id'")
    if form.frame is not None and form.image_id is not None:
        fail(web.HTTPBadRequest, "frame_or_image_id", "send a 'frame' or an 'image_id', not both")
    return form


@dataclass(frozen=True)
class _Correction:
    action: str
    sight: str | None
    box: tuple[float, float, float, float] | None
    model_version: int | None
    shown: list[dict[str, Any]]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _box(value: object, code: str, what: str) -> tuple[float, float, float, float]:
    if not (isinstance(value, list) and len(value) == 4 and all(_number(v) and 0 <= v <= 1 for v in value)):
        fail(web.HTTPBadRequest, code, f"{what} must be [x_min, y_min, x_max, y_max], four numbers in 0..1")
    # As the warehouse keeps them (real: single precision), so a box it would find empty is refused here.
    x0, y0, x1, y1 = (struct.unpack("f", struct.pack("f", v))[0] for v in value)
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        fail(web.HTTPBadRequest, code, f"{what} must lie in 0..1 with x_min < x_max and y_min < y_max; got {value}")
    return x0, y0, x1, y1


def _shown(value: object) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_SHOWN:
        fail(web.HTTPBadRequest, "bad_shown", f"shown must be a list of at most {MAX_SHOWN} detections")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"sight", "score", "box"} \
                or not isinstance(item["sight"], str) or not 0 < len(item["sight"]) <= MAX_NAME_CHARS \
                or not _number(item["score"]) or not 0 <= item["score"] <= 1:
            fail(web.HTTPBadRequest, "bad_shown", f"shown[{i}] must be {{\"sight\": name, \"score\": 0..1, "
                 "\"box\": [x_min, y_min, x_max, y_max]}")
        box = item["box"]  # as the model answered: in 0..1, but it may be thin to nothing
        if not (isinstance(box, list) and len(box) == 4 and all(_number(v) and 0 <= v <= 1 for v in box)):
            fail(web.HTTPBadRequest, "bad_shown", f"shown[{i}].box must be four numbers in 0..1")
        out.append({"sight": item["sight"], "score": float(item["score"]), "box": [float(v) for v in box]})
    return out


def parse_correction(raw: bytes) -> _Correction:
    """The `correction` field, checked: every error is a 400 naming what is wrong (docs/corrections.md)."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        fail(web.HTTPBadRequest, "bad_json", f"the correction field must be JSON like {EXAMPLE}")
    if not isinstance(body, dict):
        fail(web.HTTPBadRequest, "bad_correction", f"the correction must be a JSON object like {EXAMPLE}")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        fail(web.HTTPBadRequest, "bad_correction", f"unknown field(s) {', '.join(unknown)}; a correction has "
             f"{', '.join(sorted(FIELDS))}")
    action = body.get("action")
    if action is None:
        fail(web.HTTPBadRequest, "missing_field",
             f"the correction has no action; one of {', '.join(db.CORRECTION_ACTIONS)}")
    if action not in db.CORRECTION_ACTIONS:
        fail(web.HTTPBadRequest, "unknown_action", f"action must be one of {', '.join(db.CORRECTION_ACTIONS)}")
    sight = box = None
    if action in db.BOX_ACTIONS:
        for field in ("sight", "box"):
            if body.get(field) is None:
                fail(web.HTTPBadRequest, "missing_field", f"{action} needs a {field}")
        sight = raw_name(body["sight"], "sight")
        box = _box(body["box"], "bad_box", "box")
    else:
        extra = [f for f in ("sight", "box") if body.get(f) is not None]
        if extra:
            fail(web.HTTPBadRequest, "unexpected_field", f"{action} takes no {' or '.join(extra)}")
    version = body.get("model_version")
    if version is not None and not (isinstance(version, int) and not isinstance(version, bool)
                                    and 0 < version < 2**31):
        fail(web.HTTPBadRequest, "bad_model_version", "model_version must be a positive integer (or null)")
    return _Correction(action, sight, box, version, _shown(body.get("shown")))


def correction_json(c: db.Correction) -> dict[str, Any]:
    return {"id": c.id, "city": c.city, "image_id": c.image_id, "action": c.action, "sight": c.sight,
            "box": list(c.box) if c.box else None, "label_id": c.label_id, "user": c.user,
            "model_version": c.model_version, "shown": c.shown, "created_at": c.created_at.isoformat()}


def _rate_limit(request: web.Request, writer: Writer) -> None:
    limiter = request.app[LIMITER]
    wait = limiter.take(writer.key)
    if wait:
        fail(web.HTTPTooManyRequests, "rate_limited",
             f"at most {request.app[STATE].settings.corrections_per_minute} corrections a minute per token; try "
             f"again in {limiter.retry_after(wait)} s", **{"Retry-After": limiter.retry_after(wait)})


@routes.post("/api/cities/{city:[^/]+}/corrections")
async def post_correction(request: web.Request) -> web.Response:
    writer = await require_token(request)
    _rate_limit(request, writer)  # every correction sent counts, stored or refused: before any work
    state = request.app[STATE]
    city = await city_or_fail(state, request.match_info["city"])
    async with state.decoder.upload_slot():  # as uploads: bounded bodies in memory and decodes at once
        form = await _read_form(request, state.settings.max_upload_bytes)
        assert form.correction is not None
        parsed = parse_correction(form.correction)
        checked = await check_image(state, form.frame) if form.frame is not None else None
    frame = None if checked is None else db.NewImage(
        city_id=city.id, data=checked.data, mime_type=checked.mime_type, width=checked.width, height=checked.height,
        origin="user")
    new = db.NewCorrection(city_id=city.id, user=writer.user, action=parsed.action, sight=parsed.sight,
                           box=parsed.box, model_version=parsed.model_version, shown=parsed.shown, frame=frame,
                           image_id=form.image_id)
    try:
        stored = await state.pg.insert_correction(new)
    except db.UnknownSight:
        fail(web.HTTPUnprocessableEntity, "unknown_sight", f"{city.name} has no sight named {parsed.sight!r}")
    except db.UnknownImage:
        fail(web.HTTPUnprocessableEntity, "unknown_image", f"image {form.image_id} is not a frame of a correction "
             f"of {city.name}")
    log.info("correction stored", extra={"city_id": city.id, "correction_id": stored.id, "action": stored.action,
                                         "user": writer.name, "image_id": stored.image_id})
    return web.json_response(correction_json(stored), status=201)


@routes.get("/api/cities/{city:[^/]+}/corrections")
async def list_corrections(request: web.Request) -> web.Response:
    writer = await require_token(request)
    state = request.app[STATE]
    query = request.query
    unknown = sorted(set(query) - {"user", "limit", "before"})
    if unknown:
        fail(web.HTTPBadRequest, "bad_query", f"unknown parameter(s) {', '.join(unknown)}; there are user, limit "
             "and before")
    user = query.get("user")
    if user is not None and not db.valid_user_name(user):
        fail(web.HTTPBadRequest, "bad_query", "user must be a user's name")
    if not writer.is_operator:
        if user not in (None, writer.name):
            fail(web.HTTPForbidden, "not_yours", "a user sees their own corrections only")
        user = writer.name
    limit = _id(query.get("limit", "100"), "bad_query", "limit")
    if limit > 500:
        fail(web.HTTPBadRequest, "bad_query", "limit must be at most 500")
    before = _id(query["before"], "bad_query", "before") if "before" in query else None
    city = await city_or_fail(state, request.match_info["city"])
    rows = await state.pg.list_corrections(city.id, user, before, limit)
    return web.json_response({"corrections": [correction_json(c) for c in rows]})


@routes.delete("/api/cities/{city:[^/]+}/corrections/{id:[0-9]+}")
async def undo_correction(request: web.Request) -> web.Response:
    writer = await require_token(request)
    state = request.app[STATE]
    city = await city_or_fail(state, request.match_info["city"])
    raw = request.match_info["id"]
    correction_id = int(raw) if len(raw) < 20 and 0 < int(raw) <= MAX_ID else None
    try:
        undone = None if correction_id is None else await state.pg.delete_correction(city.id, correction_id,
                                                                                     writer.user)
    except db.NotYours:
        fail(web.HTTPForbidden, "not_yours", "a user may undo only their own corrections")
    if undone is None:
        fail(web.HTTPNotFound, "unknown_correction", f"{city.name} has no correction {raw}")
    log.info("correction undone", extra={"city_id": city.id, "correction_id": correction_id, "user": writer.name,
                                         "image_deleted": undone.image_deleted})
    return web.Response(status=204)
