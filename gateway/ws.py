"""The webcam websocket, /ws/detect?city=NAME.

Protocol (documented for clients in the OpenAPI description and the README):
  client -> server  binary: one JPEG, WebP or PNG frame; frames are numbered 1, 2, ... in the order sent
                    text:   {"type": "select", "city": NAME} switches city; any other text is an error
  server -> client  {"type": "hello", "city", "city_id", "status", "model": {...} | null, "max_frame_bytes"}
                    {"type": "detections", "frame", "model_version", "detections": [{"sight", "score", "box"}],
                     "latency_ms", "dropped", "width", "height"}
                    {"type": "model", "model_version", "classes", ...}  after a live swap
                    {"type": "error", "code", "message", "frame"?}     the connection stays open
Latest frame wins: each connection holds at most one frame waiting and one in work; a frame arriving while one
waits replaces it (counted in "dropped"), so a slow server answers fresh frames instead of building a backlog.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from gateway.imaging import ImageRejected, decode_frame
from gateway.registry import LoadedModel
from gateway.state import STATE, GatewayState
from sightscan import db

log = logging.getLogger(__name__)


def origin_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """Browsers always send Origin: it must be this gateway's own or a configured one. Non-browser clients
    (the OpenCV client, curl) send none and are let through: Origin guards against other sites' pages."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    origin = origin.rstrip("/")
    own = f"{request.scheme}://{request.host}"
    return origin == own or origin in allowed or "*" in allowed


class DetectSession:
    def __init__(self, ws: web.WebSocketResponse, state: GatewayState) -> None:
        self.ws = ws
        self.state = state
        self.city: db.City | None = None
        self.frames = 0
        self.dropped = 0
        self.pending: tuple[int, bytes, float] | None = None
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        async with self._send_lock:
            try:
                await self.ws.send_str(json.dumps(message))
            except ConnectionError:
                pass  # the client left; the reader loop ends on its own

    async def error(self, code: str, message: str, frame: int | None = None) -> None:
        self.state.metrics.frame_errors.labels(code).inc()
        body: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if frame is not None:
            body["frame"] = frame
        await self.send(body)

    # Reading ---------------------------------------------------------------------------------------------

    async def run(self, city_name: str | None) -> None:
        metrics = self.state.metrics
        metrics.ws_connections.inc()
        worker = asyncio.create_task(self._work(), name="ws-frames")
        try:
            await self.select(city_name)
            while True:
                try:
                    msg = await self.ws.receive(timeout=self.state.settings.idle_timeout_s)
                except TimeoutError:
                    await self.send({"type": "bye", "reason": "idle"})
                    await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"idle")
                    break
                if msg.type == WSMsgType.BINARY:
                    await self._on_frame(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    await self._on_text(msg.data)
                else:  # close, closing, closed, or a protocol error (e.g. beyond the hard size cap)
                    break
        finally:
            worker.cancel()
            if self.city is not None:
                self.state.registry.unsubscribe(self.city.id, self._on_model)
            metrics.ws_connections.dec()

    async def _on_frame(self, data: bytes) -> None:
        self.frames += 1
        self.state.metrics.frames_received.inc()
        limit = self.state.settings.max_frame_bytes
        if len(data) > limit:
            await self.error("too_large", f"a frame may have at most {limit} bytes, this one has {len(data)}",
                             self.frames)
        elif self.city is None:
            await self.error("unknown_city", "no city selected: connect to /ws/detect?city=NAME or send "
                             '{"type": "select", "city": NAME}', self.frames)
        else:
            if self.pending is not None:
                self.dropped += 1
                self.state.metrics.frames_dropped.inc()
            self.pending = (self.frames, data, time.perf_counter())
            self._wake.set()

    async def _on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if isinstance(message, dict) and message.get("type") == "select" and isinstance(message.get("city"), str):
            await self.select(message["city"])
            return
        await self.error("text_not_supported", "frames are binary messages (JPEG, WebP or PNG); the only text "
                         'message is {"type": "select", "city": NAME}')

    async def select(self, name: str | None) -> None:
        registry = self.state.registry
        if self.city is not None:
            registry.unsubscribe(self.city.id, self._on_model)
        self.city, self.pending = None, None
        if not name or not name.strip():
            await self.error("unknown_city", "no city given: connect to /ws/detect?city=NAME")
            return
        try:
            city = await self.state.warehouse.find_city(name)
        except Exception:
            log.exception("city lookup failed")
            await self.error("unavailable", "the warehouse cannot be reached; try again")
            return
        if city is None:
            await self.error("unknown_city", f"no city named {name!r}; request it with POST /api/cities")
            return
        self.city = city
        registry.subscribe(city.id, self._on_model)
        model = await registry.get(city.id)
        await self.send({"type": "hello", "city": city.name, "city_id": city.id, "status": city.status,
                         "model": model.describe() if model else None,
                         "max_frame_bytes": self.state.settings.max_frame_bytes})

    async def _on_model(self, model: LoadedModel | None) -> None:
        await self.send({"type": "model", "city_id": self.city.id if self.city else None,
                         **(model.describe() if model else {"model_version": None})})

    # Working ---------------------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            item, self.pending = self.pending, None
            if item is None or self.city is None:
                continue
            try:
                await self._answer(self.city, *item)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must cost one frame, not the connection
                log.exception("frame failed", extra={"city_id": self.city.id if self.city else None})
                await self.error("internal", "this frame could not be processed", item[0])

    async def _answer(self, city: db.City, frame: int, data: bytes, received: float) -> None:
        state = self.state
        model = await state.registry.get(city.id)
        if model is None:
            await self.error("no_model", f"{city.name} has no model yet (status: {city.status})", frame)
            return
        loop = asyncio.get_running_loop()
        try:
            decoded = await loop.run_in_executor(state.decode_pool, decode_frame, data, model.input_size,
                                                 state.settings.max_pixels)
        except ImageRejected as exc:
            await self.error(exc.code, str(exc), frame)
            return
        try:
            found = await model.batcher.detect(decoded.tensor)
        except RuntimeError:
            # Swapped out between lookup and submit: run on the model that replaced it.
            model = await state.registry.get(city.id)
            if model is None or model.input_size != decoded.tensor.shape[-1]:
                await self.error("model_changed", "the model changed under this frame; send the next one", frame)
                return
            found = await model.batcher.detect(decoded.tensor)
        latency = time.perf_counter() - received
        state.metrics.frames_processed.inc()
        state.metrics.frame_latency.observe(latency)
        dropped, self.dropped = self.dropped, 0
        await self.send({"type": "detections", "frame": frame, "city_id": city.id, "model_version": model.version,
                         "detections": [d.as_json() for d in found], "latency_ms": round(latency * 1000, 2),
                         "dropped": dropped, "width": decoded.width, "height": decoded.height})


async def detect_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if not origin_allowed(request, state.settings.allowed_origins):
        raise web.HTTPForbidden(text=f"origin {request.headers.get('Origin')!r} is not allowed; "
                                "set GATEWAY_ALLOWED_ORIGINS to allow it")
    limit = state.settings.max_frame_bytes
    # Frames over max_frame_bytes get an error and the connection stays open; aiohttp still needs a hard cap
    # so one message cannot take unbounded memory: beyond it the connection is closed (1009).
    ws = web.WebSocketResponse(max_msg_size=max(4 * limit, limit + 1_048_576), compress=False)
    await ws.prepare(request)
    await DetectSession(ws, state).run(request.query.get("city"))
    return ws
