"""The Vision budget of a city: MAX_GOOGLE_VISION_CALLS_PER_NEW_CITY images, kept in the warehouse (labelling_costs).

Unit: one image sent to Vision (Google bills per image and feature; a batch of 16 images is 16 units, not one).
The original system counted requests; with batches of 16 that would let a city cost 16 times the cap.

Each reservation is its own committed transaction, made BEFORE the request it pays for, under a row lock:
- two labellers (threads, processes, hosts) on one city are granted disjoint parts of what is left, never more;
- a restart reads the spent count from the warehouse, so the budget does not reset;
- a crash after reserving and before labelling wastes that reservation (spent, nothing labelled): the cap errs on
  the side of spending less, never more.
A request Vision refused outright (429 quota, 503) is refunded, since Google does not bill it.
"""

from __future__ import annotations

import logging

import psycopg2.extensions

from consumers import warehouse

log = logging.getLogger(__name__)


class Budget:
    def __init__(self, cap: int) -> None:
        self.cap = cap

    def reserve(self, conn: psycopg2.extensions.connection, city_id: int, wanted: int) -> int:
        """Images of `wanted` that may be sent now (0..wanted), committed as spent before returning."""
        with conn, conn.cursor() as cur:
            granted = warehouse.reserve_vision_calls(cur, city_id, wanted, self.cap)
        if granted < wanted:
            log.warning("Vision budget of the city is spent", extra={
                "city_id": city_id, "wanted": wanted, "granted": granted, "cap": self.cap})
        return granted

    def refund(self, conn: psycopg2.extensions.connection, city_id: int, images: int) -> None:
        with conn, conn.cursor() as cur:
            warehouse.refund_vision_calls(cur, city_id, images)
