"""One training of one city: warehouse export -> split -> train -> held-out evaluation -> ONNX -> model row."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sightscan import db
from sightscan.config import Settings
from trainer import warehouse
from trainer.data import Dataset, NotEnoughData, Previous, check_trainable, from_warehouse, training_split
from trainer.export import check_onnx, export_onnx, probe_images
from trainer.guard import judge
from trainer.quantize import decide
from trainer.settings import TrainerSettings, load
from trainer.train import TrainResult, fit

log = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class Outcome:
    city_id: int
    city: str
    version: int
    model_id: int
    classes: list[str]
    metrics: dict[str, Any]


def resolve_city(settings: Settings, city: str | int) -> db.City:
    """The city `city` names (sightscan.db.resolve_city); LookupError naming what was asked when there is none."""
    with db.transaction(settings) as cur:
        found = db.resolve_city(cur, city)
    if found is None:
        raise LookupError(f"no city {city!r} in the warehouse")
    return found


def export_dataset(settings: Settings, city_id: int) -> Dataset:
    """The city's training data: every label naming a sight with a box, users' boxes included (sightscan/db.py), and
    the frames users said show no sight, as negatives (trainer/warehouse.py; trainer/data.py from_warehouse)."""
    with db.transaction(settings) as cur:
        rows = db.labelled_images(cur, city_id)
        negatives = warehouse.user_negatives(cur, city_id)
    return from_warehouse(rows, settings.min_image_number_per_label, negatives)


def train_dataset(dataset: Dataset, ts: TrainerSettings, progress: Progress | None = None,
                  live: db.StoredModel | None = None) -> tuple[TrainResult, bytes, dict[str, Any], bytes | None]:
    """Train, evaluate on the held-out split and export; returns (result, the served graph's onnx bytes: int8 or
    fp32 as metrics["graph"] says, metrics for the model row, the graph pages run when it is not the served one:
    fp32 when int8 is served, since WebAssembly runs int8 slower (bench/browser/RESULTS.md); else None).

    A model that learned from users' corrections is checked against `live`, the city's live model, on the
    labeller's held-out images (trainer/guard.py): guard.Rejected when it does worse."""
    check_trainable(dataset, ts.min_sights)
    previous = Previous.of(live.metrics) if live is not None else None
    train, heldout, users = training_split(dataset.samples, ts.heldout_fraction, ts.train.seed, ts.max_user_share,
                                           ts.hard_repeats, previous)
    log.info("training", extra={"sights": len(dataset.classes), "train_images": len(train),
                                "heldout_images": len(heldout), "weak_images": sum(s.weak for s in train),
                                "epochs": ts.train.epochs, "corrections": users.as_dict()})
    result, _ = fit(dataset.classes, train, heldout, ts.train, progress)
    onnx_bytes = export_onnx(result.model)
    probe = probe_images(heldout, ts.train.input_size)
    check = check_onnx(result.model, onnx_bytes, probe)
    metrics = {
        **result.metrics,
        "train_images": sum(not s.negative for s in train), "heldout_images": sum(not s.negative for s in heldout),
        "epochs_run": result.epochs_run,
        "train_seconds": round(result.train_seconds, 1), "device": result.device,
        "onnx_check": dataclasses.asdict(check), "evaluated_on": "heldout", "corrections": users.as_dict(),
        # What the next model's split and guard need: the images held out here, and the newest image known.
        "heldout_ids": sorted(s.key for s in heldout), "max_image_id": max(s.key for s in dataset.samples),
    }
    negatives = result.heldout_negatives
    if negatives is None:
        negatives = torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    # The graph served and stored: int8 when it answers like fp32 on the held-out split (trainer/quantize.py).
    fp32 = onnx_bytes
    onnx_bytes, metrics["graph"] = decide(onnx_bytes, train, heldout, dataset.classes, ts.train.input_size, negatives,
                                          ts.int8_tolerance, ts.train.threads, ts.int8,
                                          result.heldout_boxes)
    metrics["guard"] = judge(onnx_bytes, ts.train.input_size, live, heldout, dataset.classes, negatives,
                             users.boxes + users.negatives, ts.guard_top1_tolerance, ts.guard_false_claim_tolerance,
                             ts.train.threads)
    return result, onnx_bytes, metrics, (fp32 if metrics["graph"]["served"] == "int8" else None)


def train_city(settings: Settings, city: str | int, progress: bool | Progress = True, epochs: int | None = None,
               trainer_settings: TrainerSettings | None = None, extra_metrics: dict[str, Any] | None = None) -> Outcome:
    """Train and store a new model for a city (the `sightscan train CITY` command and the service both call this).

    Raises NotEnoughData / LookupError with the reason when there is nothing to train, and guard.Rejected when the
    model learned from users' corrections and does worse than the live one; the previous model is untouched then,
    as on any other failure, because the new row is only inserted at the very end.
    """
    ts = trainer_settings or load(settings)
    if epochs:
        ts = dataclasses.replace(ts, train=dataclasses.replace(ts.train, epochs=epochs))
    found = resolve_city(settings, city)
    dataset = export_dataset(settings, found.id)
    with db.transaction(settings) as cur:
        live = db.latest_model(cur, found.id)
    if not dataset.samples:
        raise NotEnoughData(f"city {found.name!r} has no labelled images with boxes for sights with at least "
                            f"{settings.min_image_number_per_label} images")
    started = time.monotonic()
    callback, bar = _progress(progress, ts.train.epochs, found.name)
    try:
        _, onnx_bytes, metrics, browser_onnx = train_dataset(dataset, ts, callback, live)
    finally:
        if bar is not None:
            bar.close()
    metrics.update(extra_metrics or {})
    metrics["total_seconds"] = round(time.monotonic() - started, 1)
    with db.transaction(settings) as cur:
        stored = db.insert_model(cur, found.id, onnx_bytes, dataset.classes, ts.train.input_size, metrics,
                                 browser_onnx)
        cur.execute("UPDATE cities SET status = 'live', updated_at = now() WHERE id = %s", (found.id,))
    log.info("model stored", extra={"city_id": found.id, "version": stored.version, "top1": metrics["top1"],
                                    "map50": metrics["map50"], "pretrained": metrics["pretrained"],
                                    "bytes": len(onnx_bytes), "graph": metrics["graph"]["served"]})
    return Outcome(found.id, found.name, stored.version, stored.id, dataset.classes, metrics)


def _progress(progress: bool | Progress, epochs: int, city: str) -> tuple[Progress | None, Any]:
    if callable(progress):
        return progress, None
    if not progress:
        return None, None
    from tqdm import tqdm

    bar = tqdm(desc=f"training {city}", unit="epoch")

    def update(epoch: int, total: int, record: dict[str, float]) -> None:
        bar.total = total
        bar.update(epoch - bar.n)
        bar.set_postfix({"loss": f"{record['loss']:.3f}"})

    return update, bar
