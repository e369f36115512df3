"""Headless Debian chromium driven over the DevTools protocol (a websocket, spoken with aiohttp): no extra deps."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from sightscan.children import stop_popen

INSTALL = Path(__file__).resolve().parents[1] / "gateway" / "install_chromium.sh"


def chromium_binary() -> str:
    """The chromium executable, installing Debian's package first if it is missing (needs root)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        subprocess.run(["bash", str(INSTALL)], check=True, timeout=900)
        found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise AssertionError(f"chromium is not installed and {INSTALL} could not install it")
    return found


class PageNotReady(AssertionError):
    """DevTools could not evaluate in the page (no page target yet, or its context is being replaced: a
    cross-origin isolated page gets a new one when it loads); evaluating again later may work."""


class Browser:
    def __init__(self, url: str, profile: Path, fake_video: Path, log: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen([
            chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
            "--remote-debugging-port=0", "--remote-allow-origins=*",
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={fake_video}", "--autoplay-policy=no-user-gesture-required",
            "--window-size=1024,768", *extra_args, url,
        ], stdout=self._log_file, stderr=subprocess.STDOUT)
        self.devtools = self._devtools_port()

    def _devtools_port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            match = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", self.log.read_text(errors="replace"))
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"chromium did not start:\n{self.log.read_text(errors='replace')[-3000:]}")

    async def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the first page and return its JSON-able value."""
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{self.devtools}/json/list") as res:
                targets = [t for t in await res.json(content_type=None) if t.get("type") == "page"]
            if not targets or "webSocketDebuggerUrl" not in targets[0]:
                raise PageNotReady(f"no page target yet: {targets}")
            async with http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                await ws.send_json({"id": 1, "method": "Runtime.evaluate",
                                    "params": {"expression": expression, "returnByValue": True}})
                while True:
                    msg = json.loads((await ws.receive(timeout=20)).data)
                    if msg.get("id") == 1:
                        if "result" not in msg:
                            raise PageNotReady(f"DevTools could not evaluate: {msg.get('error')}")
                        result = msg["result"]
                        if "exceptionDetails" in result:
                            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
                        return result["result"].get("value")

    async def screenshot(self, path: Path) -> Path:
        """The first page as a PNG at `path` (what a person would see; kept beside a test's other outputs)."""
        import base64

        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{self.devtools}/json/list") as res:
                targets = [t for t in await res.json(content_type=None) if t.get("type") == "page"]
            async with http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                await ws.send_json({"id": 1, "method": "Page.captureScreenshot", "params": {"format": "png"}})
                while True:
                    msg = json.loads((await ws.receive(timeout=30)).data)
                    if msg.get("id") == 1:
                        path.write_bytes(base64.b64decode(msg["result"]["data"]))
                        return path

    def close(self) -> None:
        stop_popen(self.proc)
        self._log_file.close()


def poll(browser: Browser, expression: str, until: Any, timeout: float) -> Any:
    """Evaluate repeatedly until until(value) holds; returns the value (AssertionError with the last one if not)."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = asyncio.run(browser.evaluate(expression))
        except PageNotReady:  # the page is still loading: ask again
            value = None
        else:
            if until(value):
                return value
        time.sleep(0.5)
    raise AssertionError(f"page never satisfied the condition in {timeout} s; last state: {value}")


# Input and awaited scripts (the corrections tests) ----------------------------------------------------------


async def _commands(browser: Browser, calls: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """DevTools commands to the first page, in order over one connection; each one's result (AssertionError if one
    fails or a script throws)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{browser.devtools}/json/list") as res:
            targets = [t for t in await res.json(content_type=None) if t.get("type") == "page"]
        async with http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            results = []
            for n, (method, params) in enumerate(calls, start=1):
                await ws.send_json({"id": n, "method": method, "params": params})
                while True:
                    msg = json.loads((await ws.receive(timeout=30)).data)
                    if msg.get("id") == n:
                        break
                if "error" in msg:
                    raise AssertionError(f"{method} failed: {msg['error']}")
                if "exceptionDetails" in msg["result"]:
                    raise AssertionError(f"page script failed: {msg['result']['exceptionDetails']}")
                results.append(msg["result"])
            return results


def awaited(browser: Browser, expression: str) -> Any:
    """Evaluate JavaScript whose value is a promise, wait for it, and return its JSON-able value."""
    [result] = asyncio.run(_commands(browser, [("Runtime.evaluate", {
        "expression": expression, "returnByValue": True, "awaitPromise": True})]))
    return result["result"].get("value")


def drag(browser: Browser, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
    """A real mouse drag with the left button, in CSS pixels of the viewport: press, moves, release (the page
    sees trusted mouse and pointer events)."""
    def mouse(kind: str, x: float, y: float, buttons: int) -> tuple[str, dict[str, Any]]:
        return ("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "buttons": buttons,
                                             "clickCount": 1 if kind != "mouseMoved" else 0})

    (x0, y0), (x1, y1) = start, end
    calls = [mouse("mouseMoved", x0, y0, 0), mouse("mousePressed", x0, y0, 1)]
    calls += [mouse("mouseMoved", x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps, 1)
              for i in range(1, steps + 1)]
    calls.append(mouse("mouseReleased", x1, y1, 0))
    asyncio.run(_commands(browser, calls))


KEYS = {"ArrowLeft": 37, "ArrowUp": 38, "ArrowRight": 39, "ArrowDown": 40, "Enter": 13, "Escape": 27}


def press(browser: Browser, key: str, shift: bool = False) -> None:
    """One key press (down and up) to the focused element, as the keyboard sends it."""
    common = {"key": key, "code": key, "windowsVirtualKeyCode": KEYS[key], "modifiers": 8 if shift else 0}
    asyncio.run(_commands(browser, [("Input.dispatchKeyEvent", {"type": "rawKeyDown", **common}),
                                    ("Input.dispatchKeyEvent", {"type": "keyUp", **common})]))


def colour_clip(out: Path, decoy: str) -> tuple[Path, list[str], bytes]:
    """A fake-webcam clip of three synthetic sights and a colour model fitted to it (mean colour per sight), its
    classes the three sights and `decoy`, a colour in no frame. The colour model is fitted to the frames with one
    sight in view (the clip also has street and pairs)."""
    import numpy as np

    from localsystem.demo.city import read_y4m, render_city, render_clip
    from tests.support.onnx_models import build_colour_model

    info = render_city(out, city="Synthetica", seed=11, sights=3, per_sight=1)
    video = render_clip(out / "clip.y4m", info, seconds=6, fps=10)
    alone = [(i, f["sights"][0]) for i, f in enumerate(json.loads((out / "video_annotations.json").read_text())
                                                       ["frames"]) if len(f["sights"]) == 1]
    every = [f.astype(np.float32) / 255.0 for f in read_y4m(video)]
    frames = [every[i] for i, _ in alone]
    meta = [truth for _, truth in alone]
    names = list(dict.fromkeys(f["sight"] for f in meta))
    feats = np.array([f.mean(axis=(0, 1)) for f in frames])
    labels = np.array([names.index(f["sight"]) for f in meta])
    protos = np.array([feats[labels == i].mean(axis=0) for i in range(len(names))])
    boxes = []
    for i in range(len(names)):
        bb = np.array([f["bbox"] for f in meta if f["sight"] == names[i]]).mean(axis=0)
        boxes.append([bb[0] / 640, bb[1] / 480, (bb[0] + bb[2]) / 640, (bb[1] + bb[3]) / 480])
    # The decoy sits far from every frame's colour.
    protos = np.vstack([protos, [1.0, 0.0, 1.0]])
    boxes.append([0.0, 0.0, 1.0, 1.0])
    nearest = np.argmin(((feats[:, None, :] - protos[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).mean() > 0.8, "the fitted colour model should name most frames of its own clip"
    spread = np.sqrt(((protos[:3, None] - protos[None, :3]) ** 2).sum(-1))[np.triu_indices(3, 1)].min()
    return video, names + [decoy], build_colour_model(protos, np.array(boxes), temperature=float(spread**2 / 4))


# The page's local path (issue 22) -----------------------------------------------------------------------------


def browser_runtime() -> Path:
    """gateway/web/node_modules with onnxruntime-web as ./dev installs it (npm ci from the lock file) when it is not
    there yet; its dist folder."""
    from gateway.model_files import WEB, installed_runtime

    runtime = installed_runtime()
    if runtime is None:
        npm = shutil.which("npm")
        if npm is None:
            raise AssertionError("onnxruntime-web is not installed (gateway/web/node_modules) and npm is missing: "
                                 "./dev test installs Node.js, npm and it")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=WEB, check=True, timeout=900)
        runtime = installed_runtime()
    if runtime is None:
        raise AssertionError("npm ci in gateway/web did not install onnxruntime-web's files")
    return runtime.dist
