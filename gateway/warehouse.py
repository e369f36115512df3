"""What the gateway reads and writes in PostgreSQL, as coroutines: psycopg2 is blocking, so every query runs on a
small thread pool and the event loop never waits on the database."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import psycopg2.extensions

from sightscan import db
from sightscan.config import Settings
from sightscan.model_metrics import figures

T = TypeVar("T")

# One row per city with its pipeline status. Counts are computed from the warehouse itself so the page is right
# even before the stream agents have written a data mart; the mart's figures are returned beside them.
_CITY_STATUS_SQL = """
SELECT c.id, c.name, c.status, c.requested_at, c.updated_at,
       (SELECT count(*) FROM sights s WHERE s.city_id = c.id) AS sights,
       (SELECT count(*) FROM images i WHERE i.city_id = c.id) AS images,
       (SELECT count(DISTINCT l.image_id) FROM labels l WHERE l.city_id = c.id AND l.sight_id IS NOT NULL)
           AS labelled_images,
       m.version, m.metrics, m.created_at, m.classes,
       cm.images, cm.labelled_images, cm.no_landmark_images, cm.models, cm.updated_at
FROM cities c
LEFT JOIN LATERAL (SELECT version, metrics, created_at, classes FROM models WHERE city_id = c.id
                   ORDER BY version DESC LIMIT 1) m ON true
LEFT JOIN city_marts cm ON cm.city_id = c.id
"""


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _status_row(r: tuple[Any, ...]) -> dict[str, Any]:
    # `metrics` is the row's JSON as stored (for integrators); `figures` the same, named and readable (the page).
    model = None if r[8] is None else {"version": r[8], "metrics": r[9], "figures": figures(r[9]),
                                       "created_at": _iso(r[10]), "classes": r[11]}
    mart = None if r[12] is None else {"images": r[12], "labelled_images": r[13], "no_landmark_images": r[14],
                                       "models": r[15], "updated_at": _iso(r[16])}
    return {"id": r[0], "name": r[1], "status": r[2], "requested_at": _iso(r[3]), "updated_at": _iso(r[4]),
            "sights": r[5], "images": r[6], "labelled_images": r[7], "model": model, "mart": mart}


class Warehouse(Protocol):
    """The reads the live path needs; PgWarehouse is the real one (the benchmark brings a fixed one)."""

    async def find_city(self, name: str) -> db.City | None: ...
    async def latest_model(self, city_id: int) -> db.StoredModel | None: ...
    async def model_by_id(self, model_id: int) -> db.StoredModel | None: ...


class PgWarehouse:
    def __init__(self, settings: Settings, threads: int = 4) -> None:
        self.settings = settings
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="warehouse")

    async def _run(self, fn: Callable[[psycopg2.extensions.cursor], T]) -> T:
        def work() -> T:
            with db.transaction(self.settings) as cur:
                return fn(cur)

        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def ping(self) -> None:
        await self._run(lambda cur: cur.execute("SELECT 1"))

    async def find_city(self, name: str) -> db.City | None:
        return await self._run(lambda cur: db.find_city(cur, name))

    async def request_city(self, name: str) -> tuple[db.City, bool]:
        return await self._run(lambda cur: db.request_city(cur, name))

    async def city_status(self, city_id: int | None = None) -> list[dict[str, Any]]:
        def query(cur: psycopg2.extensions.cursor) -> list[dict[str, Any]]:
            if city_id is None:
                cur.execute(_CITY_STATUS_SQL + " ORDER BY lower(c.name), c.id")
            else:
                cur.execute(_CITY_STATUS_SQL + " WHERE c.id = %s", (city_id,))
            return [_status_row(r) for r in cur.fetchall()]

        return await self._run(query)

    async def insert_image(self, image: db.NewImage, sight: str | None) -> int | None:
        def insert(cur: psycopg2.extensions.cursor) -> int | None:
            sight_id = db.ensure_sight(cur, image.city_id, sight, source="upload") if sight else None
            return db.insert_image(cur, image if sight_id is None else dataclasses.replace(image, sight_id=sight_id))

        return await self._run(insert)

    # Users and corrections (docs/corrections.md) ----------------------------------------------------------

    async def user_by_token_sha256(self, token_hash: str) -> db.User | None:
        return await self._run(lambda cur: db.user_by_token_sha256(cur, token_hash))

    async def insert_user(self, name: str, token_hash: str) -> db.User | None:
        return await self._run(lambda cur: db.insert_user(cur, name, token_hash))

    async def disown_user(self, name: str) -> db.Disowned | None:
        return await self._run(lambda cur: db.disown_user(cur, name))

    async def insert_correction(self, new: db.NewCorrection) -> db.Correction:
        return await self._run(lambda cur: db.insert_correction(cur, new))

    async def list_corrections(self, city_id: int, user_name: str | None, before: int | None,
                               limit: int) -> list[db.Correction]:
        return await self._run(lambda cur: db.list_corrections(cur, city_id, user_name, before, limit))

    async def delete_correction(self, city_id: int, correction_id: int, user: db.User | None) -> db.Undone | None:
        return await self._run(lambda cur: db.delete_correction(cur, city_id, correction_id, user))

    # The review queue (docs/corrections.md, "Review queue") ------------------------------------------------

    async def review_sampling(self, city_id: int) -> bool:
        return await self._run(lambda cur: db.review_sampling(cur, city_id))

    async def set_review_sampling(self, city_id: int, sample: bool) -> tuple[bool, Any]:
        return await self._run(lambda cur: db.set_review_sampling(cur, city_id, sample))

    async def keep_review_frame(self, new: db.NewReviewFrame, caps: db.ReviewCaps) -> int | str:
        return await self._run(lambda cur: db.keep_review_frame(cur, new, caps))

    async def list_review_frames(self, city_id: int, before: int | None,
                                 limit: int) -> tuple[list[db.ReviewFrame], int]:
        return await self._run(lambda cur: db.list_review_frames(cur, city_id, before, limit))

    async def review_frame_data(self, city_id: int, frame_id: int) -> tuple[bytes, str] | None:
        return await self._run(lambda cur: db.review_frame_data(cur, city_id, frame_id))

    async def finish_review_frame(self, city_id: int, frame_id: int) -> db.ReviewFrame | None:
        return await self._run(lambda cur: db.finish_review_frame(cur, city_id, frame_id))

    async def latest_model(self, city_id: int) -> db.StoredModel | None:
        return await self._run(lambda cur: db.latest_model(cur, city_id))

    async def browser_graph(self, model_id: int) -> tuple[bytes, bool] | None:
        return await self._run(lambda cur: db.browser_graph(cur, model_id))

    async def model_by_id(self, model_id: int) -> db.StoredModel | None:
        # Change events carry no onnx bytes (connectors/ excludes them), so a swap fetches the row by its key.
        def query(cur: psycopg2.extensions.cursor) -> db.StoredModel | None:
            cur.execute("SELECT id, city_id, version, onnx, classes, input_size, metrics FROM models WHERE id = %s",
                        (model_id,))
            r = cur.fetchone()
            return db.StoredModel(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6]) if r else None

        return await self._run(query)

