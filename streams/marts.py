"""Writes the city state's counts to the warehouse's data-mart tables with idempotent upserts.

Upserts set absolute values (never add deltas) and only replace a row reflecting an older WAL position, so a
replay or a late writer cannot double-count or roll a mart back. Deleted cities and sights are skipped: their
mart rows went with them (ON DELETE CASCADE)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import psycopg2.extensions

from sightscan import db
from sightscan.config import Settings

_CITY = """
INSERT INTO city_marts (city_id, images, labelled_images, no_landmark_images, models, user_boxes, user_negatives,
                        source_lsn, updated_at)
SELECT %(city_id)s, %(images)s, %(labelled_images)s, %(no_landmark_images)s, %(models)s, %(user_boxes)s,
       %(user_negatives)s, %(lsn)s, now()
WHERE EXISTS (SELECT 1 FROM cities WHERE id = %(city_id)s)
ON CONFLICT (city_id) DO UPDATE SET images = EXCLUDED.images, labelled_images = EXCLUDED.labelled_images,
    no_landmark_images = EXCLUDED.no_landmark_images, models = EXCLUDED.models, user_boxes = EXCLUDED.user_boxes,
    user_negatives = EXCLUDED.user_negatives, source_lsn = EXCLUDED.source_lsn, updated_at = now()
WHERE city_marts.source_lsn <= EXCLUDED.source_lsn
"""

_SIGHT = """
INSERT INTO sight_marts (sight_id, city_id, labelled_images, user_boxes, source_lsn, updated_at)
SELECT %(sight_id)s, %(city_id)s, %(labelled)s, %(user_boxes)s, %(lsn)s, now()
WHERE EXISTS (SELECT 1 FROM sights WHERE id = %(sight_id)s)
ON CONFLICT (sight_id) DO UPDATE SET labelled_images = EXCLUDED.labelled_images, user_boxes = EXCLUDED.user_boxes,
    source_lsn = EXCLUDED.source_lsn, updated_at = now()
WHERE sight_marts.source_lsn <= EXCLUDED.source_lsn
"""


def write_marts(conn: psycopg2.extensions.connection, rows: list[tuple[int, int, dict[str, Any]]]) -> None:
    """rows: (city_id, lsn, counts) for every city a batch touched; one transaction for the batch. counts is
    CityState.counts(): the city's figures, and per sight its labelled images and its user boxes."""
    with conn, conn.cursor() as cur:
        for city_id, lsn, c in rows:
            cur.execute(_CITY, {"city_id": city_id, "lsn": lsn,
                                **{k: v for k, v in c.items() if not isinstance(v, dict)}})
            user_boxes = c.get("per_sight_user_boxes", {})
            for sight_id, labelled in c["per_sight"].items():
                cur.execute(_SIGHT, {"sight_id": sight_id, "city_id": city_id, "labelled": labelled,
                                     "user_boxes": user_boxes.get(sight_id, 0), "lsn": lsn})


class MartsWriter:
    """The stream worker's one PostgreSQL connection, used from one thread so the event loop never waits on it;
    replaced after an error (the caller retries)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="streams-pg")
        self._conn: psycopg2.extensions.connection | None = None

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.settings)
        return self._conn

    async def _run(self, fn: Any, *args: Any) -> Any:
        def guarded() -> Any:
            try:
                return fn(self._connection(), *args)
            except Exception:
                if self._conn is not None:
                    self._conn.close()  # a fresh connection for the retry
                raise

        return await asyncio.get_running_loop().run_in_executor(self._pool, guarded)

    async def write(self, rows: list[tuple[int, int, dict[str, Any]]]) -> None:
        await self._run(write_marts, rows)

    async def city_exists(self, city_id: int) -> bool:
        return await self._run(_city_exists, city_id)


def _city_exists(conn: psycopg2.extensions.connection, city_id: int) -> bool:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM cities WHERE id = %s", (city_id,))
        return cur.fetchone() is not None
