"""What the trainer reads from the warehouse besides the shared queries of sightscan/db.py: every label with its
kind and, for a user's correction, its action and user; and the frames users said show no sight.

Labels of kind "labeller" are the labeller's (Google Vision's true boxes, or the weak crawl-query label); "user-box"
and "user-negative" are users' corrections (sql/migrations/0006_corrections.sql, docs/corrections.md). A disowned
user's corrections are deleted with their labels, so they are never read here.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2.extensions

from sightscan.db import LabelledImage
from trainer.data import Negative


@dataclass(frozen=True)
class TrainingLabel(LabelledImage):
    """A label naming a sight, with a box (sightscan.db.LabelledImage), and where it comes from."""

    kind: str = "labeller"          # labeller | user-box
    action: str | None = None       # a user box's correction: confirm, wrong-sight or box
    user_id: int | None = None      # its user (None: the operator's, or the labeller's)


def labelled_images(cur: psycopg2.extensions.cursor, city_id: int) -> list[TrainingLabel]:
    """Every label of a city that names a sight and has a box, one entry per label, in image order (weak ones span
    the image)."""
    cur.execute(
        "SELECT i.id, i.data, i.width, i.height, s.id, s.name, l.x_min, l.y_min, l.x_max, l.y_max, l.weak, l.kind,"
        " c.action, c.user_id"
        " FROM labels l JOIN images i ON i.id = l.image_id JOIN sights s ON s.id = l.sight_id"
        " LEFT JOIN corrections c ON c.id = l.correction_id"
        " WHERE l.city_id = %s AND l.x_min IS NOT NULL ORDER BY i.id, l.id",
        (city_id,),
    )
    return [TrainingLabel(r[0], bytes(r[1]), r[2], r[3], r[4], r[5], (r[6], r[7], r[8], r[9]), r[10], r[11], r[12],
                          r[13]) for r in cur.fetchall()]


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
