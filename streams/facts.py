"""Change events -> facts: one small, city-keyed record per change, the input of the city state.

A fact is {"kind", "id", "city_id", "lsn", "present", ...kind-specific fields}. `present` is False for a delete.
A label's fact also carries `label_kind`, the row's `kind` (sql/migrations/0006_corrections.sql): "labeller", or a
user's correction, "user-box" or "user-negative" ("kind" names the fact's own kind). Anything that cannot become a
fact raises PoisonEvent with the reason (it goes to the dead-letter topic).
"""

from __future__ import annotations

from typing import Any

from sightscan.events import PoisonEvent, parse_change

# table -> (kind, the row's fields a fact keeps)
_FIELDS = {
    "cities": ("city", ("name", "status")),
    "sights": ("sight", ("name",)),
    "images": ("image", ("sight_id",)),
    "labels": ("label", ("image_id", "sight_id")),
    "models": ("model", ("version",)),
}

LABEL_KINDS = ("labeller", "user-box", "user-negative")


def fact_from_change(table: str, value: bytes | None) -> dict[str, Any] | None:
    """A Debezium change event as a fact; None for a tombstone."""
    event = parse_change(table, value)
    if event is None:
        return None
    kind, fields = _FIELDS[table]
    row = event.row
    city_id = row.get("id") if table == "cities" else row.get("city_id")
    if not isinstance(city_id, int):
        raise PoisonEvent(f"{table} row {row.get('id')} has no integer city id")
    missing = [f for f in fields if f not in row]
    if missing:
        raise PoisonEvent(f"{table} row {row['id']} lacks {', '.join(missing)}")
    if not isinstance(event.lsn, int):
        raise PoisonEvent(f"{table} event without a source lsn")
    fact = {"kind": kind, "id": int(row["id"]), "city_id": city_id, "lsn": event.lsn, "present": event.op != "d"}
    fact.update({f: row[f] for f in fields})
    if table == "labels":
        # A label written before labels had a kind (migration 0006) is the labeller's.
        label_kind = row.get("kind") or "labeller"
        if label_kind not in LABEL_KINDS:
            raise PoisonEvent(f"labels row {row['id']} has unknown kind {label_kind!r}")
        fact["label_kind"] = label_kind
    return fact


def fact_from_training_outcome(value: dict[str, Any]) -> dict[str, Any] | None:
    """The trainer's outcome event as a fact (no lsn: it is not a warehouse change); None for progress events."""
    if not isinstance(value, dict) or not isinstance(value.get("city_id"), int):
        raise PoisonEvent("training event without an integer city_id")
    if value.get("status") == "dispatched":  # cloud mode started an instance: not an outcome yet
        return None
    if value.get("status") not in ("succeeded", "failed", "rejected"):
        raise PoisonEvent(f"training event with unknown status {value.get('status')!r}")
    return {"kind": "training_outcome", "id": 0, "city_id": value["city_id"], "lsn": None, "present": True,
            "status": value["status"], "request_id": value.get("request_id")}
