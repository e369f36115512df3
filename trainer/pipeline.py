"""One training of one city: warehouse export -> split -> train -> held-out evaluation -> ONNX -> model row."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sightscan import db
from sightscan.config import Settings
from trainer.data import Dataset, NotEnoughData, check_trainable, from_warehouse, split
from trainer.export import check_onnx, export_onnx, probe_images
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
    with db.transaction(settings) as cur:
        rows = db.labelled_images(cur, city_id)
    return from_warehouse(rows, settings.min_image_number_per_label)


def train_dataset(dataset: Dataset, ts: TrainerSettings, progress: Progress | None = None) -> tuple[
        TrainResult, bytes, dict[str, Any]]:
    """Train, evaluate on the held-out split and export; returns (result, onnx bytes, metrics for the model row)."""
    check_trainable(dataset, ts.min_sights)
    train, heldout = split(dataset.samples, ts.heldout_fraction, ts.train.seed)
    log.info("training", extra={"sights": len(dataset.classes), "train_images": len(train),
                                "heldout_images": len(heldout), "weak_images": sum(s.weak for s in train),
                                "epochs": ts.train.epochs})
    result, _ = fit(dataset.classes, train, heldout, ts.train, progress)
    onnx_bytes = export_onnx(result.model)
    probe = probe_images(heldout, ts.train.input_size)
    check = check_onnx(result.model, onnx_bytes, probe)
    metrics = {
        **result.metrics,
        "train_images": sum(not s.negative for s in train), "heldout_images": sum(not s.negative for s in heldout),
        "epochs_run": result.epochs_run,
        "train_seconds": round(result.train_seconds, 1), "device": result.device,
        "onnx_check": dataclasses.asdict(check), "evaluated_on": "heldout",
    }
    return result, onnx_bytes, metrics


def train_city(settings: Settings, city: str | int, progress: bool | Progress = True, epochs: int | None = None,
               trainer_settings: TrainerSettings | None = None, extra_metrics: dict[str, Any] | None = None) -> Outcome:
    """Train and store a new model for a city (the `sightscan train CITY` command and the service both call this).

    Raises NotEnoughData / LookupError with the reason when there is nothing to train; the previous model is
    untouched then, as on any other failure, because the new row is only inserted at the very end.
    """
    ts = trainer_settings or load(settings)
    if epochs:
        ts = dataclasses.replace(ts, train=dataclasses.replace(ts.train, epochs=epochs))
    found = resolve_city(settings, city)
    dataset = export_dataset(settings, found.id)
    if not dataset.samples:
        raise NotEnoughData(f"city {found.name!r} has no labelled images with boxes for sights with at least "
                            f"{settings.min_image_number_per_label} images")
    started = time.monotonic()
    callback, bar = _progress(progress, ts.train.epochs, found.name)
    try:
        _, onnx_bytes, metrics = train_dataset(dataset, ts, callback)
    finally:
        if bar is not None:
            bar.close()
    metrics.update(extra_metrics or {})
    metrics["total_seconds"] = round(time.monotonic() - started, 1)
    with db.transaction(settings) as cur:
        stored = db.insert_model(cur, found.id, onnx_bytes, dataset.classes, ts.train.input_size, metrics)
        cur.execute("UPDATE cities SET status = 'live', updated_at = now() WHERE id = %s", (found.id,))
    log.info("model stored", extra={"city_id": found.id, "version": stored.version, "top1": metrics["top1"],
                                    "map50": metrics["map50"], "pretrained": metrics["pretrained"],
                                    "bytes": len(onnx_bytes)})
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
