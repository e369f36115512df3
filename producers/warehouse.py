"""The crawler's warehouse writes: the city's status, its sights, and the images (one transaction each).

Calls are synchronous on one psycopg2 connection, from scrapy's reactor thread: each is a short local query,
and keeping them on one thread keeps the per-sight counts exact without locks.
"""

from __future__ import annotations

import psycopg2.extensions

from sightscan import db
from sightscan.config import Settings

# cities.status values (sql/migrations/0001_warehouse.sql). A crawl moves a city out of 'requested' (or 'failed',
# when asked again) into 'crawling', then on to 'labelling' when the city has images (the stream agents send
# labelling requests for them) or to 'failed' when there is nothing to learn from. Later statuses ('labelling',
# 'training', 'live') are left as they are: a re-crawl of a live city must not take it offline.
STARTABLE = ("requested", "failed")


class Warehouse:
    def __init__(self, settings: Settings) -> None:
        self.conn: psycopg2.extensions.connection = db.connect(settings)

    def close(self) -> None:
        self.conn.close()

    def city(self, ref: str | int, create: bool = False) -> tuple[db.City | None, bool]:
        """The city `ref` names (sightscan.db.resolve_city); with `create`, a name no city has is requested. A ref
        that reads as an id is never requested as a name: an unknown id stays unknown."""
        with self.conn, self.conn.cursor() as cur:
            found = db.resolve_city(cur, ref)
            if found is None and create and isinstance(ref, str) and db.city_id_of(ref) is None:
                return db.request_city(cur, ref)
            return found, False

    def start(self, city_id: int) -> str:
        with self.conn, self.conn.cursor() as cur:
            cur.execute("UPDATE cities SET status = 'crawling', updated_at = now() WHERE id = %s AND status = ANY(%s)",
                        (city_id, list(STARTABLE)))
            cur.execute("SELECT status FROM cities WHERE id = %s", (city_id,))
            return cur.fetchone()[0]

    def finish(self, city_id: int) -> str:
        """Move a crawling city on; returns its status now."""
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                "UPDATE cities SET updated_at = now(), status = CASE WHEN EXISTS"
                " (SELECT 1 FROM images WHERE city_id = %s) THEN 'labelling' ELSE 'failed' END"
                " WHERE id = %s AND status = 'crawling'", (city_id, city_id))
            cur.execute("SELECT status FROM cities WHERE id = %s", (city_id,))
            return cur.fetchone()[0]

    def has_images(self, city_id: int) -> bool:
        with self.conn, self.conn.cursor() as cur:
            cur.execute("SELECT EXISTS (SELECT 1 FROM images WHERE city_id = %s)", (city_id,))
            return cur.fetchone()[0]

    def sight(self, city_id: int, name: str, source: str) -> tuple[int, int]:
        """(sight id, images it already has); the sight is created if new."""
        with self.conn, self.conn.cursor() as cur:
            sight_id = db.ensure_sight(cur, city_id, name, source)
            cur.execute("SELECT count(*) FROM images WHERE sight_id = %s", (sight_id,))
            return sight_id, cur.fetchone()[0]

    def store(self, image: db.NewImage) -> int | None:
        """The new image's id, or None when the city already has these bytes (sha256)."""
        with self.conn, self.conn.cursor() as cur:
            return db.insert_image(cur, image)
