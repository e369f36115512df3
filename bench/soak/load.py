"""The soak's webcam load: N clients on /ws/detect, each sending a city's clip at a steady frame rate for the whole
run, on one connection each.

Client i streams the clip of live city i mod n (the cities with a model, in the order they went live); when a city
goes live the clients are dealt again, and a client whose city changes switches with {"type": "select", "city"}
on the same connection. Latency is measured by the client, frame sent -> its detections received (answered frames
only; the gateway answers the newest frame and counts the ones it dropped). A client whose connection fails
reconnects a second later (counted).

`Load.take()` returns what happened since the last call: the websocket series of one sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from urllib.parse import quote

import aiohttp

from bench.stats import percentile


@dataclass
class Interval:
    latencies: list[float] = field(default_factory=list)  # seconds, answered frames (the totals keep none)
    sent: int = 0
    answered: int = 0
    dropped: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    swaps: int = 0         # "model" messages: a live swap seen by a client
    reconnects: int = 0


class Load:
    def __init__(self, ws_url: str, clients: int = 8, fps: float = 10.0) -> None:
        self.ws_url, self.clients, self.fps = ws_url, clients, fps
        self.payloads: dict[str, list[bytes]] = {}  # live city -> its clip's JPEG frames
        self.now = Interval()
        self.totals = Interval()
        self._since = time.monotonic()

    def add_city(self, city: str, payloads: list[bytes]) -> None:
        """A city that has a model: the clients are dealt again over every live city."""
        self.payloads[city] = payloads

    def city_of(self, i: int) -> str:
        cities = list(self.payloads)
        return cities[i % len(cities)]

    def take(self) -> tuple[dict[str, float], list[float]]:
        """The websocket series since the last call, and the latencies (ms) behind them."""
        now, self.now = self.now, Interval()
        elapsed = max(1e-9, time.monotonic() - self._since)
        self._since = time.monotonic()
        ms = [s * 1000 for s in now.latencies]
        now.answered = len(ms)
        for key in ("sent", "answered", "dropped", "swaps", "reconnects"):
            setattr(self.totals, key, getattr(self.totals, key) + getattr(now, key))
        self.totals.errors.update(now.errors)
        series = {"ws_answered_fps": len(ms) / elapsed, "ws_dropped_fps": now.dropped / elapsed,
                  "ws_errors": float(sum(now.errors.values()))}
        if ms:
            series["ws_p50_ms"], series["ws_p99_ms"] = percentile(ms, 50), percentile(ms, 99)
        return series, ms

    def summary(self) -> dict[str, object]:
        t = self.totals
        return {"clients": self.clients, "fps_per_client": self.fps, "sent": t.sent, "answered": t.answered,
                "dropped": t.dropped, "errors": dict(t.errors), "swaps_seen": t.swaps, "reconnects": t.reconnects}

    async def run(self) -> None:
        """Every client, until cancelled."""
        await asyncio.gather(*(self._client(i) for i in range(self.clients)))

    async def _client(self, i: int) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    await self._stream(http, i)
                except Exception:  # refused, reset, closed by the gateway: counted, and the client goes on
                    self.now.reconnects += 1
                    await asyncio.sleep(1.0)

    async def _stream(self, http: aiohttp.ClientSession, i: int) -> None:
        city = self.city_of(i)
        async with http.ws_connect(f"{self.ws_url}?city={quote(city)}", max_msg_size=0) as ws:
            sent: deque[tuple[int, float]] = deque()  # (frame, sent at), oldest first
            receiver = asyncio.create_task(self._receive(ws, sent))
            try:
                frame, k, next_at = 0, i * 7, time.monotonic()
                while not receiver.done():
                    if self.city_of(i) != city:
                        city = self.city_of(i)
                        await ws.send_str(json.dumps({"type": "select", "city": city}))
                    payloads = self.payloads[city]
                    frame, k = frame + 1, k + 1
                    sent.append((frame, time.perf_counter()))
                    await ws.send_bytes(payloads[k % len(payloads)])
                    self.now.sent += 1
                    next_at = max(next_at + 1 / self.fps, time.monotonic() - 1 / self.fps)  # late: no burst
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                receiver.result()  # the connection ended: say how
                raise ConnectionError("the gateway closed the websocket")
            finally:
                receiver.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await receiver

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse, sent: deque[tuple[int, float]]) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            body = json.loads(msg.data)
            kind, frame = body.get("type"), body.get("frame")
            if kind == "model":
                self.now.swaps += 1
            if kind not in ("detections", "error") or frame is None:
                continue
            while sent and sent[0][0] < frame:  # frames the gateway dropped for a newer one
                sent.popleft()
            at = sent.popleft()[1] if sent and sent[0][0] == frame else None
            if kind == "error":
                self.now.errors[body.get("code", "?")] += 1
            elif at is not None:
                self.now.latencies.append(time.perf_counter() - at)
                self.now.dropped += int(body.get("dropped", 0))
