"""The OpenCV client's corrections: its keys, what they send, and the lines the window shows under the video.

Each key acts on the last answered frame (`Shown`: the JPEG the model saw, its answer's detections as the window
draws them, the model version) and sends one correction to `POST /api/cities/{city}/corrections`
(docs/corrections.md): that JPEG, or the `image_id` an earlier correction of the same frame stored, and the
correction as JSON. `u` deletes the last one sent (`DELETE .../corrections/{id}`). Requests go out one at a
time, in key order, on a task of their own, so the window never waits for the network; what was sent, and every
refusal (a 429 with its Retry-After), goes to the status line and to stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import cv2
import numpy as np

HELP = "space pause  c confirm  n no sight  k keep  1-9 it is sight N  b draw box  u undo  q quit"
MAX_SHOWN = 50          # the API keeps at most 50 shown detections
FRAME_QUALITY = 90      # JPEG quality of a frame sent with a correction
BOX_COLOUR = (80, 220, 80)  # BGR: a box being drawn


@dataclass
class Shown:
    """A frame and the answer drawn over it: its pixels (BGR, without overlays), the detections, the model version
    that answered, the JPEG the model was sent (what a correction uploads; None: encode the pixels), and the
    image_id where the first correction of this frame stored it (later ones name it instead of uploading)."""

    frame: np.ndarray
    detections: list[dict[str, Any]]
    model_version: int | None
    jpeg: bytes | None = None
    image_id: int | None = None


def top_detection(detections: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(detections, key=lambda d: d["score"], default=None)


def clamp_box(box: list[float] | tuple[float, ...]) -> list[float] | None:
    """A normalised [x_min, y_min, x_max, y_max] inside 0..1, or None if nothing is left of it."""
    x0, y0, x1, y1 = (min(1.0, max(0.0, float(v))) for v in box)
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    if x1 - x0 < 1e-3 or y1 - y0 < 1e-3:
        return None
    return [round(x0, 4), round(y0, 4), round(x1, 4), round(y1, 4)]


def _unit(value: float) -> float:
    return round(min(1.0, max(0.0, float(value))), 4)


def correction_body(action: str, shown: Shown, sight: str | None = None,
                    box: list[float] | None = None) -> dict[str, Any]:
    """The `correction` JSON of docs/corrections.md."""
    body: dict[str, Any] = {"action": action}
    if sight is not None:
        body["sight"] = sight
    if box is not None:
        body["box"] = box
    if shown.model_version is not None:
        body["model_version"] = shown.model_version
    body["shown"] = [{"sight": d["sight"], "score": _unit(d["score"]), "box": [_unit(v) for v in d["box"]]}
                     for d in shown.detections[:MAX_SHOWN]]
    return body


def describe(body: dict[str, Any]) -> str:
    return body["action"] + (f" {body['sight']!r}" if "sight" in body else "")


def wrap(text: str, width: int, scale: float) -> list[str]:
    """Words of `text` in lines no wider than `width` pixels at this font scale."""
    lines: list[str] = []
    for word in text.split("  "):  # two spaces separate items; an item is never split
        line = f"{lines[-1]}  {word}" if lines else word
        if lines and cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= width:
            lines[-1] = line
        else:
            lines.append(word)
    return lines


async def _answer(res: aiohttp.ClientResponse) -> dict[str, Any]:
    """The JSON object of an answer, or {} (an error page from a proxy, say)."""
    try:
        body = await res.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        return {}
    return body if isinstance(body, dict) else {}


class Corrections:
    """The keys' state (sights, a box being drawn, what was sent) and the one task that talks to the API."""

    def __init__(self, http: aiohttp.ClientSession, url: str, city: str, token: str,
                 say: Callable[[str], None] | None = None) -> None:
        self.http = http
        self.base = f"{url.rstrip('/')}/api/cities/{quote(city, safe='')}/corrections"
        self.token = token
        self.sights: list[str] = []
        self.status = "" if token else "no token: corrections need --token or SIGHTSCAN_API_TOKEN"
        self.error = not token
        self.sent: list[tuple[dict[str, Any], Shown]] = []  # the API's answers and their frames: what u undoes
        self.counts: Counter[str] = Counter()   # corrections sent (201), by action, and "undone"
        self.failures: Counter[int] = Counter()  # refusals by HTTP status (0: no answer)
        self.drawing = False                    # b: a box is being drawn with the mouse (the frame is held)
        self.box: list[float] | None = None     # the drawn box, normalised
        self._drag: tuple[float, float] | None = None
        self._drag_to: tuple[float, float] | None = None
        self._say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self._jobs: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._worker = asyncio.create_task(self._work(), name="corrections")

    # What the window shows -------------------------------------------------------------------------------

    def set_status(self, text: str, error: bool = False) -> None:
        self.status, self.error = text, error
        self._say(f"correction: {text}")

    def panel_lines(self, width: int, scale: float) -> list[tuple[str, tuple[int, int, int]]]:
        """The lines under the video: the city's sights by number, the keys, the status (red when refused)."""
        grey, white, red, green = (200, 200, 200), (255, 255, 255), (80, 80, 255), (150, 235, 150)
        sights = "  ".join(f"{i} {name}" for i, name in enumerate(self.sights[:9], start=1)) or "no sights yet"
        lines = [(line, white) for line in wrap(sights, width, scale)]
        if self.drawing:
            hint = ("drag a box over the sight with the mouse  esc cancels" if self.box is None
                    else "press the number of the sight in the box  b redraws  esc cancels")
            lines += [(line, green) for line in wrap(hint, width, scale)]
        else:
            lines += [(line, grey) for line in wrap(HELP, width, scale)]
        if self.status:
            lines += [(line, red if self.error else green) for line in wrap(self.status, width, scale)]
        return lines

    def draw_box(self, canvas: np.ndarray, frame_size: tuple[int, int]) -> None:
        """The box being drawn (or drawn), over the frame part of the canvas."""
        w, h = frame_size
        corners = None
        if self._drag is not None and self._drag_to is not None:
            corners = (*self._drag, *self._drag_to)
        elif self.box is not None:
            corners = tuple(self.box)
        if corners is not None:
            x0, y0, x1, y1 = corners
            cv2.rectangle(canvas, (int(x0 * w), int(y0 * h)), (int(x1 * w), int(y1 * h)), BOX_COLOUR, 2)

    # Input -----------------------------------------------------------------------------------------------

    def on_mouse(self, event: int, x: int, y: int, frame_size: tuple[int, int]) -> None:
        if not self.drawing:
            return
        w, h = frame_size
        point = (min(1.0, max(0.0, x / w)), min(1.0, max(0.0, y / h)))
        if event == cv2.EVENT_LBUTTONDOWN:
            self._drag, self._drag_to, self.box = point, point, None
        elif event == cv2.EVENT_MOUSEMOVE and self._drag is not None:
            self._drag_to = point
        elif event == cv2.EVENT_LBUTTONUP and self._drag is not None:
            self.box = clamp_box((*self._drag, *point))
            self._drag = self._drag_to = None
            if self.box is None:
                self.set_status("that box is empty: drag again", error=True)

    def on_key(self, key: int, shown: Shown | None) -> bool:
        """Handle a correction key; False if `key` is not one (the caller's: pause, quit)."""
        ch = chr(key) if 0 < key < 128 else ""
        if self.drawing and key == 27:  # esc leaves the box, not the client
            self._stop_drawing()
            self.set_status("box cancelled")
            return True
        if ch not in "cnkbu123456789" or not ch:
            return False
        if ch == "u":
            self._jobs.put_nowait(self._undo)
            return True
        if shown is None:
            self.set_status("no frame yet", error=True)
            return True
        if not self.token:
            self.set_status("no token: corrections need --token or SIGHTSCAN_API_TOKEN", error=True)
            return True
        if ch == "b":
            self.drawing, self.box, self._drag, self._drag_to = True, None, None, None
            self.set_status("drawing a box: drag over the sight, then press its number")
            return True
        top = top_detection(shown.detections)
        if ch == "c":
            if top is None:
                self.set_status("nothing to confirm: no sight is drawn (b draws a box)", error=True)
                return True
            self._send(shown, correction_body("confirm", shown, top["sight"], clamp_box(top["box"])))
        elif ch == "n":
            self._send(shown, correction_body("no-sight", shown))
        elif ch == "k":
            self._send(shown, correction_body("keep", shown))
        else:
            n = int(ch)
            if n > len(self.sights):
                self.set_status(f"there is no sight {n}: this city's model knows {len(self.sights)}", error=True)
                return True
            sight = self.sights[n - 1]
            if self.drawing:
                if self.box is None:
                    self.set_status("draw the box first: drag over the sight", error=True)
                    return True
                self._send(shown, correction_body("box", shown, sight, self.box))
                self._stop_drawing()
            elif top is None:
                self.set_status("no box is drawn to name: b draws one", error=True)
            elif top["sight"] == sight:  # what the model said: that is a confirmation
                self._send(shown, correction_body("confirm", shown, sight, clamp_box(top["box"])))
            else:
                self._send(shown, correction_body("wrong-sight", shown, sight, clamp_box(top["box"])))
        return True

    def _stop_drawing(self) -> None:
        self.drawing, self.box, self._drag, self._drag_to = False, None, None, None

    def _send(self, shown: Shown, body: dict[str, Any]) -> None:
        self.set_status(f"sending {describe(body)}")
        self._jobs.put_nowait(lambda: self._post(shown, body))

    # The API ---------------------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                await job()
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures[0] += 1
                self.set_status(f"could not reach the gateway: {exc or type(exc).__name__}", error=True)
            except Exception as exc:  # an answer not as documented: said, and the next key still works
                self.failures[0] += 1
                self.set_status(f"correction failed: {type(exc).__name__}: {exc}", error=True)
            finally:
                self._jobs.task_done()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def _refused(self, res: aiohttp.ClientResponse, what: str) -> None:
        self.failures[res.status] += 1
        answer = await _answer(res)
        detail = answer.get("message") or answer.get("error") or ""
        if res.status == 429:
            retry = res.headers.get("Retry-After")
            self.set_status(f"{what} refused (429): rate limited" + (f", retry in {retry} s" if retry else ""),
                            error=True)
        else:
            self.set_status(f"{what} refused ({res.status})" + (f": {detail}" if detail else ""), error=True)

    async def _post(self, shown: Shown, body: dict[str, Any]) -> None:
        form = aiohttp.FormData(default_to_multipart=True)  # multipart even with no file (image_id)
        named = shown.image_id is not None
        if named:
            form.add_field("image_id", str(shown.image_id))
        else:
            jpeg = shown.jpeg
            if jpeg is None:
                ok, encoded = cv2.imencode(".jpg", shown.frame, [cv2.IMWRITE_JPEG_QUALITY, FRAME_QUALITY])
                if not ok:
                    self.set_status("could not encode the frame", error=True)
                    return
                jpeg = encoded.tobytes()
            form.add_field("frame", jpeg, filename="frame.jpg", content_type="image/jpeg")
        form.add_field("correction", json.dumps(body))
        timeout = aiohttp.ClientTimeout(total=30)
        async with self.http.post(self.base, data=form, headers=self._headers(), timeout=timeout) as res:
            if res.status == 422 and named and (await _answer(res)).get("error") == "unknown_image":
                shown.image_id = None  # the stored frame is gone (undone elsewhere): upload it again
                await self._post(shown, body)
                return
            if res.status != 201:
                await self._refused(res, describe(body))
                return
            answer = await res.json()
        self.sent.append((answer, shown))
        self.counts[body["action"]] += 1
        if answer.get("image_id") is not None:
            shown.image_id = answer["image_id"]
        self.set_status(f"sent {describe(body)} (correction {answer.get('id')})")

    async def _undo(self) -> None:
        if not self.sent:
            self.set_status("nothing to undo", error=True)
            return
        last, shown = self.sent[-1]
        timeout = aiohttp.ClientTimeout(total=30)
        async with self.http.delete(f"{self.base}/{last['id']}", headers=self._headers(), timeout=timeout) as res:
            if res.status not in (204, 404):
                await self._refused(res, f"undo of correction {last['id']}")
                return
        self.sent.pop()
        self.counts["undone"] += 1
        # The frame goes with its last correction: the next one of it uploads it again.
        if not any(answer.get("image_id") == shown.image_id for answer, _ in self.sent):
            shown.image_id = None
        self.set_status(f"undone: correction {last['id']} ({last.get('action')})" +
                        (" was already gone" if res.status == 404 else ""))

    async def close(self, timeout: float = 15) -> None:
        """Send what the keys queued (up to `timeout` seconds), then stop."""
        try:
            await asyncio.wait_for(self._jobs.join(), timeout)
        except TimeoutError:
            self.set_status(f"{self._jobs.qsize()} correction(s) not sent: the gateway did not answer in time",
                            error=True)
        self._worker.cancel()
