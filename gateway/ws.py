"""The webcam websocket, /ws/detect?city=NAME.

Protocol (documented for clients in the OpenAPI description and the README):
  client -> server  binary: one JPEG, WebP or PNG frame; frames are numbered 1, 2, ... in the order sent
                    text:   {"type": "select", "city": NAME} switches city; any other text is an error
  server -> client  {"type": "hello", "city", "city_id", "status", "model": {...} | null, "max_frame_bytes"}
                    {"type": "detections", "frame", "model_version", "detections": [{"sight", "score", "box"}],
                     "latency_ms", "dropped", "width", "height"}
                    {"type": "model", "model_version", "classes", ...}  after a live swap
                    {"type": "error", "code", "message", "frame"?}     the connection stays open
A city selected while PostgreSQL does not answer gets the error "unavailable"; each frame then tries the city again
(an "unavailable" error with the frame's number until PostgreSQL is back, then "hello"), so no client has to
reconnect after an outage.
Handshake: browsers must come from this gateway's own origin (GATEWAY_PUBLIC_URL, GATEWAY_ALLOWED_ORIGINS); if
GATEWAY_WS_TOKEN is set, the client sends it as ?token=TOKEN or offers the subprotocols "sightscan" and
"sightscan.token.TOKEN" (a browser page cannot set headers; the subprotocol keeps the token out of URLs and logs).
Latest frame wins: each connection holds at most one frame waiting and one in work; a frame arriving while one
waits replaces it (counted in "dropped"), so a slow server answers fresh frames instead of building a backlog.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import time
from typing import Any

import psycopg2
from aiohttp import WSCloseCode, WSMsgType, web

from gateway.errors import fail
from gateway.imaging import ImageRejected
from gateway.registry import LoadedModel
from gateway.review import SAMPLER, ReviewSampler
from gateway.settings import GatewaySettings, normal_origin
from gateway.state import STATE, GatewayState
from sightscan import db
from sightscan.names import BadName

log = logging.getLogger(__name__)


TOKEN_SUBPROTOCOL = "sightscan.token."  # + the token: how a browser page sends GATEWAY_WS_TOKEN
SUBPROTOCOL = "sightscan"                # the protocol the server selects when a client offers it
MAX_TEXT_CHARS = 4096                    # a select message is tiny; longer text is refused before parsing


def own_origins(request: web.Request) -> set[str]:
    """The origins of this gateway as the socket the client reached says, never as the client's Host header says
    (a DNS-rebinding page controls Host). An IP literal of the local address always; the loopback names too when
    the client came in over loopback. Anything else (a domain, a TLS proxy) is GATEWAY_PUBLIC_URL."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        return set()
    try:
        address = ipaddress.ip_address(str(sockname[0]).split("%")[0])
    except ValueError:
        return set()
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    port = "" if sockname[1] == 80 else f":{sockname[1]}"
    literal = f"[{address}]" if address.version == 6 else str(address)
    origins = {f"http://{literal}{port}"}
    if address.is_loopback:
        origins |= {f"http://localhost{port}", f"http://127.0.0.1{port}", f"http://[::1]{port}"}
    return origins


def origin_allowed(request: web.Request, settings: GatewaySettings) -> bool:
    """Browsers always send Origin: it must be this gateway's own or a configured one. Non-browser clients
    (the OpenCV client, curl) send none and are let through: Origin guards against other sites' pages."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    allowed = settings.allowed_origins
    if "*" in allowed:
        return True
    try:
        origin = normal_origin(origin)
    except ValueError:  # "null" (a sandboxed page or a file), or garbage
        return False
    return origin == settings.public_url or origin in allowed or origin in own_origins(request)


def ws_token_ok(request: web.Request, expected: str) -> bool:
    """GATEWAY_WS_TOKEN, from ?token= or from an offered subprotocol sightscan.token.<token>."""
    offered = [request.query.get("token", "")]
    for protocol in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        protocol = protocol.strip()
        if protocol.startswith(TOKEN_SUBPROTOCOL):
            offered.append(protocol[len(TOKEN_SUBPROTOCOL):])
    return any(hmac.compare_digest(t.encode(), expected.encode()) for t in offered if t)


class DetectSession:
    def __init__(self, ws: web.WebSocketResponse, state: GatewayState) -> None:
        self.ws = ws
        self.state = state
        self.city: db.City | None = None
        self.unreachable: str | None = None  # the city selected while the warehouse did not answer
        self.frames = 0
        self.dropped = 0
        self.pending: tuple[int, bytes, float] | None = None
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self.review: ReviewSampler | None = None  # keeps unsure frames for review (gateway/review.py)

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
        if self.city is None and self.unreachable is not None and len(data) <= limit:
            await self.select(self.unreachable, self.frames)  # the warehouse did not answer: try the city again
            if self.city is None:
                return  # select said why, with this frame's number
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
        if len(text) > MAX_TEXT_CHARS:
            await self.error("text_too_large", f"a text message may have at most {MAX_TEXT_CHARS} characters; "
                             'the only one is {"type": "select", "city": NAME}')
            return
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: deeply nested JSON
            message = None
        if isinstance(message, dict) and message.get("type") == "select" and isinstance(message.get("city"), str):
            await self.select(message["city"])
            return
        await self.error("text_not_supported", "frames are binary messages (JPEG, WebP or PNG); the only text "
                         'message is {"type": "select", "city": NAME}')

    async def select(self, name: str | None, frame: int | None = None) -> None:
        registry = self.state.registry
        if self.city is not None:
            registry.unsubscribe(self.city.id, self._on_model)
        self.city, self.pending, self.unreachable = None, None, None
        if not name or not name.strip():
            await self.error("unknown_city", "no city given: connect to /ws/detect?city=NAME", frame)
            return
        try:
            city = await self.state.warehouse.find_city(name)
        except BadName as exc:
            await self.error("bad_name", str(exc), frame)
            return
        except Exception as exc:
            if isinstance(exc, psycopg2.OperationalError):
                log.warning("city lookup failed: the warehouse does not answer", extra={"error": str(exc)[:200]})
            else:
                log.exception("city lookup failed")
            self.unreachable = name
            await self.error("unavailable", "the warehouse cannot be reached; try again", frame)
            return
        if city is None:
            await self.error("unknown_city", f"no city named {name!r}; request it with POST /api/cities", frame)
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
            except psycopg2.OperationalError:  # PostgreSQL away while this frame needed it (a model to load)
                await self.error("unavailable", "the warehouse cannot be reached; try again", item[0])
            except Exception:  # a bug must cost one frame, not the connection
                log.exception("frame failed", extra={"city_id": self.city.id if self.city else None})
                await self.error("internal", "this frame could not be processed", item[0])

    async def _answer(self, city: db.City, frame: int, data: bytes, received: float) -> None:
        state = self.state
        model = await state.registry.get(city.id)
        if model is None:
            await self.error("no_model", f"{city.name} has no model yet (status: {city.status})", frame)
            return
        started = time.perf_counter()
        try:
            decoded = await state.decoder.frame(data, model.input_size)
        except ImageRejected as exc:
            await self.error(exc.code, str(exc), frame)
            return
        decoded_at = time.perf_counter()
        state.metrics.decode_seconds.observe(decoded_at - started)
        try:
            found = await model.batcher.detect(decoded.tensor)
        except RuntimeError:
            # Swapped out between lookup and submit: run on the model that replaced it.
            model = await state.registry.get(city.id)
            if model is None or model.input_size != decoded.tensor.shape[-1]:
                await self.error("model_changed", "the model changed under this frame; send the next one", frame)
                return
            found = await model.batcher.detect(decoded.tensor)
        state.metrics.detect_seconds.observe(time.perf_counter() - decoded_at)
        latency = time.perf_counter() - received
        state.metrics.frames_processed.inc()
        state.metrics.frame_latency.observe(latency)
        dropped, self.dropped = self.dropped, 0
        shown = [d.as_json() for d in found]
        await self.send({"type": "detections", "frame": frame, "city_id": city.id, "model_version": model.version,
                         "detections": shown, "latency_ms": round(latency * 1000, 2),
                         "dropped": dropped, "width": decoded.width, "height": decoded.height})
        if self.review is not None:  # decides at once, stores off the loop, drops when busy: never waits
            self.review.offer(city.id, model, data, decoded.width, decoded.height, found, shown)


async def detect_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if not origin_allowed(request, state.settings):
        fail(web.HTTPForbidden, "origin_not_allowed", "this page's origin may not use the websocket; set "
             "GATEWAY_PUBLIC_URL to the URL the page is served from, or add it to GATEWAY_ALLOWED_ORIGINS")
    if state.settings.ws_token and not ws_token_ok(request, state.settings.ws_token):
        fail(web.HTTPUnauthorized, "ws_token_required", "this gateway needs its websocket token: "
             f"/ws/detect?city=NAME&token=TOKEN, or the subprotocol {TOKEN_SUBPROTOCOL}TOKEN")
    limit = state.settings.max_frame_bytes
    # Frames over max_frame_bytes get an error and the connection stays open; aiohttp still needs a hard cap
    # so one message cannot take unbounded memory: beyond it the connection is closed (1009).
    ws = web.WebSocketResponse(max_msg_size=max(4 * limit, limit + 1_048_576), compress=False,
                               protocols=(SUBPROTOCOL,))
    if not ws.can_prepare(request).ok:
        fail(web.HTTPBadRequest, "websocket_required", "this is a websocket: connect with a websocket client to "
             "/ws/detect?city=NAME")
    await ws.prepare(request)
    session = DetectSession(ws, state)
    session.review = request.app.get(SAMPLER)
    await session.run(request.query.get("city"))
    return ws
