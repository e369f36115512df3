"""The desktop client: a webcam or a video file streamed to the gateway, detections drawn on the frames.

    python -m gateway.client --city Lisbon                       # webcam 0, drawn in a window
    python -m gateway.client --city Lisbon --video in.mp4 --out annotated.avi
    GATEWAY_WS_TOKEN=... python -m gateway.client --city Lisbon   # a gateway that needs its websocket token

Needs opencv-python (for the window; opencv-python-headless is enough with --out). Frames are sent as JPEG at
most --fps per second, with at most two unanswered on the wire: the gateway answers the newest, so a slow
link or server shows fresh detections rather than a growing delay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import cv2
import numpy as np

MAX_UNANSWERED = 2


@dataclass
class Summary:
    frames_read: int = 0
    frames_sent: int = 0
    answers: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    sights: Counter[str] = field(default_factory=Counter)
    model_versions: set[int] = field(default_factory=set)
    latencies_ms: list[float] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {"frames_read": self.frames_read, "frames_sent": self.frames_sent, "answers": self.answers,
                "errors": dict(self.errors), "sights": dict(self.sights),
                "model_versions": sorted(self.model_versions),
                "p50_ms": lat[len(lat) // 2] if lat else None}


def draw(frame: np.ndarray, detections: list[dict[str, Any]]) -> np.ndarray:
    """Boxes and sight names over a BGR frame (in place; returned for convenience)."""
    h, w = frame.shape[:2]
    for d in detections:
        x0, y0, x1, y1 = d["box"]
        p0, p1 = (int(x0 * w), int(y0 * h)), (int(x1 * w), int(y1 * h))
        cv2.rectangle(frame, p0, p1, (0, 204, 255), 2)
        label = f"{d['sight']} {d['score'] * 100:.0f}%"
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
        top = max(th + 6, p0[1])
        cv2.rectangle(frame, (p0[0], top - th - 6), (p0[0] + tw + 6, top), (0, 0, 0), -1)
        cv2.putText(frame, label, (p0[0] + 3, top - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return frame


def _ws_url(url: str, city: str) -> str:
    base = url.rstrip("/").replace("https://", "wss://").replace("http://", "ws://")
    return f"{base}/ws/detect?city={quote(city, safe='')}"


async def stream(url: str, city: str, source: str | int, out: str | None = None, show: bool = False,
                 fps: float = 10.0, max_frames: int | None = None, quality: int = 80,
                 verbose: bool = False, ws_token: str = "") -> Summary:
    """Stream `source` (camera index or file) to the gateway until it ends or max_frames were read."""
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise SystemExit(f"cannot open video source {source!r}")
    summary, latest, answered = Summary(), [], 0
    writer: cv2.VideoWriter | None = None
    loop = asyncio.get_running_loop()
    # The token as a subprotocol, as the web page sends it: it stays out of URLs and access logs.
    protocols = ("sightscan", f"sightscan.token.{ws_token}") if ws_token else ()
    async with aiohttp.ClientSession() as http, http.ws_connect(_ws_url(url, city), max_msg_size=0,
                                                                protocols=protocols) as ws:

        async def receive() -> None:
            nonlocal latest, answered
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                body = json.loads(msg.data)
                answered = max(answered, body.get("frame") or 0)
                if verbose:
                    print(msg.data, flush=True)
                if body["type"] == "detections":
                    latest = body["detections"]
                    summary.answers += 1
                    summary.model_versions.add(body["model_version"])
                    summary.latencies_ms.append(body["latency_ms"])
                    summary.sights.update(d["sight"] for d in latest)
                elif body["type"] == "error":
                    summary.errors[body["code"]] += 1

        receiver = asyncio.create_task(receive())
        interval = 1.0 / fps
        next_at = time.monotonic()
        while max_frames is None or summary.frames_read < max_frames:
            ok, frame = await loop.run_in_executor(None, capture.read)
            if not ok:
                break
            summary.frames_read += 1
            if summary.frames_sent - answered < MAX_UNANSWERED:
                ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
                await ws.send_bytes(jpeg.tobytes())
                summary.frames_sent += 1
            draw(frame, latest)
            if out is not None:
                if writer is None:
                    h, w = frame.shape[:2]
                    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
                writer.write(frame)
            if show:
                cv2.imshow(f"SightScan - {city}", frame)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        # Give the last frames their answers before closing.
        deadline = time.monotonic() + 2
        while answered < summary.frames_sent and time.monotonic() < deadline and not receiver.done():
            await asyncio.sleep(0.05)
        receiver.cancel()
    capture.release()
    if writer is not None:
        writer.release()
    if show:
        cv2.destroyAllWindows()
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.client", description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway (default %(default)s)")
    p.add_argument("--city", required=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--camera", type=int, default=0, help="webcam index (default 0)")
    src.add_argument("--video", help="a video file instead of the webcam")
    p.add_argument("--out", help="write the annotated video here (MJPG .avi)")
    p.add_argument("--no-window", action="store_true", help="do not open a window")
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--max-frames", type=int)
    p.add_argument("--verbose", action="store_true", help="print every message from the gateway")
    p.add_argument("--ws-token", default=os.environ.get("GATEWAY_WS_TOKEN", ""),
                   help="the gateway's GATEWAY_WS_TOKEN, if it has one (default: that variable)")
    a = p.parse_args(argv)
    source: str | int = a.video if a.video else a.camera
    try:
        summary = asyncio.run(stream(a.url, a.city, source, a.out, show=not a.no_window, fps=a.fps,
                                     max_frames=a.max_frames, verbose=a.verbose, ws_token=a.ws_token))
    except aiohttp.WSServerHandshakeError as exc:
        hint = {401: "it needs its websocket token: --ws-token or GATEWAY_WS_TOKEN",
                403: "it refused this client's Origin"}.get(exc.status, exc.message)
        p.exit(1, f"the gateway refused the websocket ({exc.status}): {hint}\n")
    print(json.dumps(summary.as_json()), flush=True)
    return 0 if summary.answers else 1


if __name__ == "__main__":
    sys.exit(main())
