"""What the trainer reads from the warehouse besides the shared queries of sightscan/db.py (`labelled_images`: every
label naming a sight with a box, users' boxes included): the frames users said show no sight.

Labels of kind "user-negative" are users' "no-sight" corrections (sql/migrations/0006_corrections.sql,
docs/corrections.md). A disowned user's corrections are deleted with their labels, so they are never read here.
"""

from __future__ import annotations

import psycopg2.extensions

from trainer.data import Negative


def user_negatives(cur: psycopg2.extensions.cursor, city_id: int) -> list[Negative]:
    """The frames of a city that a user said show no sight ("no-sight" corrections), once each, with the user of the
    first such correction."""
    cur.execute(
        "SELECT DISTINCT ON (i.id) i.id, i.data, c.user_id"
        " FROM labels l JOIN images i ON i.id = l.image_id LEFT JOIN corrections c ON c.id = l.correction_id"
        " WHERE l.city_id = %s AND l.kind = 'user-negative' ORDER BY i.id, l.id",
        (city_id,),
    )
    return [Negative(r[0], bytes(r[1]), "user", r[2]) for r in cur.fetchall()]
