"""A local Google Cloud Vision server (aiohttp) that speaks the REST protocol the real client library uses.

    POST /v1/images:annotate
    {"requests": [{"image": {"content": "<base64>"}, "features": [{"type": "LANDMARK_DETECTION", "maxResults": N}]}]}
 -> {"responses": [{"landmarkAnnotations": [{"mid", "description", "score", "boundingPoly": {"vertices": [...]},
                                            "locations": [{"latLng": {...}}]}]} | {} | {"error": {...}}]}

Which landmarks an image shows is told to the server (`FakeVision.know(sha256, [Landmark, ...])`): the synthetic
images carry no readable marker, and a sha256 -> answer map is what a recorded fixture would hold anyway. An image
the server does not know has no landmark (an empty response object, as Google sends).

Faults for tests: `fail_next(status, times)` answers whole requests with Google's JSON error body (429
RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 403 PERMISSION_DENIED…); `slow_next(seconds, times)` delays answers (client
timeouts); `image_error(sha256, code, message)` puts a per-image error inside a 200 response. `latency_s` and
`per_image_s` simulate Google's service time (the benchmark uses them). Every request is recorded.

    python -m tests.support.vision_server --port 8765   # run it alone (no landmarks known), e.g. for `sightscan label`
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from localsystem.demo.background import BackgroundServer

STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
LANDMARK_DETECTION = 2  # google.cloud.vision.Feature.Type.LANDMARK_DETECTION
MAX_IMAGES_PER_REQUEST = 16  # Vision's limit for synchronous batch_annotate_images


@dataclass(frozen=True)
class Landmark:
    description: str
    vertices: Sequence[tuple[int, int]]  # pixel corners, as Vision's boundingPoly.vertices
    score: float = 0.9
    mid: str = ""
    lat_lng: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"description": self.description, "score": self.score,
                               "boundingPoly": {"vertices": [_vertex(x, y) for x, y in self.vertices]}}
        if self.mid:
            out["mid"] = self.mid
        if self.lat_lng:
            out["locations"] = [{"latLng": {"latitude": self.lat_lng[0], "longitude": self.lat_lng[1]}}]
        return out


def _vertex(x: int, y: int) -> dict[str, int]:
    # proto3 JSON leaves zero fields out, as Google does: {"y": 5} is the vertex (0, 5).
    return {k: v for k, v in (("x", x), ("y", y)) if v}


def box_landmark(description: str, box: tuple[int, int, int, int], **kw: Any) -> Landmark:
    """A landmark whose polygon is the pixel box (x_min, y_min, x_max, y_max)."""
    x0, y0, x1, y1 = box
    return Landmark(description, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], **kw)


@dataclass
class Recorded:
    images: list[str]  # sha256 of each image in the request, in order
    status: int
    max_results: int | None


@dataclass
class FakeVision:
    latency_s: float = 0.0      # per HTTP request
    per_image_s: float = 0.0    # per image in a request
    known: dict[str, list[Landmark]] = field(default_factory=dict)
    image_errors: dict[str, tuple[int, str]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    _faults: list[tuple[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # Scripting --------------------------------------------------------------------------------------

    def know(self, sha256: str, landmarks: Sequence[Landmark]) -> None:
        self.known[sha256] = list(landmarks)

    def know_image(self, data: bytes, landmarks: Sequence[Landmark]) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.know(sha, landmarks)
        return sha

    def fail_next(self, status: int, times: int = 1, message: str = "") -> None:
        with self._lock:
            self._faults.extend([("status", (status, message))] * times)

    def slow_next(self, seconds: float, times: int = 1) -> None:
        with self._lock:
            self._faults.extend([("slow", seconds)] * times)

    def image_error(self, sha256: str, code: int = 3, message: str = "Bad image data.") -> None:
        self.image_errors[sha256] = (code, message)

    # What it saw ------------------------------------------------------------------------------------

    @property
    def images_received(self) -> int:
        """Every image that arrived in any request, whatever the answer."""
        with self._lock:
            return sum(len(r.images) for r in self.requests)

    @property
    def images_answered(self) -> int:
        with self._lock:
            return sum(len(r.images) for r in self.requests if r.status == 200)

    def received(self) -> list[str]:
        with self._lock:
            return [sha for r in self.requests for sha in r.images]

    # The protocol -----------------------------------------------------------------------------------

    async def annotate(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            items = body["requests"]
            shas = [hashlib.sha256(base64.b64decode(item["image"]["content"])).hexdigest() for item in items]
            features = [f for item in items for f in item.get("features", [])]
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f"malformed request: {exc}")
        if not 1 <= len(items) <= MAX_IMAGES_PER_REQUEST:
            return _error(400, f"a request holds 1..{MAX_IMAGES_PER_REQUEST} images, got {len(items)}")
        # The client library sends enums as numbers ($alt=json;enum-encoding=int); curl users send names.
        if any(f.get("type") not in ("LANDMARK_DETECTION", LANDMARK_DETECTION) for f in features) or not features:
            return _error(400, "this server only does LANDMARK_DETECTION")
        max_results = features[0].get("maxResults")
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        status = fault[1][0] if fault and fault[0] == "status" else 200
        with self._lock:  # recorded on arrival: a client that timed out has still sent its images
            self.requests.append(Recorded(shas, status, int(max_results) if max_results else None))
        delay = self.latency_s + self.per_image_s * len(items)
        if fault and fault[0] == "slow":
            delay += fault[1]
        if delay:
            await asyncio.sleep(delay)
        if status != 200:
            return _error(status, fault[1][1] or f"injected {status}")
        return web.json_response({"responses": [self._answer(sha, max_results) for sha in shas]})

    def _answer(self, sha: str, max_results: Any) -> dict[str, Any]:
        if sha in self.image_errors:
            code, message = self.image_errors[sha]
            return {"error": {"code": code, "message": message}}
        landmarks = self.known.get(sha, [])
        if max_results:
            landmarks = landmarks[:int(max_results)]
        return {"landmarkAnnotations": [lm.to_json() for lm in landmarks]} if landmarks else {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/images:annotate", self.annotate)
        return app


def _error(status: int, message: str) -> web.Response:
    name = STATUS_NAMES.get(status, "UNKNOWN")
    return web.json_response({"error": {"code": status, "message": message, "status": name}}, status=status)


class VisionServer(BackgroundServer):
    """FakeVision served on 127.0.0.1 from a background thread (tests and benches are synchronous)."""

    def __init__(self, fake: FakeVision | None = None, port: int = 0) -> None:
        super().__init__(port)
        self.fake = fake or FakeVision()

    def make_app(self) -> web.Application:
        return self.fake.app()

    @property
    def endpoint(self) -> str:
        return self.url


def main() -> None:
    p = argparse.ArgumentParser(description="a local Vision REST server (no landmarks known: every answer is empty)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--latency-s", type=float, default=0.0)
    a = p.parse_args()
    web.run_app(FakeVision(latency_s=a.latency_s).app(), host="127.0.0.1", port=a.port)


if __name__ == "__main__":
    main()
