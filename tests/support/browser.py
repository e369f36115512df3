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


class Browser:
    def __init__(self, url: str, profile: Path, fake_video: Path, log: Path) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen([
            chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
            "--remote-debugging-port=0", "--remote-allow-origins=*",
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={fake_video}", "--autoplay-policy=no-user-gesture-required",
            "--window-size=1024,768", url,
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
            async with http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                await ws.send_json({"id": 1, "method": "Runtime.evaluate",
                                    "params": {"expression": expression, "returnByValue": True}})
                while True:
                    msg = json.loads((await ws.receive(timeout=20)).data)
                    if msg.get("id") == 1:
                        result = msg["result"]
                        if "exceptionDetails" in result:
                            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
                        return result["result"].get("value")

    def close(self) -> None:
        stop_popen(self.proc)
        self._log_file.close()


def poll(browser: Browser, expression: str, until: Any, timeout: float) -> Any:
    """Evaluate repeatedly until until(value) holds; returns the value (AssertionError with the last one if not)."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = asyncio.run(browser.evaluate(expression))
        if until(value):
            return value
        time.sleep(0.5)
    raise AssertionError(f"page never satisfied the condition in {timeout} s; last state: {value}")
