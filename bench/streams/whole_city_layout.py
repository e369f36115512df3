"""The city state as the stream worker kept it before issue 13: one JSON value per city holding every image and
label, read, recounted and written whole for each batch that touches the city. Kept here only as the baseline
of bench/streams/state_cost.py (the same run measures both layouts); the worker uses streams/state.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from streams.state import CityRecord, LabelRecord, ModelRecord, SightRecord, Thresholds

Command = tuple[str, dict[str, Any]]  # (kind, the command's JSON object)


# Records: one per warehouse row, as of its last change (`lsn`); `present` is False once the row is deleted.


@dataclass(slots=True)
class ImageRecord:
    lsn: int
    present: bool
    sight_id: int | None


@dataclass(slots=True)
class CommandProgress:
    """What the city's commands have asked for so far, so that each is asked once."""
    crawl: bool = False                 # the crawl was requested
    label_seq: int = 0                  # labelling requests sent
    outstanding: dict[str, str] = field(default_factory=dict)  # image id -> the labelling request it is in
    train_seq: int = 0                  # training requests sent
    train_outstanding: bool = False     # a training request awaits its outcome
    trained_on: int = 0                 # labelled images the last training request was asked for


_RECORD = {"image": ImageRecord, "label": LabelRecord, "model": ModelRecord, "sight": SightRecord}
_COLLECTION = {"image": "images", "label": "labels", "model": "models", "sight": "sights"}


@dataclass(slots=True)
class CityState:
    city_id: int
    city: CityRecord | None = None
    images: dict[str, ImageRecord] = field(default_factory=dict)  # keyed by row id as text (JSON object keys)
    labels: dict[str, LabelRecord] = field(default_factory=dict)
    models: dict[str, ModelRecord] = field(default_factory=dict)
    sights: dict[str, SightRecord] = field(default_factory=dict)
    max_lsn: int = 0
    pending: list[Command] = field(default_factory=list)  # the outbox: due, stored, not yet sent
    cmd: CommandProgress = field(default_factory=CommandProgress)

    # Stored form --------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        def rows(records: dict[str, Any]) -> dict[str, list[Any]]:
            return {k: [getattr(r, f) for f in r.__slots__] for k, r in records.items()}

        c = self.city
        return {"city_id": self.city_id,
                "city": None if c is None else {"lsn": c.lsn, "present": c.present, "name": c.name,
                                                "status": c.status},
                **{name: rows(getattr(self, name)) for name in _COLLECTION.values()},
                "max_lsn": self.max_lsn, "pending": [[kind, command] for kind, command in self.pending],
                "cmd": {"crawl": self.cmd.crawl, "label_seq": self.cmd.label_seq,
                        "outstanding": dict(self.cmd.outstanding), "train_seq": self.cmd.train_seq,
                        "train_outstanding": self.cmd.train_outstanding, "trained_on": self.cmd.trained_on}}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CityState:
        """A fresh object: changing it never changes the stored value it came from."""
        c, cmd = raw.get("city"), raw["cmd"]
        return cls(
            city_id=raw["city_id"],
            city=None if c is None else CityRecord(c["lsn"], c["present"], c["name"], c["status"]),
            **{name: {k: _RECORD[kind](*v) for k, v in raw[name].items()} for kind, name in _COLLECTION.items()},
            max_lsn=raw["max_lsn"], pending=[(kind, command) for kind, command in raw.get("pending", [])],
            cmd=CommandProgress(cmd["crawl"], cmd["label_seq"], dict(cmd["outstanding"]), cmd["train_seq"],
                                cmd["train_outstanding"], cmd["trained_on"]))

    # Facts ----------------------------------------------------------------------------------------------

    def apply(self, fact: dict[str, Any]) -> bool:
        """Apply one fact (streams/facts.py); returns False when it is a duplicate (already applied)."""
        kind, lsn, cmd = fact["kind"], fact["lsn"], self.cmd
        if kind == "training_outcome":
            if not cmd.train_outstanding:
                return False
            cmd.train_outstanding = False
            if fact["status"] == "failed":  # wait for more data before trying again, or a failing city loops forever
                cmd.trained_on = self.labelled_images()
            return True
        if kind == "city":
            if self.city is not None and lsn <= self.city.lsn:
                return False
            self.city = CityRecord(lsn, fact["present"], fact["name"], fact["status"])
        else:
            records: dict[str, Any] = getattr(self, _COLLECTION[kind])
            key = str(fact["id"])
            current = records.get(key)
            if current is not None and lsn <= current.lsn:
                return False
            if kind == "image":
                records[key] = ImageRecord(lsn, fact["present"], fact["sight_id"])
                if not fact["present"]:
                    cmd.outstanding.pop(key, None)
            elif kind == "label":
                records[key] = LabelRecord(lsn, fact["present"], fact["image_id"], fact["sight_id"])
                cmd.outstanding.pop(str(fact["image_id"]), None)  # any outcome for an image ends its request
            elif kind == "model":
                new_model = fact["present"] and (current is None or not current.present)
                records[key] = ModelRecord(lsn, fact["present"], fact["version"])
                if new_model and cmd.train_outstanding:
                    # Our request is answered; growth counts from the data it was asked for (set when it was
                    # sent), not from whatever arrived meanwhile: change topics are not ordered against each other.
                    cmd.train_outstanding = False
                elif new_model:  # a model nobody here asked for (e.g. `sightscan train`): grow from now
                    cmd.trained_on = max(cmd.trained_on, self.labelled_images())
            else:
                records[key] = SightRecord(lsn, fact["present"], fact["name"])
        self.max_lsn = max(self.max_lsn, lsn)
        return True

    # Counts (the data marts) ----------------------------------------------------------------------------

    def present_images(self) -> dict[str, ImageRecord]:
        return {k: r for k, r in self.images.items() if r.present}

    def label_outcomes(self, images: dict[str, ImageRecord] | None = None) -> dict[str, set[int | None]]:
        """image id -> the sights its present labels name (None = no landmark), for present images only."""
        images = self.present_images() if images is None else images
        outcomes: dict[str, set[int | None]] = {}
        for label in self.labels.values():
            if label.present and str(label.image_id) in images:
                outcomes.setdefault(str(label.image_id), set()).add(label.sight_id)
        return outcomes

    def labelled_images(self) -> int:
        return sum(1 for sights in self.label_outcomes().values() if sights - {None})

    def counts(self, images: dict[str, ImageRecord] | None = None,
               outcomes: dict[str, set[int | None]] | None = None) -> dict[str, Any]:
        """The city's marts; `images`/`outcomes` may be passed when the caller has them (one scan per batch)."""
        images = self.present_images() if images is None else images
        outcomes = self.label_outcomes(images) if outcomes is None else outcomes
        per_sight: dict[int, int] = {int(k): 0 for k, s in self.sights.items() if s.present}
        for sights in outcomes.values():
            for sight in sights - {None}:
                per_sight[sight] = per_sight.get(sight, 0) + 1
        return {
            "images": len(images),
            "labelled_images": sum(1 for s in outcomes.values() if s - {None}),
            "no_landmark_images": sum(1 for s in outcomes.values() if s == {None}),
            "models": sum(1 for m in self.models.values() if m.present),
            "per_sight": per_sight,
        }

    # Commands -------------------------------------------------------------------------------------------

    def due_commands(self, limits: Thresholds) -> list[Command]:
        """The commands this state calls for that were not emitted yet; marks them emitted.

        Request ids are deterministic (city + sequence), so a replay after a crash re-derives the same ids."""
        city = self.city
        if city is None or not city.present:
            return []
        cmd, city_id, name = self.cmd, self.city_id, city.name
        now_ms = int(time.time() * 1000)
        out: list[Command] = []

        if not cmd.crawl and city.status == "requested":
            cmd.crawl = True
            out.append(("crawl", {"request_id": f"crawl-{city_id}", "city_id": city_id, "city": name,
                                  "max_sights_per_city": limits.max_sights_per_city,
                                  "max_images_per_sight": limits.max_images_per_sight, "ts_ms": now_ms}))

        images = self.present_images()
        outcomes = self.label_outcomes(images)
        waiting = sorted(int(k) for k in images if k not in outcomes and k not in cmd.outstanding)
        for start in range(0, len(waiting), limits.labelling_batch_size):
            batch = waiting[start:start + limits.labelling_batch_size]
            cmd.label_seq += 1
            request_id = f"label-{city_id}-{cmd.label_seq}"
            cmd.outstanding.update({str(i): request_id for i in batch})
            out.append(("labelling", {"request_id": request_id, "city_id": city_id, "city": name,
                                      "image_ids": batch, "ts_ms": now_ms}))

        c = self.counts(images, outcomes)
        names = {int(k): s.name for k, s in self.sights.items() if s.present}
        classes = sorted(names[s] for s, n in c["per_sight"].items()
                         if n >= limits.min_images_per_label and s in names)
        ready = c["labelled_images"] >= limits.min_labelled_images and len(classes) >= 2
        grown = c["labelled_images"] >= cmd.trained_on * (1 + limits.retrain_growth_fraction)
        first = cmd.train_seq == 0 and not any(m.present for m in self.models.values()) and cmd.trained_on == 0
        if ready and not cmd.train_outstanding and (first or (cmd.trained_on > 0 and grown)):
            cmd.train_seq += 1
            cmd.train_outstanding = True
            cmd.trained_on = c["labelled_images"]
            out.append(("training", {"request_id": f"train-{city_id}-{cmd.train_seq}", "city_id": city_id,
                                     "city": name, "epochs": limits.epochs, "classes": classes,
                                     "labelled_images": c["labelled_images"],
                                     "reason": "threshold" if first else "growth", "ts_ms": now_ms}))
        return out
