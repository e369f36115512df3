"""Writes the city state's counts to the warehouse's data-mart tables with idempotent upserts.

Upserts set absolute values (never add deltas) and only replace a row reflecting an older WAL position, so a
replay or a late writer cannot double-count or roll a mart back. Deleted cities and sights are skipped: their
mart rows went with them (ON DELETE CASCADE)."""

from __future__ import annotations

from typing import Any

import psycopg2.extensions

_CITY = """
INSERT INTO city_marts (city_id, images, labelled_images, no_landmark_images, models, source_lsn, updated_at)
SELECT %(city_id)s, %(images)s, %(labelled_images)s, %(no_landmark_images)s, %(models)s, %(lsn)s, now()
WHERE EXISTS (SELECT 1 FROM cities WHERE id = %(city_id)s)
ON CONFLICT (city_id) DO UPDATE SET images = EXCLUDED.images, labelled_images = EXCLUDED.labelled_images,
    no_landmark_images = EXCLUDED.no_landmark_images, models = EXCLUDED.models, source_lsn = EXCLUDED.source_lsn,
    updated_at = now()
WHERE city_marts.source_lsn <= EXCLUDED.source_lsn
"""

_SIGHT = """
INSERT INTO sight_marts (sight_id, city_id, labelled_images, source_lsn, updated_at)
SELECT %(sight_id)s, %(city_id)s, %(labelled)s, %(lsn)s, now()
WHERE EXISTS (SELECT 1 FROM sights WHERE id = %(sight_id)s)
ON CONFLICT (sight_id) DO UPDATE SET labelled_images = EXCLUDED.labelled_images, source_lsn = EXCLUDED.source_lsn,
    updated_at = now()
WHERE sight_marts.source_lsn <= EXCLUDED.source_lsn
"""


def write_marts(conn: psycopg2.extensions.connection, rows: list[tuple[int, int, dict[str, Any]]]) -> None:
    """rows: (city_id, lsn, counts) for every city a batch touched; one transaction for the batch."""
    with conn, conn.cursor() as cur:
        for city_id, lsn, c in rows:
            cur.execute(_CITY, {"city_id": city_id, "lsn": lsn, **{k: v for k, v in c.items() if k != "per_sight"}})
            for sight_id, labelled in c["per_sight"].items():
                cur.execute(_SIGHT, {"sight_id": sight_id, "city_id": city_id, "labelled": labelled, "lsn": lsn})
