"""One city's state in the stream: what exists (with the WAL position of its last change), the counts derived
from it, and the commands that are due. Pure logic; the Faust agent stores it as one table value per city.

Why one value per city: a city's membership, counts and emitted commands then change together in one changelog
record, so a crash can never leave counts that disagree with the dedupe positions. Deduplication is by source
LSN per entity: a redelivered change (same or older LSN) changes nothing, so counts stay right under
at-least-once delivery, worker crashes and rebalances.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    min_labelled_images: int          # MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING
    min_images_per_label: int         # MIN_IMAGE_NUMBER_PER_LABEL
    retrain_growth_fraction: float    # RETRAIN_GROWTH_FRACTION
    epochs: int                       # MTS_EPOCHS
    labelling_batch_size: int = 16    # images per labelling request (Vision's batch limit)
    max_sights_per_city: int = 20
    max_images_per_sight: int = 100


_COLLECTION = {"image": "images", "label": "labels", "model": "models", "sight": "sights"}


def new_state(city_id: int) -> dict[str, Any]:
    return {"city_id": city_id, "city": None, "images": {}, "labels": {}, "models": {}, "sights": {},
            "max_lsn": 0, "pending": [],
            "cmd": {"crawl": False, "label_seq": 0, "outstanding": {}, "train_seq": 0,
                    "train_outstanding": False, "trained_on": 0}}


def copy_state(state: dict[str, Any]) -> dict[str, Any]:
    """A copy that apply_fact and due_commands may change without touching `state`: they replace records (never
    change one in place), so copying the containers is enough, and far cheaper than a deep copy of every record."""
    cmd = state["cmd"]
    return {**state, **{k: dict(state[k]) for k in _COLLECTION.values()}, "pending": list(state.get("pending", [])),
            "cmd": {**cmd, "outstanding": dict(cmd["outstanding"])}}


def apply_fact(state: dict[str, Any], fact: dict[str, Any]) -> bool:
    """Apply one fact; returns False when it is a duplicate (already applied) and nothing changed."""
    kind, lsn = fact["kind"], fact["lsn"]
    cmd = state["cmd"]
    if kind == "training_outcome":
        if not cmd["train_outstanding"]:
            return False
        cmd["train_outstanding"] = False
        if fact["status"] == "failed":  # wait for more data before trying again, or a failing city loops forever
            cmd["trained_on"] = labelled_images(state)
        return True
    if kind == "city":
        current = state["city"]
        if current is not None and lsn <= current["lsn"]:
            return False
        state["city"] = {"lsn": lsn, "present": fact["present"], "name": fact["name"], "status": fact["status"]}
    else:
        records = state[_COLLECTION[kind]]
        key = str(fact["id"])
        current = records.get(key)
        if current is not None and lsn <= current[0]:
            return False
        if kind == "image":
            records[key] = [lsn, fact["present"], fact["sight_id"]]
            if not fact["present"]:
                cmd["outstanding"].pop(key, None)
        elif kind == "label":
            records[key] = [lsn, fact["present"], fact["image_id"], fact["sight_id"]]
            cmd["outstanding"].pop(str(fact["image_id"]), None)  # any outcome for an image ends its request
        elif kind == "model":
            new_model = fact["present"] and (current is None or not current[1])
            records[key] = [lsn, fact["present"], fact["version"]]
            if new_model and cmd["train_outstanding"]:
                # Our request is answered; growth counts from the data it was asked for (set when it was sent),
                # not from whatever arrived meanwhile: change topics are not ordered against each other.
                cmd["train_outstanding"] = False
            elif new_model:  # a model nobody here asked for (e.g. `sightscan train`): grow from now
                cmd["trained_on"] = max(cmd["trained_on"], labelled_images(state))
        else:
            records[key] = [lsn, fact["present"], fact["name"]]
    state["max_lsn"] = max(state["max_lsn"], lsn)
    return True


# Counts (the data marts) ------------------------------------------------------------------------------


def _present(records: dict[str, list]) -> dict[str, list]:
    return {k: v for k, v in records.items() if v[1]}


def _label_outcomes(state: dict[str, Any], images: dict[str, list] | None = None) -> dict[str, set]:
    """image id -> the sights its present labels name (None = no landmark), for present images only."""
    images = _present(state["images"]) if images is None else images
    outcomes: dict[str, set] = {}
    for _, _, image_id, sight_id in _present(state["labels"]).values():
        if str(image_id) in images:
            outcomes.setdefault(str(image_id), set()).add(sight_id)
    return outcomes


def labelled_images(state: dict[str, Any]) -> int:
    return sum(1 for sights in _label_outcomes(state).values() if sights - {None})


def counts(state: dict[str, Any], images: dict[str, list] | None = None,
           outcomes: dict[str, set] | None = None) -> dict[str, Any]:
    """The marts of one city; `images`/`outcomes` may be passed when the caller has them (one scan per batch)."""
    images = _present(state["images"]) if images is None else images
    outcomes = _label_outcomes(state, images) if outcomes is None else outcomes
    per_sight: dict[int, int] = {int(s): 0 for s in _present(state["sights"])}
    for sights in outcomes.values():
        for sight in sights - {None}:
            per_sight[sight] = per_sight.get(sight, 0) + 1
    return {
        "images": len(images),
        "labelled_images": sum(1 for s in outcomes.values() if s - {None}),
        "no_landmark_images": sum(1 for s in outcomes.values() if s == {None}),
        "models": len(_present(state["models"])),
        "per_sight": per_sight,
    }


# Commands ---------------------------------------------------------------------------------------------


def due_commands(state: dict[str, Any], limits: Thresholds) -> list[tuple[str, dict[str, Any]]]:
    """The commands this state calls for that were not emitted yet; marks them emitted in the state.

    Request ids are deterministic (city + sequence), so a replay after a crash re-derives the same ids."""
    city = state["city"]
    if city is None or not city["present"]:
        return []
    cmd, city_id, name = state["cmd"], state["city_id"], city["name"]
    now_ms = int(time.time() * 1000)
    out: list[tuple[str, dict[str, Any]]] = []

    if not cmd["crawl"] and city["status"] == "requested":
        cmd["crawl"] = True
        out.append(("crawl", {"request_id": f"crawl-{city_id}", "city_id": city_id, "city": name,
                              "max_sights_per_city": limits.max_sights_per_city,
                              "max_images_per_sight": limits.max_images_per_sight, "ts_ms": now_ms}))

    images = _present(state["images"])
    outcomes = _label_outcomes(state, images)
    waiting = sorted(int(k) for k in images if k not in outcomes and k not in cmd["outstanding"])
    for start in range(0, len(waiting), limits.labelling_batch_size):
        batch = waiting[start:start + limits.labelling_batch_size]
        cmd["label_seq"] += 1
        request_id = f"label-{city_id}-{cmd['label_seq']}"
        cmd["outstanding"].update({str(i): request_id for i in batch})
        out.append(("labelling", {"request_id": request_id, "city_id": city_id, "city": name, "image_ids": batch,
                                  "ts_ms": now_ms}))

    c = counts(state, images, outcomes)
    names = {int(k): v[2] for k, v in _present(state["sights"]).items()}
    classes = sorted(names[s] for s, n in c["per_sight"].items() if n >= limits.min_images_per_label and s in names)
    ready = c["labelled_images"] >= limits.min_labelled_images and len(classes) >= 2
    grown = c["labelled_images"] >= cmd["trained_on"] * (1 + limits.retrain_growth_fraction)
    first = cmd["train_seq"] == 0 and not _present(state["models"]) and cmd["trained_on"] == 0
    if ready and not cmd["train_outstanding"] and (first or (cmd["trained_on"] > 0 and grown)):
        cmd["train_seq"] += 1
        cmd["train_outstanding"] = True
        cmd["trained_on"] = c["labelled_images"]
        out.append(("training", {"request_id": f"train-{city_id}-{cmd['train_seq']}", "city_id": city_id,
                                 "city": name, "epochs": limits.epochs, "classes": classes,
                                 "labelled_images": c["labelled_images"],
                                 "reason": "threshold" if first else "growth", "ts_ms": now_ms}))
    return out
