"""The poisoning guard on real training: a city's live model, then a model retrained with honest corrections (kept)
and one retrained with deliberately wrong ones (refused), all on the small synthetic city. No database: the
training path `train_city` runs after the warehouse export, with the live model it would read.

Seeded; levels asserted with margin (the figures are printed)."""

from __future__ import annotations

import dataclasses

import pytest

from sightscan.db import StoredModel
from trainer.config import TrainConfig
from trainer.data import Dataset, from_coco_folder
from trainer.guard import Rejected
from trainer.pipeline import train_dataset
from trainer.settings import TrainerSettings

pytestmark = pytest.mark.slow  # three trainings: a few minutes on 2 cores

SETTINGS = TrainerSettings(train=TrainConfig(epochs=10, device="cpu", threads=2), heldout_fraction=0.2,
                           min_sights=2, group_id="unused", cloud=None, idle_stop_s=0)


@pytest.fixture(scope="module")
def city(small_city) -> tuple[Dataset, StoredModel]:
    """The city (3 sights x 22 photos with true boxes) and its live model, trained on the labeller's data."""
    ds = from_coco_folder(small_city)
    _, onnx, metrics, _ = train_dataset(ds, SETTINGS)
    print(f"\n[guard] live model: top1 {metrics['top1']:.3f}, recall {metrics['recall']:.3f}")
    return ds, StoredModel(1, 1, 1, onnx, ds.classes, SETTINGS.train.input_size, metrics)


def _corrected(ds: Dataset, every: int, wrong: bool) -> Dataset:
    """The city plus a user's frame for every `every`-th photo (a copy of it): its true box, and its own sight, or
    (wrong) the next sight, sent as "wrong sight" corrections. The operator's, so the share cap does not apply."""
    frames = [dataclasses.replace(s, key=100_000 + s.key, origin="user", user_id=None, hard=wrong,
                                  labels=tuple((c + 1) % len(ds.classes) for c in s.labels) if wrong else s.labels)
              for i, s in enumerate(ds.samples) if not s.negative and i % every == 0]
    return Dataset(ds.classes, ds.samples + frames, ds.sight_ids)


def test_a_model_retrained_with_honest_corrections_replaces_the_live_one(city):
    ds, live = city
    _, _, metrics, _ = train_dataset(_corrected(ds, 3, wrong=False), SETTINGS, live=live)
    guard = metrics["guard"]
    print(f"[guard] honest corrections: {guard}")
    assert guard["checked"] and guard["accepted"] and metrics["corrections"]["boxes"] == 22
    assert guard["candidate"]["images"] == guard["live"]["images"] >= 12   # the same held-out images, no user's


def test_a_model_retrained_with_wrong_corrections_is_refused(city):
    ds, live = city
    with pytest.raises(Rejected) as refused:
        train_dataset(_corrected(ds, 2, wrong=True), SETTINGS, live=live)
    guard = refused.value.guard
    print(f"[guard] wrong corrections: {guard}")
    assert not guard["accepted"] and "top-1" in str(refused.value)
    assert guard["candidate"]["top1"] <= guard["live"]["top1"] - 0.3   # far past the tolerance, not a near call
