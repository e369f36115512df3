"""The labeller's own warehouse SQL: the Vision budget (labelling_costs), the per-city labelling lock, the images
still to label, and the sights and Vision landmarks that labels are matched to.

What every service shares (connections, cities, sights, image and label inserts, models) is in sightscan.db.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2.extensions

# Labelling costs --------------------------------------------------------------------------------------
#
# labelling_costs.calls_spent counts images sent to Google Vision (billed units), against
# MAX_GOOGLE_VISION_CALLS_PER_NEW_CITY. Budget is reserved, and committed, BEFORE each request: two labellers, or
# a labeller restarted after a crash, then never spend more than the cap; a crash between reserving and labelling
# wastes the reservation instead (the safe side).


@dataclass(frozen=True)
class LabellingCosts:
    city_id: int
    calls_spent: int          # images sent to Vision
    vision_requests: int      # HTTP requests that carried them
    images_over_budget: int   # images that found the budget spent


def reserve_vision_calls(cur: psycopg2.extensions.cursor, city_id: int, wanted: int, cap: int) -> int:
    """Grant min(wanted, what is left of `cap`) images of the city's budget and count one request; returns the grant.

    The ledger row is locked until the caller's transaction ends: commit right after, before calling Vision."""
    if wanted <= 0:
        return 0
    cur.execute("INSERT INTO labelling_costs (city_id) VALUES (%s) ON CONFLICT (city_id) DO NOTHING", (city_id,))
    cur.execute("SELECT calls_spent FROM labelling_costs WHERE city_id = %s FOR UPDATE", (city_id,))
    granted = max(0, min(wanted, cap - cur.fetchone()[0]))
    if granted:
        cur.execute("UPDATE labelling_costs SET calls_spent = calls_spent + %s, vision_requests = vision_requests + 1,"
                    " updated_at = now() WHERE city_id = %s", (granted, city_id))
    return granted


def refund_vision_calls(cur: psycopg2.extensions.cursor, city_id: int, images: int) -> None:
    """Give back a reservation whose request Vision refused outright (quota, unavailable): nothing was billed."""
    cur.execute("UPDATE labelling_costs SET calls_spent = GREATEST(calls_spent - %s, 0), updated_at = now()"
                " WHERE city_id = %s", (images, city_id))


def count_over_budget(cur: psycopg2.extensions.cursor, city_id: int, images: int) -> None:
    cur.execute("INSERT INTO labelling_costs (city_id, images_over_budget) VALUES (%s, %s) ON CONFLICT (city_id)"
                " DO UPDATE SET images_over_budget = labelling_costs.images_over_budget + EXCLUDED.images_over_budget,"
                " updated_at = now()", (city_id, images))


def labelling_costs(cur: psycopg2.extensions.cursor, city_id: int) -> LabellingCosts:
    cur.execute("SELECT calls_spent, vision_requests, images_over_budget FROM labelling_costs WHERE city_id = %s",
                (city_id,))
    row = cur.fetchone()
    return LabellingCosts(city_id, *(row or (0, 0, 0)))


# Labelling lock ---------------------------------------------------------------------------------------


_LABEL_LOCK_NS = 0x1ABE1  # advisory lock namespace (two-key form): one labeller per city at a time


def lock_city_labelling(cur: psycopg2.extensions.cursor, city_id: int) -> None:
    """Wait for, then hold, the city's labelling lock for the session (until unlock or the connection closes)."""
    cur.execute("SELECT pg_advisory_lock(%s, %s)", (_LABEL_LOCK_NS, city_id % 2_147_483_647))


def unlock_city_labelling(cur: psycopg2.extensions.cursor, city_id: int) -> None:
    cur.execute("SELECT pg_advisory_unlock(%s, %s)", (_LABEL_LOCK_NS, city_id % 2_147_483_647))


# Images to label --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageToLabel:
    id: int
    city_id: int
    sight_id: int | None  # the sight it was crawled (or uploaded) for; the offline weak label
    width: int
    height: int
    data: bytes


def images_to_label(cur: psycopg2.extensions.cursor, city_id: int, image_ids: list[int],
                    with_data: bool = True, lock: bool = False) -> list[ImageToLabel]:
    """The given images that exist, belong to the city and have no label yet, in id order.

    `lock` takes FOR KEY SHARE row locks, so none is deleted before the caller's labels are written."""
    cur.execute(
        "SELECT i.id, i.city_id, i.sight_id, i.width, i.height, " + ("i.data" if with_data else "''::bytea")
        + " FROM images i WHERE i.id = ANY(%s) AND i.city_id = %s"
        " AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.image_id = i.id) ORDER BY i.id"
        + (" FOR KEY SHARE OF i" if lock else ""),
        (list(image_ids), city_id),
    )
    return [ImageToLabel(r[0], r[1], r[2], r[3], r[4], bytes(r[5])) for r in cur.fetchall()]


def unlabelled_image_ids(cur: psycopg2.extensions.cursor, city_id: int) -> list[int]:
    cur.execute("SELECT i.id FROM images i WHERE i.city_id = %s"
                " AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.image_id = i.id) ORDER BY i.id", (city_id,))
    return [r[0] for r in cur.fetchall()]


# Sights and Vision landmarks --------------------------------------------------------------------------


def city_sights(cur: psycopg2.extensions.cursor, city_id: int) -> dict[int, str]:
    cur.execute("SELECT id, name FROM sights WHERE city_id = %s ORDER BY id", (city_id,))
    return dict(cur.fetchall())


def vision_landmark_sights(cur: psycopg2.extensions.cursor, city_id: int) -> dict[str, int]:
    """Vision landmark id (mid) -> the sight it was matched to in this city."""
    cur.execute("SELECT mid, sight_id FROM vision_landmarks WHERE city_id = %s", (city_id,))
    return dict(cur.fetchall())


def remember_vision_landmark(cur: psycopg2.extensions.cursor, city_id: int, mid: str, sight_id: int,
                             description: str) -> None:
    """The first sight a mid was matched to stays its sight (a later, different match does not move it)."""
    cur.execute("INSERT INTO vision_landmarks (city_id, mid, sight_id, description) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (city_id, mid) DO NOTHING", (city_id, mid, sight_id, description))
