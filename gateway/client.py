"""The desktop client: a webcam or a video file streamed to the gateway, detections drawn on the frames.

    python -m gateway.client --city Lisbon                       # webcam 0, drawn in a window
    python -m gateway.client --city Lisbon --video in.mp4 --out annotated.avi
    GATEWAY_WS_TOKEN=... python -m gateway.client --city Lisbon   # a gateway that needs its websocket token

The window's keys correct what it shows (docs/corrections.md; gateway/client_corrections.py): c confirms the top
detection, n says no sight is here, k keeps the frame as a photo, 1-9 says the box is sight N (the city's sights
are listed under the video), b draws a box with the mouse and a digit names its sight, u undoes the last one,
space pauses, q quits. They need the operator's SIGHTSCAN_API_TOKEN or a user's token (--token). A video file
that ends stays on its last frame until q.

The window needs opencv-python (the project's extras install it) and a display: without one the client says so
on stderr and runs as with --no-window. Frames are sent as JPEG at most --fps per second, with at most two
unanswered on the wire: the gateway answers the newest, so a slow link or server shows fresh detections rather
than a growing delay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import cv2
import numpy as np

from gateway.client_corrections import Corrections, Shown

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
    corrections: Counter[str] = field(default_factory=Counter)  # sent by the window's keys, by action; "undone"
    refused: Counter[int] = field(default_factory=Counter)       # corrections refused, by HTTP status (0: no answer)

    def as_json(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {"frames_read": self.frames_read, "frames_sent": self.frames_sent, "answers": self.answers,
                "errors": dict(self.errors), "sights": dict(self.sights),
                "model_versions": sorted(self.model_versions),
                "p50_ms": lat[len(lat) // 2] if lat else None,
                "corrections": dict(self.corrections), "corrections_refused": dict(self.refused)}


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


# The window -----------------------------------------------------------------------------------------------


def gui_backend() -> str:
    """OpenCV's GUI backend as its build information names it ("QT5", "GTK3", "WIN32UI", "NONE"), or ""."""
    for line in cv2.getBuildInformation().splitlines():
        name, _, value = line.strip().partition(":")
        if name == "GUI":
            return value.strip()
    return ""


def _x_display_answers(display: str) -> bool:
    """Whether the X server of DISPLAY takes a connection: ":1", "unix:1", "host:10.0". Qt aborts the process
    when it cannot reach its display, so the client asks first."""
    host, _, rest = display.rpartition(":")
    number = rest.split(".")[0]
    if not number.isdigit():
        return False
    if host.startswith("/"):  # a socket path (XQuartz's launchd displays)
        return os.path.exists(host + ":" + rest)
    if host in ("", "unix"):
        path = f"/tmp/.X11-unix/X{number}"
        for address in (path, "\0" + path):  # the socket file, then Linux's abstract socket of the same name
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                try:
                    sock.connect(address)
                    return True
                except OSError:
                    continue
        if host == "unix":
            return False
        host = "localhost"
    try:
        socket.create_connection((host, 6000 + int(number)), timeout=2).close()
        return True
    except OSError:
        return False


def window_problem(environ: dict[str, str] | None = None) -> str | None:
    """Why this client cannot open a window here, or None when it can try."""
    env = os.environ if environ is None else environ
    backend = gui_backend()
    if backend.upper() == "NONE":
        return ("this OpenCV has no GUI backend (opencv-python-headless?); install opencv-python, as the "
                "project's extras do")
    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        display, wayland = env.get("DISPLAY", ""), env.get("WAYLAND_DISPLAY", "")
        if not display and not wayland:
            return "no display: neither DISPLAY nor WAYLAND_DISPLAY is set"
        if display and not wayland and not _x_display_answers(display):
            return f"the X display {display!r} does not answer"
    return None


@dataclass
class Window:
    """The OpenCV window: the frame with its detections, and under it the sights, the keys and the status."""

    title: str
    corrections: Corrections | None = None
    scale: float = 0.5          # font scale of the lines under the video
    line_h: int = 20
    frame_size: tuple[int, int] = (0, 0)

    def open(self) -> None:
        cv2.namedWindow(self.title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
        cv2.setMouseCallback(self.title, self._on_mouse)

    def _on_mouse(self, event: int, x: int, y: int, flags: int, param: object) -> None:
        if self.corrections is not None and self.frame_size[0]:
            self.corrections.on_mouse(event, x, y, self.frame_size)

    def render(self, shown: Shown, status: str, paused: bool) -> np.ndarray:
        frame = draw(shown.frame.copy(), shown.detections)
        h, w = frame.shape[:2]
        self.frame_size = (w, h)
        if self.corrections is not None:
            self.corrections.draw_box(frame, (w, h))
            lines = self.corrections.panel_lines(w - 12, self.scale)
        else:
            lines = []
        state = "paused" if paused else ""
        if status or state:
            lines.append((" - ".join(t for t in (state, status) if t), (200, 200, 200)))
        panel = np.zeros((8 + self.line_h * len(lines), w, 3), dtype=np.uint8)
        for i, (text, colour) in enumerate(lines):
            cv2.putText(panel, text, (6, self.line_h * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, self.scale, colour, 1,
                        cv2.LINE_AA)
        return np.vstack([frame, panel])

    def show(self, canvas: np.ndarray) -> int:
        """Show the canvas; the key pressed since the last call (-1: none)."""
        cv2.imshow(self.title, canvas)
        return cv2.waitKey(1)

    def closed(self) -> bool:
        """The user closed the window (its close button)."""
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error:
            return True


# Streaming ------------------------------------------------------------------------------------------------

PING_EVERY_S = 2.0  # with no frame sent (paused, or the video ended) the websocket is pinged: the gateway's idle
                    # timeout counts any message, and a held window is not an idle client
UI_TICK_S = 1 / 30  # how often the window takes keys and redraws while no frame is due


async def stream(url: str, city: str, source: str | int, out: str | None = None, show: bool = False,
                 fps: float = 10.0, max_frames: int | None = None, quality: int = 80,
                 verbose: bool = False, ws_token: str = "", token: str = "") -> Summary:
    """Stream `source` (camera index or file) to the gateway until it ends or max_frames were read; with a
    window (show) until q, the frame held when the source ends, the keys sending corrections with `token`."""
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise SystemExit(f"cannot open video source {source!r}")
    summary, latest, answered = Summary(), [], 0
    latest_version: int | None = None
    # The frames on the wire by number (the gateway numbers them 1, 2, ... as sent), so an answer finds the frame
    # and the JPEG it answers: that is what the keys correct (`last_answer`), never a later frame.
    on_wire: dict[int, tuple[np.ndarray, bytes]] = {}
    last_answer: Shown | None = None
    writer: cv2.VideoWriter | None = None
    loop = asyncio.get_running_loop()
    # The token as a subprotocol, as the web page sends it: it stays out of URLs and access logs.
    protocols = ("sightscan", f"sightscan.token.{ws_token}") if ws_token else ()
    async with aiohttp.ClientSession() as http, http.ws_connect(_ws_url(url, city), max_msg_size=0,
                                                                protocols=protocols) as ws:
        corrections = Corrections(http, url, city, token) if show else None
        window = Window(f"SightScan - {city}", corrections) if show else None

        def model_classes(model: dict[str, Any] | None) -> None:
            if corrections is not None and model and model.get("classes"):
                corrections.sights = list(model["classes"])

        async def receive() -> None:
            nonlocal latest, answered, latest_version, last_answer
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                body = json.loads(msg.data)
                answered = max(answered, body.get("frame") or 0)
                if verbose:
                    print(msg.data, flush=True)
                if body["type"] == "detections":
                    latest, latest_version = body["detections"], body["model_version"]
                    sent = on_wire.pop(body["frame"], None)
                    for number in [n for n in on_wire if n < body["frame"]]:  # dropped by the gateway
                        del on_wire[number]
                    if sent is not None:
                        last_answer = Shown(sent[0], list(latest), latest_version, jpeg=sent[1])
                    summary.answers += 1
                    summary.model_versions.add(body["model_version"])
                    summary.latencies_ms.append(body["latency_ms"])
                    summary.sights.update(d["sight"] for d in latest)
                elif body["type"] == "hello":
                    model_classes(body.get("model"))
                elif body["type"] == "model":
                    model_classes(body)
                elif body["type"] == "error":
                    summary.errors[body["code"]] += 1
                    if summary.errors[body["code"]] == 1:  # said once per kind: a user sees why frames go unanswered
                        print(f"gateway: {body['code']}: {body.get('message', '')}", file=sys.stderr, flush=True)

        receiver = asyncio.create_task(receive())
        interval = 1.0 / fps
        next_at = last_sent = time.monotonic()
        reading, paused, gone, status = True, False, False, ""
        frame: np.ndarray | None = None
        shown: Shown | None = None  # the answered frame the window holds
        try:
            if window is not None:
                try:
                    window.open()
                except cv2.error as exc:
                    print(f"no window: OpenCV could not open one ({exc}). Running as with --no-window.",
                          file=sys.stderr, flush=True)
                    window = None
            while True:
                if reading and not paused and time.monotonic() >= next_at:
                    ok, got = await loop.run_in_executor(None, capture.read)
                    if ok:
                        frame = got
                        summary.frames_read += 1
                        if not ws.closed and summary.frames_sent - answered < MAX_UNANSWERED:
                            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
                            await ws.send_bytes(jpeg.tobytes())
                            summary.frames_sent += 1
                            last_sent = time.monotonic()
                            if window is not None:
                                on_wire[summary.frames_sent] = (frame, jpeg.tobytes())
                                for number in [n for n in on_wire if n <= summary.frames_sent - 8]:  # unanswered
                                    del on_wire[number]
                        if out is not None:
                            if writer is None:
                                h, w = frame.shape[:2]
                                writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
                            writer.write(draw(frame.copy(), latest))
                        next_at = max(next_at + interval, time.monotonic() - interval)
                    if not ok or (max_frames is not None and summary.frames_read >= max_frames):
                        reading = False
                        if window is not None:
                            status = "end of the video: the keys still work, q quits"
                            print(status, file=sys.stderr, flush=True)
                if window is None or corrections is None:
                    if not reading:
                        break
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                    continue
                # Paused, drawing a box, or at the end of the video, the window holds the last answered frame
                # with its answer: what the keys correct. Live, it shows each frame with the newest answer.
                held = paused or corrections.drawing or not reading
                if held:
                    if shown is None or (not paused and not corrections.drawing and last_answer is not None):
                        shown = last_answer
                    view = shown
                else:
                    shown = None
                    view = None if frame is None else Shown(frame, latest, latest_version)
                if receiver.done() and not gone:
                    gone = True
                    status = "the gateway closed the connection: no more detections"
                    print(status, file=sys.stderr, flush=True)
                try:
                    if view is not None:
                        key = window.show(window.render(view, status, paused or corrections.drawing))
                        if window.closed():
                            break
                    else:
                        key = cv2.waitKey(1)
                except cv2.error as exc:  # a GUI that failed after all: carry on as --no-window
                    print(f"no window: OpenCV could not show one ({exc}). Running as with --no-window.",
                          file=sys.stderr, flush=True)
                    window = None
                    continue
                if key != -1 and not corrections.on_key(key & 0xFF, shown or last_answer):
                    if key & 0xFF in (ord("q"), 27):
                        break
                    if key & 0xFF in (ord(" "), ord("p")):
                        paused = not paused
                if (paused or not reading) and time.monotonic() - last_sent > PING_EVERY_S and not ws.closed:
                    last_sent = time.monotonic()
                    with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                        await ws.ping()
                wait = next_at - time.monotonic() if reading and not paused else UI_TICK_S
                await asyncio.sleep(max(0.0, min(wait, UI_TICK_S)))
            # Give the last frames their answers before closing.
            deadline = time.monotonic() + 2
            while answered < summary.frames_sent and time.monotonic() < deadline and not receiver.done():
                await asyncio.sleep(0.05)
        finally:
            receiver.cancel()
            if corrections is not None:
                await corrections.close()
                summary.corrections.update(corrections.counts)
                summary.refused.update(corrections.failures)
    capture.release()
    if writer is not None:
        writer.release()
    if show:
        with contextlib.suppress(cv2.error):
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
    p.add_argument("--no-window", action="store_true",
                   help="do not open a window (without a display the client runs this way by itself)")
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--max-frames", type=int)
    p.add_argument("--verbose", action="store_true", help="print every message from the gateway")
    p.add_argument("--ws-token", default=os.environ.get("GATEWAY_WS_TOKEN", ""),
                   help="the gateway's GATEWAY_WS_TOKEN, if it has one (default: that variable)")
    p.add_argument("--token", default=os.environ.get("SIGHTSCAN_API_TOKEN", ""),
                   help="the write token the correction keys send: the operator's, or a user's own "
                        "(default: SIGHTSCAN_API_TOKEN)")
    a = p.parse_args(argv)
    source: str | int = a.video if a.video else a.camera
    show = not a.no_window
    if show and (problem := window_problem()) is not None:
        print(f"no window: {problem}. Running as with --no-window (the summary is printed at the end"
              f"{'; the annotated video goes to ' + a.out if a.out else '; --out writes the annotated video'}).",
              file=sys.stderr, flush=True)
        show = False
    try:
        summary = asyncio.run(stream(a.url, a.city, source, a.out, show=show, fps=a.fps,
                                     max_frames=a.max_frames, verbose=a.verbose, ws_token=a.ws_token,
                                     token=a.token))
    except aiohttp.WSServerHandshakeError as exc:
        hint = {401: "it needs its websocket token: --ws-token or GATEWAY_WS_TOKEN",
                403: "it refused this client's Origin"}.get(exc.status, exc.message)
        p.exit(1, f"the gateway refused the websocket ({exc.status}): {hint}\n")
    print(json.dumps(summary.as_json()), flush=True)
    return 0 if summary.answers else 1


if __name__ == "__main__":
    sys.exit(main())
