"""The models being served, one per city, loaded on first use and replaced live when a newer one is stored.

A swap never touches a connection: the connection asks the registry for its city's model at every frame, so
the next frame after a swap runs on the new model, and listeners (the city's connections) get told the version.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.inference import Batcher
from gateway.metrics import Metrics
from gateway.settings import GatewaySettings
from gateway.warehouse import Warehouse
from sightscan import db
from sightscan.detector import OnnxDetector
from sightscan.events import ChangeEvent
from sightscan.memory import release_free_memory

log = logging.getLogger(__name__)

Listener = Callable[["LoadedModel | None"], Awaitable[None]]

# How long a swapped-out model may stay referenced (a frame in flight on it) before its release is given up.
RELEASE_WAIT_S = 30.0


@dataclass
class LoadedModel:
    model_id: int
    city_id: int
    version: int
    classes: list[str]
    input_size: int
    metrics: dict[str, Any]
    batcher: Batcher = field(repr=False)

    def describe(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "model_version": self.version, "classes": self.classes,
                "input_size": self.input_size}


class ModelRegistry:
    def __init__(self, warehouse: Warehouse, settings: GatewaySettings, inference_executor: Executor,
                 metrics: Metrics) -> None:
        self._warehouse = warehouse
        self._settings = settings
        self._executor = inference_executor
        self._metrics = metrics
        self._models: dict[int, LoadedModel] = {}
        self._no_model_since: dict[int, float] = {}
        self._last_used: dict[int, float] = {}  # city -> when a frame or a connection last needed its model
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._listeners: defaultdict[int, set[Listener]] = defaultdict(set)
        self._tasks: set[asyncio.Task[Any]] = set()

    # Connections ------------------------------------------------------------------------------------------

    def subscribe(self, city_id: int, listener: Listener) -> None:
        self._listeners[city_id].add(listener)

    def unsubscribe(self, city_id: int, listener: Listener) -> None:
        self._listeners[city_id].discard(listener)
        self._last_used[city_id] = time.monotonic()

    def current(self, city_id: int) -> LoadedModel | None:
        return self._models.get(city_id)

    async def get(self, city_id: int) -> LoadedModel | None:
        """The city's model, loading the latest from PostgreSQL on first use; None while it has none."""
        self._last_used[city_id] = time.monotonic()
        model = self._models.get(city_id)
        if model is not None:
            return model
        checked = self._no_model_since.get(city_id)
        if checked is not None and time.monotonic() - checked < self._settings.no_model_recheck_s:
            return None
        async with self._locks[city_id]:
            if city_id in self._models:
                return self._models[city_id]
            row = await self._warehouse.latest_model(city_id)
            if row is None:
                self._no_model_since[city_id] = time.monotonic()
                return None
            model = await self._load(row)
            if model is None:  # unservable row: do not retry it at every frame
                self._no_model_since[city_id] = time.monotonic()
            else:
                self._install(model)
            return model

    # Unloading what nobody watches ------------------------------------------------------------------------------
    # Every city someone ever watched would otherwise keep its model (50-120 MB with its session's buffers) for the
    # gateway's life: over days of new cities that is memory without bound (bench/soak).

    def start(self) -> None:
        """Start unloading idle models (on the running loop; GATEWAY_MODEL_IDLE_S, 0: never)."""
        if self._settings.model_idle_s > 0:
            self._spawn(self._unload_idle_forever(), "model-unload")

    async def _unload_idle_forever(self) -> None:
        every = min(60.0, max(0.5, self._settings.model_idle_s / 4))
        while True:
            await asyncio.sleep(every)
            try:
                await self.unload_idle()
            except Exception:  # never let one bad pass stop the unloading for good
                log.exception("unloading idle models failed")

    async def unload_idle(self, now: float | None = None) -> list[int]:
        """Unload the models of cities no connection watches and no frame needed for GATEWAY_MODEL_IDLE_S; the
        cities unloaded. A later frame or page loads the city's model again from PostgreSQL."""
        now = time.monotonic() if now is None else now
        unloaded = []
        for city_id, model in list(self._models.items()):
            if self._listeners.get(city_id) or now - self._last_used.get(city_id, now) < self._settings.model_idle_s:
                continue
            async with self._locks[city_id]:
                if self._models.get(city_id) is not model or self._listeners.get(city_id):
                    continue  # swapped or watched meanwhile
                del self._models[city_id]
                self._retire(model)
                unloaded.append(city_id)
                self._metrics.models_unloaded.inc()
                log.info("model unloaded: nobody watching", extra={"city_id": city_id, "version": model.version})
        return unloaded

    # Change events ----------------------------------------------------------------------------------------

    def on_event(self, event: ChangeEvent) -> None:
        """Called on the loop for every models change event; the work runs as a task."""
        self._metrics.model_events.labels(event.op).inc()
        self._spawn(self._apply(event), "model-event")

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply(self, event: ChangeEvent) -> None:
        row = event.row
        try:
            city_id, model_id, version = int(row["city_id"]), int(row["id"]), int(row["version"])
        except (KeyError, TypeError, ValueError):
            log.warning("model event without city_id/id/version", extra={"row_keys": sorted(row)})
            return
        # Only cities someone is watching matter; for the others, forget "no model" so the next look is fresh.
        self._no_model_since.pop(city_id, None)
        if city_id not in self._models and not self._listeners.get(city_id):
            return
        async with self._locks[city_id]:
            current = self._models.get(city_id)
            if event.op == "d":
                if current is not None and current.model_id == model_id:
                    stored = await self._warehouse.latest_model(city_id)
                    await self._replace(city_id, await self._load(stored) if stored else None)
                return
            if current is not None and (current.version > version or current.model_id == model_id):
                return  # a redelivered or older event: models only move forward
            stored = await self._warehouse.model_by_id(model_id)
            if stored is None:
                return  # deleted since; its delete event follows
            loaded = await self._load(stored)
            if loaded is not None:
                await self._replace(city_id, loaded)

    async def _replace(self, city_id: int, model: LoadedModel | None) -> None:
        old = self._models.get(city_id)
        if model is None:
            self._models.pop(city_id, None)
            self._no_model_since[city_id] = time.monotonic()
        else:
            self._install(model)
        if old is not None:
            self._retire(old)
        log.info("model swapped", extra={"city_id": city_id, "from_version": old.version if old else None,
                                         "to_version": model.version if model else None})
        for listener in list(self._listeners.get(city_id, ())):
            try:
                await listener(model)
            except Exception:  # one broken connection must not stop the others hearing of the swap
                log.exception("model listener failed", extra={"city_id": city_id})

    def _retire(self, old: LoadedModel) -> None:
        """A model no longer served: frames already queued on it still get their answers, then it is released."""
        old.batcher.close()
        self._spawn(self._release(old), "model-release")

    async def _release(self, old: LoadedModel) -> None:
        """Once nothing uses a swapped-out model, its ONNX Runtime session is freed: hand that memory back, or the
        gateway keeps every swap's high-water mark (sightscan/memory.py)."""
        session = weakref.ref(old.batcher.detector)
        await old.batcher.drained()
        version, city_id = old.version, old.city_id
        del old
        deadline = time.monotonic() + RELEASE_WAIT_S
        while session() is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.5)  # a connection's frame still holds it; it lets go at its next frame
        if session() is not None:
            log.warning("swapped-out model still referenced", extra={"city_id": city_id, "version": version})
            return
        await asyncio.get_running_loop().run_in_executor(self._executor, release_free_memory)
        self._metrics.models_released.inc()

    def _install(self, model: LoadedModel) -> None:
        self._models[model.city_id] = model
        self._no_model_since.pop(model.city_id, None)
        self._last_used[model.city_id] = time.monotonic()
        self._metrics.model_swaps.inc()

    async def _load(self, row: db.StoredModel) -> LoadedModel | None:
        settings = self._settings

        def build() -> OnnxDetector:
            detector = OnnxDetector(row.onnx, row.classes, row.input_size, threads=settings.inference_threads)
            # One warm-up run, so the first live frame does not pay for ONNX Runtime's lazy initialisation.
            detector.run(np.zeros((1, 3, row.input_size, row.input_size), dtype=np.float32))
            return detector

        try:
            detector = await asyncio.get_running_loop().run_in_executor(self._executor, build)
        except Exception:
            self._metrics.model_load_failures.inc()
            log.exception("model cannot be served", extra={"model_id": row.id, "city_id": row.city_id,
                                                           "version": row.version})
            return None
        batcher = Batcher(detector, self._executor, settings.max_batch, settings.score_threshold, self._metrics)
        return LoadedModel(row.id, row.city_id, row.version, list(row.classes), row.input_size,
                           dict(row.metrics or {}), batcher)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for model in self._models.values():
            model.batcher.close()
