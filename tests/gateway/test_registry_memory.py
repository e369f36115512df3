"""The model registry's memory over time, without a stack: a swapped-out model is released once its frames are
answered, and a city nobody watches has its model unloaded, then loaded again by the next frame (bench/soak)."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gateway.metrics import Metrics
from gateway.registry import ModelRegistry
from gateway.settings import GatewaySettings
from sightscan import db
from sightscan.events import ChangeEvent
from tests.support.gateway import COLOURS
from tests.support.onnx_models import solid_colour_model

CITY = 7


class Rows:
    """The warehouse's two model queries over a list of rows (the gateway's Warehouse protocol)."""

    def __init__(self) -> None:
        self.rows: list[db.StoredModel] = []
        self.loads = 0

    def add(self) -> db.StoredModel:
        onnx, classes = solid_colour_model(COLOURS)
        row = db.StoredModel(len(self.rows) + 1, CITY, len(self.rows) + 1, onnx, classes, 64, {})
        self.rows.append(row)
        return row

    async def latest_model(self, city_id: int) -> db.StoredModel | None:
        self.loads += 1
        return self.rows[-1] if self.rows else None

    async def model_by_id(self, model_id: int) -> db.StoredModel | None:
        self.loads += 1
        return next((r for r in self.rows if r.id == model_id), None)


def _registry(rows: Rows, idle_s: float) -> tuple[ModelRegistry, Metrics, ThreadPoolExecutor]:
    pool, metrics = ThreadPoolExecutor(1), Metrics()
    settings = GatewaySettings(model_idle_s=idle_s)
    return ModelRegistry(rows, settings, pool, metrics), metrics, pool  # type: ignore[arg-type]


def _frame() -> np.ndarray:
    return np.zeros((3, 64, 64), dtype=np.float32)


async def _until(check, seconds: float = 10.0) -> bool:  # noqa: ANN001
    for _ in range(int(seconds / 0.1)):
        if check():
            return True
        await asyncio.sleep(0.1)
    return False


def test_a_swapped_out_model_is_released_once_its_frames_are_answered() -> None:
    async def run() -> None:
        rows = Rows()
        rows.add()
        registry, metrics, pool = _registry(rows, idle_s=0)
        v1 = await registry.get(CITY)
        assert v1 is not None and await v1.batcher.detect(_frame()) is not None
        session = weakref.ref(v1.batcher.detector)
        v2 = rows.add()
        registry.on_event(ChangeEvent(table="models", op="c", before=None, lsn=1, tx_id=1, ts_ms=0,
                                      after={"city_id": CITY, "id": v2.id, "version": v2.version}))
        assert await _until(lambda: registry.current(CITY).version == 2)
        del v1
        released = await _until(lambda: metrics.models_released._value.get() == 1)
        assert released, "v1 was never released"
        assert session() is None, "something still holds v1's session"
        await registry.close()
        pool.shutdown()

    asyncio.run(run())


def test_a_city_nobody_watches_is_unloaded_and_its_next_frame_loads_it_again() -> None:
    async def run() -> None:
        rows = Rows()
        rows.add()
        registry, metrics, pool = _registry(rows, idle_s=30)

        async def listener(_model: object) -> None:
            return None

        registry.subscribe(CITY, listener)
        model = await registry.get(CITY)
        assert model is not None
        del model
        # Watched: kept however long ago the last frame was.
        assert await registry.unload_idle(now=time.monotonic() + 3600) == []
        registry.unsubscribe(CITY, listener)
        assert await registry.unload_idle() == []  # just left: not idle yet
        assert await registry.unload_idle(now=time.monotonic() + 31) == [CITY]
        assert registry.current(CITY) is None and metrics.models_unloaded._value.get() == 1
        assert await _until(lambda: metrics.models_released._value.get() == 1), "the unloaded model was not released"
        gc.collect()
        loads = rows.loads
        again = await registry.get(CITY)  # the next frame
        assert again is not None and again.version == 1 and rows.loads == loads + 1
        assert await again.batcher.detect(_frame()) is not None
        await registry.close()
        pool.shutdown()

    asyncio.run(run())
