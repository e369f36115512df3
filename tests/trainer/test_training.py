"""CPU training on the issue's synthetic city (5 sights x 60 images): held-out quality, ONNX, serving path.

No database: the pure training/evaluation/export path, as `train_city` runs it after the warehouse export.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from sightscan.detector import INPUT_NAME, OUTPUT_NAMES, preprocess
from trainer.config import TrainerSettings
from trainer.data import from_coco_folder, split
from trainer.export import session
from trainer.pipeline import train_dataset
from trainer.train import TrainConfig

# The sweep (bench/trainer/sweep.py) put the 0.8 bar at 20-30 epochs with these defaults; 24 keeps CPU time in budget.
EPOCHS = 24
BAR = 0.8


@pytest.fixture(scope="module")
def trained(synthetic_city):
    ds = from_coco_folder(synthetic_city)
    ts = TrainerSettings(train=TrainConfig(epochs=EPOCHS, device="cpu", threads=2, eval_every=2, patience=4),
                         heldout_fraction=0.2, min_sights=2, group_id="unused", cloud=None, idle_stop_s=0)
    started = time.monotonic()
    result, onnx_bytes, metrics = train_dataset(ds, ts)
    seconds = time.monotonic() - started
    print(f"\n[trainer] {EPOCHS} epochs on CPU: {seconds:.0f} s total, train {result.train_seconds:.0f} s, "
          f"best epoch {result.best_epoch}, held-out mAP@0.5 {metrics['map50']:.3f}, "
          f"mAP@0.5:0.95 {metrics['map']:.3f}, per sight {metrics['per_sight']}")
    return ds, result, onnx_bytes, metrics, seconds


def test_heldout_map50_reaches_the_bar_within_minutes_on_cpu(trained):
    ds, result, _, metrics, seconds = trained
    assert metrics["evaluated_on"] == "heldout" and metrics["heldout_images"] == 60
    assert metrics["train_images"] == 240
    assert set(metrics["per_sight"]) == set(ds.classes)
    assert metrics["map50"] >= BAR, f"held-out mAP@0.5 {metrics['map50']:.3f} < {BAR}"
    assert 0 < metrics["map"] <= metrics["map50"]
    assert seconds < 600


def test_onnx_matches_torch(trained):
    _, _, _, metrics, _ = trained
    check = metrics["onnx_check"]
    assert check["max_score_diff"] <= 1e-3 and check["max_box_diff"] <= 1e-2 and check["class_agreement"] >= 0.99


def test_served_model_finds_the_sight_in_a_heldout_photo(trained, synthetic_city):
    """The gateway's path: encoded photo -> sightscan.detector.preprocess -> ONNX Runtime -> top detection."""
    ds, _, onnx_bytes, _, _ = trained
    _, heldout = split(ds.samples, 0.2, 0)
    sess = session(onnx_bytes)
    hits = 0
    for sample in heldout:
        rgb = np.asarray(Image.open(io.BytesIO(sample.jpeg)).convert("RGB"))
        boxes, scores, classes = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: preprocess(rgb, 256)[None]})
        main = int(np.argmax([(b[2] - b[0]) * (b[3] - b[1]) for b in sample.boxes]))
        truth = np.array(sample.boxes[main])
        x0, y0 = np.maximum(boxes[0, 0, :2], truth[:2])
        x1, y1 = np.minimum(boxes[0, 0, 2:], truth[2:])
        inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
        union = np.prod(boxes[0, 0, 2:] - boxes[0, 0, :2]) + np.prod(truth[2:] - truth[:2]) - inter
        hits += int(classes[0, 0] == sample.labels[main] and inter / union >= 0.5)
    assert hits / len(heldout) >= 0.75, f"top detection right on {hits}/{len(heldout)} held-out photos"
