"""The REST API: the original orchestration service's job (cities, uploads, models), health and metrics."""

from __future__ import annotations

import hashlib
import logging
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.auth import require_operator
from gateway.errors import HTTPTooLarge, fail, read_json
from gateway.imaging import ImageRejected, ValidatedUpload
from gateway.state import STATE, GatewayState
from sightscan import db
from sightscan.model_metrics import figures
from sightscan.names import MAX_NAME_CHARS, BadName

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


def raw_name(value: object, what: str = "name") -> str:
    # As sent, before normalisation: the documented limit, and it keeps normalising on the event loop cheap.
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS:
        fail(web.HTTPBadRequest, f"bad_{what}", f"{what} must be a non-empty string of at most {MAX_NAME_CHARS} "
             "characters")
    return value


async def city_or_fail(state: GatewayState, name: str) -> db.City:
    try:
        city = await state.pg.find_city(raw_name(name))
    except BadName as exc:
        fail(web.HTTPBadRequest, "bad_name", str(exc))
    if city is None:
        fail(web.HTTPNotFound, "unknown_city", f"no city named {name!r}; request it with POST /api/cities")
    return city


# Cities ---------------------------------------------------------------------------------------------------


@routes.get("/api/cities")
async def list_cities(request: web.Request) -> web.Response:
    return web.json_response({"cities": await request.app[STATE].pg.city_status()})


@routes.get("/api/cities/{city:[^/]+}")
async def get_city(request: web.Request) -> web.Response:
    state = request.app[STATE]
    city = await city_or_fail(state, request.match_info["city"])
    rows = await state.pg.city_status(city.id)
    row = rows[0]
    live = state.registry.current(city.id)
    row["serving_version"] = live.version if live else None
    return web.json_response(row)


@routes.post("/api/cities")
async def post_city(request: web.Request) -> web.Response:
    await require_operator(request)  # a city starts a crawl and paid labelling: the operator's call
    body = await read_json(request, '{"name": "Lisbon"}')
    name = raw_name(body.get("name") if isinstance(body, dict) else None)
    try:
        city, created = await request.app[STATE].pg.request_city(name)
    except BadName as exc:
        fail(web.HTTPBadRequest, "bad_name", str(exc))
    log.info("city requested", extra={"city_id": city.id, "city": city.name, "new_city": created})
    return web.json_response({"id": city.id, "name": city.name, "status": city.status, "created": created},
                             status=201 if created else 200)


# Uploads --------------------------------------------------------------------------------------------------


async def _read_upload(request: web.Request, limit: int) -> tuple[bytes, str | None]:
    if not request.content_type.startswith("multipart/"):
        fail(web.HTTPUnsupportedMediaType, "multipart_required",
             "send multipart/form-data with a file field 'image' (and optionally 'sight')")
    data: bytes | None = None
    sight: str | None = None
    try:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "image":
                data = await read_file_part(part, limit, "an image")
            elif part.name == "sight":
                sight = await _read_sight(part)
    except (ValueError, AssertionError, BadHttpMessage):  # aiohttp's multipart parser on a malformed body
        fail(web.HTTPBadRequest, "bad_multipart", "the multipart body is malformed (a part's headers or "
             "boundaries); send multipart/form-data with a file field 'image'")
    if data is None:
        fail(web.HTTPBadRequest, "image_required", "no file field named 'image'")
    return data, sight


async def read_file_part(part: BodyPartReader, limit: int, what: str) -> bytes:
    """A file part, refused with a 413 as soon as it passes `limit` bytes (never held whole beyond it)."""
    chunks, size = [], 0
    while chunk := await part.read_chunk(65536):
        size += len(chunk)
        if size > limit:
            fail(HTTPTooLarge, "too_large", f"{what} may have at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def check_image(state: GatewayState, data: bytes) -> ValidatedUpload:
    """An uploaded image checked to decode completely (off the event loop); 413 or 400 when it is refused.
    Call it holding an upload slot."""
    try:
        return await state.decoder.upload(data)
    except ImageRejected as exc:
        fail(HTTPTooLarge if exc.code == "too_large" else web.HTTPBadRequest, exc.code, str(exc))


async def _read_sight(part: BodyPartReader) -> str | None:
    raw = b""
    while chunk := await part.read_chunk(4096):
        raw += chunk
        if len(raw) > 4 * MAX_NAME_CHARS:  # UTF-8: at most 4 bytes a character
            fail(web.HTTPBadRequest, "bad_sight", f"sight must be a name of at most {MAX_NAME_CHARS} characters")
    try:
        text = raw.decode(part.get_charset("utf-8"))
    except (UnicodeDecodeError, LookupError):
        fail(web.HTTPBadRequest, "bad_sight", "the sight field is not valid UTF-8 text")
    return raw_name(text, "sight") if text.strip() else None


@routes.post("/api/cities/{city:[^/]+}/images")
async def upload_image(request: web.Request) -> web.Response:
    # The operator's only: an upload records no user, so a disowned user's uploads could not be taken back. A user
    # keeps a frame as a photo of the city with a 'keep' correction instead (docs/corrections.md).
    await require_operator(request)
    state = request.app[STATE]
    city = await city_or_fail(state, request.match_info["city"])
    async with state.decoder.upload_slot():  # bounds the upload bodies in memory and the decodes at once
        data, sight = await _read_upload(request, state.settings.max_upload_bytes)
        checked = await check_image(state, data)
    image = db.NewImage(city_id=city.id, data=checked.data, mime_type=checked.mime_type, width=checked.width,
                        height=checked.height, origin="upload")
    try:
        image_id = await state.pg.insert_image(image, sight)
    except BadName as exc:
        fail(web.HTTPBadRequest, "bad_sight", str(exc))
    sha = hashlib.sha256(checked.data).hexdigest()
    if image_id is None:
        return web.json_response({"id": None, "duplicate": True, "sha256": sha}, status=200)
    log.info("image uploaded", extra={"city_id": city.id, "image_id": image_id, "bytes": len(data)})
    return web.json_response({"id": image_id, "duplicate": False, "sha256": sha, "mime_type": checked.mime_type,
                              "width": checked.width, "height": checked.height}, status=201)


# Models ---------------------------------------------------------------------------------------------------


def _model_meta(model: db.StoredModel, city: db.City) -> dict[str, Any]:
    return {"city": city.name, "city_id": city.id, "model_id": model.id, "version": model.version,
            "classes": model.classes, "input_size": model.input_size, "metrics": model.metrics,
            "figures": figures(model.metrics), "bytes": len(model.onnx),
            "sha256": hashlib.sha256(model.onnx).hexdigest(),
            "download": f"/api/cities/{quote(city.name, safe='')}/model.onnx"}


async def _latest(request: web.Request) -> tuple[db.City, db.StoredModel]:
    state = request.app[STATE]
    city = await city_or_fail(state, request.match_info["city"])
    model = await state.pg.latest_model(city.id)
    if model is None:
        fail(web.HTTPNotFound, "no_model", f"{city.name} has no model yet (status: {city.status})")
    return city, model


@routes.get("/api/cities/{city:[^/]+}/model")
async def model_meta(request: web.Request) -> web.Response:
    city, model = await _latest(request)
    return web.json_response(_model_meta(model, city))


# The model's bytes, cached by version: GET /api/cities/{city}/model.onnx in gateway/model_files.py.


# Health and metrics ---------------------------------------------------------------------------------------


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready when PostgreSQL answers and (if following) Kafka has assigned the model-event partitions."""
    state = request.app[STATE]
    checks: dict[str, Any] = {}
    try:
        ping = getattr(state.warehouse, "ping", None)
        if ping is not None:
            await ping()
        checks["warehouse"] = "ok"
    except Exception as exc:
        log.warning("readiness: the warehouse does not answer", extra={"error": str(exc)})
        checks["warehouse"] = "down: PostgreSQL does not answer"
    if state.follower is not None:
        checks["model_events"] = "ok" if state.follower.ready else "waiting for partitions"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
