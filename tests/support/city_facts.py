"""City 1's facts as the stream worker hands them to streams.state.CityState, and the table it keeps them in: the
builders the state tests share."""

from __future__ import annotations

import json
from typing import Any

from streams.state import CityState, Summary


def city(lsn: int = 1, status: str = "requested") -> dict[str, Any]:
    return {"kind": "city", "id": 1, "city_id": 1, "lsn": lsn, "present": True, "name": "X", "status": status}


def image(i: int, lsn: int, present: bool = True, sight: int | None = 7) -> dict[str, Any]:
    return {"kind": "image", "id": i, "city_id": 1, "lsn": lsn, "present": present, "sight_id": sight}


def label(i: int, lsn: int, image_id: int, sight: int | None, present: bool = True,
          kind: str = "labeller") -> dict[str, Any]:
    return {"kind": "label", "id": i, "city_id": 1, "lsn": lsn, "present": present, "image_id": image_id,
            "sight_id": sight, "label_kind": kind}


def sight(i: int, lsn: int, name: str) -> dict[str, Any]:
    return {"kind": "sight", "id": i, "city_id": 1, "lsn": lsn, "present": True, "name": name}


def model(i: int, lsn: int) -> dict[str, Any]:
    return {"kind": "model", "id": i, "city_id": 1, "lsn": lsn, "present": True, "version": i}


def outcome(status: str, request_id: str) -> dict[str, Any]:
    return {"kind": "training_outcome", "id": 0, "city_id": 1, "lsn": None, "present": True, "status": status,
            "request_id": request_id}


class Table:
    """What the worker's table does for a city: stores its records as JSON and hands them back."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def store(self, state: CityState, crash_after: int | None = None) -> None:
        """The state's records, in the order the worker sends them; with `crash_after`, only that many of them (a
        worker killed while its changelog records were on their way: Kafka keeps a prefix of one partition's)."""
        for suffix, value in state.records()[:crash_after]:
            self.data[f"1/{suffix}" if suffix else "1"] = json.loads(json.dumps(value))

    def load(self) -> CityState:
        summary = self.data.get("1")
        return CityState.load(1, None if summary is None else Summary.from_json(summary),
                              lambda suffix: self.data.get(f"1/{suffix}"))
