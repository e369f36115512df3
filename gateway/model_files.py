"""What the page needs to run a city's model itself (issue 22, "Recognition in the browser").

    GET /api/cities/{city}/model.onnx   the city's live model: its bytes, cached by version (ETag "v<version>-<id>",
                                        Cache-Control: no-cache, 304 on If-None-Match), described by its headers
                                        X-Model-Version, X-Model-Id, X-Model-Input-Size, X-Model-Classes (JSON)
    GET /api/local-inference            whether the browser runtime is installed here, where its files are, and
                                        what the page must apply as the server does (score threshold), the frame
                                        budget it falls back to the server over, how often to keep its socket alive
    GET /ort/{version}/{file}           the browser runtime's own files: onnxruntime-web's WebAssembly build,
                                        pinned in gateway/web/package-lock.json, installed by ./dev with npm
                                        into gateway/web/node_modules; immutable (the version is in the path)

Every response carries Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp: the
page is then cross-origin isolated, SharedArrayBuffer exists, and WebAssembly runs on several threads. The page
and its workers load nothing from another origin, so the policy costs them nothing.

The model is the one the gateway serves on /ws/detect (the registry's: a page and the websocket agree on the
version), else the newest stored row when none is loadable here. Its graph is the fp32 one the trainer kept for pages
when the server runs int8 (WebAssembly runs int8 slower; X-Model-Graph: fp32), else the served graph (served). The
bytes of the last few models are kept in memory, so a page that asks again costs a lookup in the registry and a 304.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.errors import fail
from gateway.rest import city_or_fail
from gateway.state import STATE

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

WEB = Path(__file__).resolve().parent / "web"
RUNTIME = WEB / "node_modules" / "onnxruntime-web"
# The files of onnxruntime-web's WebAssembly-only build the page's worker loads: the script (a classic-worker
# bundle), the module it imports for the WebAssembly binary, and the binary (SIMD, threads where isolated).
RUNTIME_FILES = {"ort.wasm.min.js": "text/javascript", "ort-wasm-simd-threaded.mjs": "text/javascript",
                 "ort-wasm-simd-threaded.wasm": "application/wasm"}
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
CACHED_MODELS = 4  # model files kept in memory (one per city that pages run locally, the newest first)


@dataclass(frozen=True)
class Runtime:
    version: str
    dist: Path


def installed_runtime() -> Runtime | None:
    """onnxruntime-web as npm installed it, if every file the page needs is there."""
    try:
        version = json.loads((RUNTIME / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    dist = RUNTIME / "dist"
    if not isinstance(version, str) or not all((dist / name).is_file() for name in RUNTIME_FILES):
        return None
    return Runtime(version, dist)


class ModelFiles:
    """The page's graph of the last few models asked for, by model id (a row's bytes never change), with whether it
    is the browser's own graph (db.browser_graph)."""

    def __init__(self) -> None:
        self._bytes: OrderedDict[int, tuple[bytes, bool]] = OrderedDict()

    def get(self, model_id: int) -> tuple[bytes, bool] | None:
        data = self._bytes.get(model_id)
        if data is not None:
            self._bytes.move_to_end(model_id)
        return data

    def put(self, model_id: int, data: tuple[bytes, bool]) -> None:
        self._bytes[model_id] = data
        self._bytes.move_to_end(model_id)
        while len(self._bytes) > CACHED_MODELS:
            self._bytes.popitem(last=False)


MODEL_FILES: web.AppKey[ModelFiles] = web.AppKey("model_files", ModelFiles)


def etag(version: int, model_id: int) -> str:
    return f'"v{version}-{model_id}"'


def _matches(header: str | None, tag: str) -> bool:
    """If-None-Match names this ETag (or is *); weak or strong, as RFC 9110 compares for GET."""
    if not header:
        return False
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == tag:
            return True
    return False


@routes.get("/api/cities/{city:[^/]+}/model.onnx")
async def model_file(request: web.Request) -> web.Response:
    state = request.app[STATE]
    city = await city_or_fail(state, request.match_info["city"])
    live = await state.registry.get(city.id)
    stored = None
    if live is None:  # no model, or none this gateway can load: the newest row, as stored
        stored = await state.pg.latest_model(city.id)
        if stored is None:
            fail(web.HTTPNotFound, "no_model", f"{city.name} has no model yet (status: {city.status})")
        model_id, version, classes, input_size = stored.id, stored.version, stored.classes, stored.input_size
    else:
        model_id, version, classes, input_size = live.model_id, live.version, live.classes, live.input_size
    tag = etag(version, model_id)
    headers = {"ETag": tag, "Cache-Control": "no-cache", "X-Model-Version": str(version),
               "X-Model-Id": str(model_id), "X-Model-Input-Size": str(input_size),
               "X-Model-Classes": json.dumps(classes)}
    if _matches(request.headers.get("If-None-Match"), tag):
        return web.Response(status=304, headers=headers)
    files = request.app[MODEL_FILES]
    cached = files.get(model_id)
    if cached is None:
        found = await state.pg.browser_graph(model_id)
        if found is None:  # deleted since the registry loaded it; its delete event is on its way
            fail(web.HTTPNotFound, "no_model", f"{city.name}'s model v{version} was just withdrawn; ask again")
        cached = found
    data, own = cached
    files.put(model_id, cached)
    # "fp32": the trainer kept the fp32 graph for pages because the server runs int8, which WebAssembly runs slower;
    # the two answer alike within TRAINER_INT8_* (trainer/quantize.py). "served": the graph /ws/detect runs.
    headers["X-Model-Graph"] = "fp32" if own else "served"
    headers["Content-Disposition"] = f'attachment; filename="sightscan-{city.id}-v{version}.onnx"'
    return web.Response(body=data, content_type="application/octet-stream", headers=headers)


@routes.get("/api/local-inference")
async def local_inference(request: web.Request) -> web.Response:
    settings = request.app[STATE].settings
    runtime = installed_runtime() if settings.local_inference else None
    if not settings.local_inference:
        reason = "in-browser inference is turned off on this gateway (GATEWAY_LOCAL_INFERENCE=false)"
    elif runtime is None:
        reason = ("in-browser inference is not installed on this gateway (onnxruntime-web: ./dev up installs it, or "
                  "npm ci in gateway/web)")
    else:
        reason = None
    # The budget (GATEWAY_LOCAL_FRAME_BUDGET_MS, 100 ms): local inference slower than that per frame (frame taken
    # to answer shown) loses to the server path, which answers the page's 10 frames/s (bench/browser/RESULTS.md).
    body: dict[str, Any] = {
        "available": runtime is not None, "reason": reason,
        "runtime": "onnxruntime-web", "version": runtime.version if runtime else None,
        "script": f"/ort/{runtime.version}/ort.wasm.min.js" if runtime else None,
        "wasm_paths": f"/ort/{runtime.version}/" if runtime else None,
        "score_threshold": settings.score_threshold, "frame_budget_ms": settings.local_frame_budget_ms,
        # The websocket closes after GATEWAY_IDLE_TIMEOUT_S without a message; a page that sends no frames says
        # something twice as often.
        "keepalive_s": round(settings.idle_timeout_s / 2, 3)}
    return web.json_response(body, headers={"Cache-Control": "no-cache"})


@routes.get("/ort/{version}/{name}")
async def runtime_file(request: web.Request) -> web.FileResponse:
    runtime = installed_runtime()
    name = request.match_info["name"]
    if runtime is None or request.match_info["version"] != runtime.version or name not in RUNTIME_FILES:
        fail(web.HTTPNotFound, "not_found", "no such runtime file on this gateway (GET /api/local-inference says "
             "which are)")
    return web.FileResponse(runtime.dist / name, headers={
        "Content-Type": RUNTIME_FILES[name], "Cache-Control": "public, max-age=31536000, immutable"})


async def _isolate(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in ISOLATION.items():
        response.headers.setdefault(name, value)


def setup(app: web.Application) -> None:
    """Register the routes, the model-file cache and the cross-origin isolation headers on `app`."""
    app[MODEL_FILES] = ModelFiles()
    app.add_routes(routes)
    app.on_response_prepare.append(_isolate)
