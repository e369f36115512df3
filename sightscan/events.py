"""Change events: Debezium's records of the warehouse's tables, parsed (their topics: sightscan/topics.py).

Change events are Debezium's JSON envelope with converter schemas disabled (connectors/), so a message value is
    {"before": {...} | null, "after": {...} | null, "op": "c"|"u"|"d"|"r", "ts_ms": ...,
     "source": {"lsn": ..., "txId": ..., "table": ..., "ts_ms": ...}}
and its key is the row's primary key, {"id": ...}. Image and model bytes are never in an event.
jsonb columns (models.classes, models.metrics) arrive as JSON text; `ChangeEvent.row` decodes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

JSONB_COLUMNS = {"models": ("classes", "metrics")}
OPS = {"c": "create", "u": "update", "d": "delete", "r": "read"}  # r = snapshot read


class PoisonEvent(ValueError):
    """An event that cannot be processed; the message is the reason, for the dead-letter topic."""


@dataclass(frozen=True)
class ChangeEvent:
    table: str
    op: str                       # c, u, d, r
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    lsn: int | None               # position in the WAL: with `table` and the key, an event's identity
    tx_id: int | None
    ts_ms: int | None             # when the row changed in PostgreSQL (source.ts_ms)

    @property
    def row(self) -> dict[str, Any]:
        """The row as it is now (after), or as it was before a delete."""
        row = dict(self.after if self.after is not None else self.before or {})
        for col in JSONB_COLUMNS.get(self.table, ()):
            if isinstance(row.get(col), str):
                row[col] = json.loads(row[col])
        return row

    @property
    def key(self) -> int:
        return int(self.row["id"])

    @property
    def identity(self) -> tuple[str, int | None, int, str]:
        """Unique per change: a redelivered event has the same identity."""
        return (self.table, self.lsn, self.key, self.op)


def parse_change(table: str, value: bytes | str | dict[str, Any] | None) -> ChangeEvent | None:
    """Decode a Debezium change event. None for tombstones; PoisonEvent (with the reason) for anything malformed."""
    if value is None:
        return None
    if isinstance(value, bytes | str):
        try:
            value = orjson.loads(value)  # several times faster than json's, on the stream worker's hot path
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:  # orjson's error is a json.JSONDecodeError
            raise PoisonEvent(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise PoisonEvent(f"expected a JSON object, got {type(value).__name__}")
    if "payload" in value and "op" not in value:  # converter with schemas enabled
        value = value["payload"] or {}
    op = value.get("op")
    if op not in OPS:
        raise PoisonEvent(f"missing or unknown op {op!r}")
    before, after = value.get("before"), value.get("after")
    if (after if op != "d" else before) is None:
        raise PoisonEvent(f"op {op!r} without the row it changes")
    for row in (before, after):
        if row is not None and (not isinstance(row, dict) or "id" not in row):
            raise PoisonEvent("row without an id")
    source = value.get("source") or {}
    return ChangeEvent(table, op, before, after, source.get("lsn"), source.get("txId"),
                       source.get("ts_ms", value.get("ts_ms")))
