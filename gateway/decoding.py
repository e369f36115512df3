"""Every image decode of the gateway runs here: off the event loop, with bounded concurrency.

Frames decode on `GATEWAY_DECODE_THREADS` threads; each websocket holds at most one frame in work, so the queue
is bounded by the connections. Uploads have their own `GATEWAY_UPLOAD_THREADS` threads and as many slots: a
request reads its body only once it holds a slot, so at most that many upload bodies and decodes are in memory,
and a large upload never delays a live frame.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from gateway.imaging import DecodedFrame, ValidatedUpload, decode_frame, validate_upload
from gateway.settings import GatewaySettings


class Decoder:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._frames = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
        self._uploads = ThreadPoolExecutor(max_workers=settings.upload_threads, thread_name_prefix="upload")
        self._upload_slots = asyncio.Semaphore(settings.upload_threads)

    async def frame(self, data: bytes, size: int) -> DecodedFrame:
        """A webcam frame -> the model's input; ImageRejected when it is not an acceptable frame."""
        return await asyncio.get_running_loop().run_in_executor(
            self._frames, decode_frame, data, size, self.settings.max_frame_pixels)

    @contextlib.asynccontextmanager
    async def upload_slot(self) -> AsyncIterator[None]:
        """Hold this while reading and validating one upload."""
        async with self._upload_slots:
            yield

    async def upload(self, data: bytes) -> ValidatedUpload:
        """Check an upload decodes completely; ImageRejected otherwise. Call it holding an upload slot."""
        return await asyncio.get_running_loop().run_in_executor(
            self._uploads, validate_upload, data, self.settings.max_pixels)

    def close(self) -> None:
        self._frames.shutdown(wait=False, cancel_futures=True)
        self._uploads.shutdown(wait=False, cancel_futures=True)
