"""Helpers of the gateway tests: a real gateway process, test images."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sightscan.children import stop_popen
from sightscan.config import Settings

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789"
COLOURS = {"Red Gate": (220, 30, 30), "Green Tower": (30, 200, 40), "Blue Hall": (30, 40, 210)}


@dataclass
class Gateway:
    url: str
    proc: subprocess.Popen
    log: Path

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws/detect"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


def start_gateway(settings: Settings, log: Path, **env: str) -> Gateway:
    environ = {**os.environ, **settings.env(), "SIGHTSCAN_API_TOKEN": TOKEN, "SIGHTSCAN_LOG_FORMAT": "console",
               "GATEWAY_IDLE_TIMEOUT_S": "4", "GATEWAY_MAX_FRAME_BYTES": "300000",
               "GATEWAY_MAX_UPLOAD_BYTES": "400000", "GATEWAY_DECODE_THREADS": "1",
               "GATEWAY_INFERENCE_THREADS": "1",
               # The fuzz (test_gateway_schema) sends more corrections than a person would; the limit itself is
               # tested on a gateway of its own (test_corrections).
               "GATEWAY_CORRECTIONS_PER_MINUTE": "100000", **env}
    out = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "gateway.app", "--port", "0"], cwd=REPO, env=environ,
                            stdout=subprocess.PIPE, stderr=out, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on (http://\S+)", line)
    if not match:
        proc.kill()
        raise AssertionError(f"gateway did not start: {line!r}\n{log.read_text()[-3000:]}")
    gateway = Gateway(match.group(1), proc, log)
    deadline = time.monotonic() + 60
    while True:  # ready = PostgreSQL answers and the model-event partitions are assigned
        try:
            with urllib.request.urlopen(gateway.url + "/readyz", timeout=5) as res:
                if res.status == 200:
                    return gateway
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_gateway(gateway)
            raise AssertionError(f"gateway not ready in 60 s\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def stop_gateway(gateway: Gateway) -> None:
    stop_popen(gateway.proc)


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (160, 120), quality: int = 85) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def noise_jpeg(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=60)
    return buf.getvalue()


async def next_message(ws, kind: str | tuple[str, ...], timeout: float = 15) -> dict:  # noqa: ANN001 - aiohttp ws
    """The next JSON message of the given type(s), skipping others."""
    import asyncio
    import json

    kinds = (kind,) if isinstance(kind, str) else kind
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise AssertionError(f"no {kinds} message within {timeout} s")
        msg = await ws.receive(timeout=left)
        if msg.type.name != "TEXT":
            raise AssertionError(f"connection ended while waiting for {kinds}: {msg.type.name} {msg.data!r}")
        body = json.loads(msg.data)
        if body["type"] in kinds:
            return body


def metric(text: str, name: str) -> float:
    """The value of one Prometheus sample line (name including labels) in /metrics text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name}")


def call(gateway: Gateway, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN,
         content_type: str = "application/json") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(gateway.url + urllib.parse.quote(path, safe="/%?=&"), data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", content_type)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=20) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def call_json(gateway: Gateway, method: str, path: str, payload: Any = None, **kw: Any) -> tuple[int, Any]:
    body = None if payload is None else (payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    status, _, data = call(gateway, method, path, body, **kw)
    return status, json.loads(data)


def multipart(fields: dict[str, tuple[str, bytes] | str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f"--{boundary}\r\n".encode())
        if isinstance(value, tuple):
            out.write(f'Content-Disposition: form-data; name="{name}"; filename="{value[0]}"\r\n'
                      "Content-Type: application/octet-stream\r\n\r\n".encode())
            out.write(value[1])
        else:
            out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode())
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def bomb_png(width: int = 7000, height: int = 5700, seed: int = 0) -> bytes:
    """A 1-bit PNG of width x height (39.9 MP by default) that compresses to a few KB: a decompression bomb."""
    img = Image.new("1", (width, height), 0)
    img.putpixel((seed % width, 0), 1)  # distinct bytes per seed, so uploads are not duplicates
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def add_user(gateway: Gateway, name: str | None = None) -> tuple[str, str]:
    """A new user (a unique name unless given) through POST /api/users: (name, token)."""
    name = name or f"u-{uuid.uuid4().hex[:12]}"
    status, body = call_json(gateway, "POST", "/api/users", {"name": name})
    assert status == 201, body
    return body["name"], body["token"]


def post_correction(gateway: Gateway, city: str, correction: dict[str, Any] | bytes, frame: bytes | None = None,
                    token: str | None = TOKEN, image_id: int | str | None = None
                    ) -> tuple[int, dict[str, str], Any]:
    """POST /api/cities/{city}/corrections as multipart/form-data: (status, headers, JSON body)."""
    fields: dict[str, tuple[str, bytes] | str] = {
        "correction": correction.decode() if isinstance(correction, bytes) else json.dumps(correction)}
    if frame is not None:
        fields["frame"] = ("frame.jpg", frame)
    if image_id is not None:
        fields["image_id"] = str(image_id)
    body, ctype = multipart(fields)
    status, headers, data = call(gateway, "POST", f"/api/cities/{city}/corrections", body, token=token,
                                 content_type=ctype)
    return status, headers, json.loads(data)
