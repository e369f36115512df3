"""Batched ONNX Runtime inference for one model, off the event loop.

Every connection of a city hands its newest decoded frame to the city model's Batcher and waits for the answer.
While one batch runs on the inference thread, frames of other connections gather; the next batch takes all of
them at once (up to max_batch). Nothing ever waits for a batch to fill: with one client a frame runs alone and
immediately, with many the per-frame cost falls as batches grow. Each connection has at most one frame here, so
the queue is bounded by the number of connections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Executor

import numpy as np

from gateway.metrics import Metrics
from sightscan.detector import Detection, OnnxDetector

log = logging.getLogger(__name__)


class Batcher:
    def __init__(self, detector: OnnxDetector, executor: Executor, max_batch: int, threshold: float,
                 metrics: Metrics) -> None:
        self.detector = detector
        self._executor = executor
        self._max_batch = max_batch
        self._threshold = threshold
        self._metrics = metrics
        self._jobs: deque[tuple[np.ndarray, asyncio.Future[list[Detection]]]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def detect(self, tensor: np.ndarray) -> list[Detection]:
        """Detections for one 3xSxS frame tensor (score >= threshold)."""
        if self._closing:
            raise RuntimeError("this model was swapped out")
        future: asyncio.Future[list[Detection]] = asyncio.get_running_loop().create_future()
        self._jobs.append((tensor, future))
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._serve(), name="batcher")
        return await future

    def close(self) -> None:
        """Finish the frames already queued, then stop (used when a newer model replaces this one)."""
        self._closing = True
        self._wake.set()

    async def drained(self) -> None:
        """Returns once a closed batcher has answered its last queued frame."""
        if self._task is not None:
            await asyncio.wait({self._task})

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._jobs:
                batch = []
                while self._jobs and len(batch) < self._max_batch:
                    tensor, future = self._jobs.popleft()
                    if not future.done():  # the connection may have gone away meanwhile
                        batch.append((tensor, future))
                if not batch:
                    continue
                started = time.perf_counter()
                try:
                    stacked = np.stack([t for t, _ in batch])
                    results = await loop.run_in_executor(self._executor, self.detector.detect, stacked,
                                                         self._threshold)
                except Exception as exc:  # a model that fails at run time: every waiting frame learns why
                    log.exception("inference failed", extra={"batch": len(batch)})
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self._metrics.inference_seconds.observe(time.perf_counter() - started)
                self._metrics.batch_size.observe(len(batch))
                for (_, future), found in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(found)
            if self._closing:
                return
