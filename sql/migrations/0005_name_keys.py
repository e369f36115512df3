"""Cities and sights get a `name_key` column, computed by sightscan.names.name_key, in place of the SQL function
name_key(text) that only trimmed blanks and lower-cased (it let NFC/NFD forms, zero-width characters, full-width
letters and control whitespace make look-alike duplicates).

Existing rows are re-keyed here. Look-alike duplicates the old key let in would now collide: the oldest row
(lowest id) keeps the plain key and each later one gets `<key>#<id>`, so it stays in the warehouse, reachable by
id, while its name resolves to the oldest. A row whose name has nothing printable (or is too long to key) gets
`#<id>`. Should an older row's own name already key to that, `#<id>` is added again until the key is free. Each
such row is logged as a warning. Display names (`name`) are left as they are; new rows store clean_name().
"""

from __future__ import annotations

import logging
from typing import Any

from sightscan.names import BadName, name_key

log = logging.getLogger(__name__)


def _keys(rows: list[tuple[int, Any, str]], table: str) -> list[tuple[str, int]]:
    """(key, id) for rows of (id, scope, name) in id order; scope is what the key must be unique within."""
    taken: set[tuple[Any, str]] = set()
    out = []
    for row_id, scope, name in rows:
        try:
            key = name_key(name)
        except BadName:
            key = ""
        if not key or (scope, key) in taken:
            log.warning("name re-keyed apart", extra={"table": table, "id": row_id, "old_name": name,
                                                      "reason": "nothing printable" if not key else "look-alike"})
            key = f"{key}#{row_id}"
            while (scope, key) in taken:  # an older row's own name keys to `<key>#<id>` (e.g. "Lisbon#3")
                key = f"{key}#{row_id}"
        taken.add((scope, key))
        out.append((key, row_id))
    return out


def apply(cur: Any) -> None:
    cur.execute("ALTER TABLE cities ADD COLUMN name_key text")
    cur.execute("ALTER TABLE sights ADD COLUMN name_key text")
    cur.execute("SELECT id, 0, name FROM cities ORDER BY id")
    cur.executemany("UPDATE cities SET name_key = %s WHERE id = %s", _keys(cur.fetchall(), "cities"))
    cur.execute("SELECT id, city_id, name FROM sights ORDER BY id")
    cur.executemany("UPDATE sights SET name_key = %s WHERE id = %s", _keys(cur.fetchall(), "sights"))
    cur.execute("""
        ALTER TABLE cities ALTER COLUMN name_key SET NOT NULL;
        ALTER TABLE sights ALTER COLUMN name_key SET NOT NULL;
        DROP INDEX cities_name_key;
        DROP INDEX sights_name_key;
        CREATE UNIQUE INDEX cities_name_key ON cities (name_key);
        CREATE UNIQUE INDEX sights_name_key ON sights (city_id, name_key);
        DROP FUNCTION name_key(text);
    """)
