"""CPU training on a synthetic city: from weak image-level labels (the offline default), from true boxes, and from
both. Scored on held-out photos and on the city's own webcam clip through the exported ONNX graph.

No database: the pure training/evaluation/export path, as `train_city` runs it after the warehouse export.
Levels are asserted with margin (seeded; see the figures printed): the ambitious targets live in bench/loop.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from localsystem.demo.city import CityInfo, clip_frames
from localsystem.demo.scoring import ClipScore, frame_truths
from sightscan.detector import OnnxDetector, preprocess
from trainer.data import Dataset, from_coco_folder
from trainer.pipeline import train_dataset
from trainer.settings import TrainerSettings
from trainer.train import TrainConfig

pytestmark = pytest.mark.slow  # each test trains real models: minutes on 2 cores

SETTINGS = TrainerSettings(train=TrainConfig(epochs=20, device="cpu", threads=2), heldout_fraction=0.2,
                           min_sights=2, group_id="unused", cloud=None, idle_stop_s=0)


def _train(ds: Dataset, label: str) -> tuple[bytes, dict]:
    started = time.monotonic()
    _, onnx_bytes, metrics, _ = train_dataset(ds, SETTINGS)
    shown = {k: metrics.get(k) for k in ("top1", "map50", "map", "labels", "train_seconds", "backbone")}
    print(f"\n[trainer] {label}: {time.monotonic() - started:.0f} s total, {shown}")
    return onnx_bytes, metrics


def _score_clip(onnx_bytes: bytes, metrics: dict, classes: list[str], folder) -> ClipScore:
    """The city's webcam clip through the exported graph as the gateway runs it: every sight alone, pairs side by
    side, and street with no sight."""
    info = CityInfo.load(folder)
    detector = OnnxDetector(onnx_bytes, classes, 224, threads=2)
    score = ClipScore()
    for frame in clip_frames(info, seconds=12, fps=10):
        (found,) = detector.detect(preprocess(frame.rgb, 224)[None])
        score.add(frame_truths(frame), [(d.sight, d.score, d.box) for d in found])
    print(f"[trainer] clip: {score.as_dict()}")
    return score


@pytest.fixture(scope="module")
def weak(synthetic_city):
    ds = from_coco_folder(synthetic_city, weak=True)
    onnx_bytes, metrics = _train(ds, "weak labels")
    return ds, onnx_bytes, metrics, _score_clip(onnx_bytes, metrics, ds.classes, synthetic_city)


def test_weak_labels_train_a_model_that_names_and_finds_the_sight(weak):
    ds, _, metrics, clip = weak
    assert metrics["labels"] == {"image_level": 240, "boxes": 0, "negatives": 10}
    assert metrics["pretrained"] and metrics["backbone"] == "mobilenet_v2"
    # This city (seed 7): held-out top-1 0.97; clip (one-sight frames) top-1 0.98, mean IoU of the right box 0.61,
    # 76% of them >= 0.5. The ambitious targets and other seeds: bench/trainer, bench/loop.
    assert metrics["top1"] >= 0.75, metrics["top1"]
    assert clip.top1 >= 0.9, clip.as_dict()
    assert clip.mean_iou >= 0.5 and clip.share_iou_at_least(0.5) >= 0.7, clip.as_dict()


def test_weak_labels_learn_no_sight_and_a_box_for_each_of_two_sights(weak):
    _, _, metrics, clip = weak
    assert clip.empty_frames >= 20 and clip.pair_frames >= 20
    # Seed 7: no no-sight frame answered with a sight (0 of 24); both sights boxed at IoU >= 0.5 on 53% of the
    # two-sight frames (19 of 36). Before the open-world model these were 100% and 0%.
    assert clip.false_claims <= 0.1, clip.as_dict()
    assert clip.both_boxed >= 0.25, clip.as_dict()


def test_weak_metrics_are_honest(weak):
    ds, _, metrics, _ = weak
    # No true boxes: no box mAP pretending to measure localisation.
    assert metrics["map50"] is None and metrics["map"] is None and metrics["box_images_heldout"] == 0
    confusion = metrics["confusion"]
    assert confusion["classes"] == ds.classes
    matrix = np.array(confusion["matrix"])
    assert matrix.shape == (5, 5) and matrix.sum() == metrics["heldout_images"] == 60
    assert metrics["top1"] == pytest.approx(np.trace(matrix) / 60)
    assert "CAM" in metrics["method"] and "background class" in metrics["method"]
    # The no-sight rule: calibrated on held-out no-sight images (2 of them photos of no sight), measured at it.
    assert metrics["heldout_negative_photos"] == 2 and metrics["heldout_negatives"] > 30
    # Either the false-claim target set the threshold and is met, or meeting it would have lost more sights than
    # the recall guard allows, and then the guard holds and the rate measured at the threshold is what is shown;
    # or the floor set it, raising either of those (trainer/calibrate.py: a recall guard under the floor gives way).
    assert metrics["false_claim_target"] == 0.02 and metrics["min_recall"] == 0.9
    if metrics["threshold_rule"] == "min_recall":
        assert metrics["recall"] >= 0.9 and metrics["false_claim_rate"] > 0.02
    elif metrics["threshold_rule"] == "floor":
        assert metrics["threshold"] == 0.5
    else:
        assert metrics["false_claim_rate"] <= 0.02
    assert 0.5 <= metrics["threshold"] < 1 and 0 < metrics["recall"] <= 1 and 0.5 < metrics["auroc"] <= 1


def test_onnx_matches_torch(weak):
    check = weak[2]["onnx_check"]
    assert check["max_score_diff"] <= 1e-3 and check["max_box_diff"] <= 1e-2 and check["class_agreement"] >= 0.99


def test_true_boxes_train_the_box_head_directly_and_score_map(synthetic_city):
    ds = from_coco_folder(synthetic_city)
    _, metrics = _train(ds, "true boxes")
    assert metrics["labels"] == {"image_level": 0, "boxes": 240, "negatives": 10}
    assert metrics["box_images_heldout"] == 60
    # Seed 7: held-out mAP@0.5 0.84, every sight of an image counted (the one-box model scored 0.77).
    assert metrics["map50"] >= 0.65 and 0 < metrics["map"] <= metrics["map50"]
    assert metrics["top1"] >= 0.8


def test_a_city_with_both_kinds_uses_both(synthetic_city):
    weak_ds, boxed = from_coco_folder(synthetic_city, weak=True), from_coco_folder(synthetic_city)
    # Every third image keeps its true boxes (as if Vision had labelled it); the rest stay weak.
    mixed = [b if s.key % 3 == 0 else s for s, b in zip(weak_ds.samples, boxed.samples, strict=True)]
    _, metrics = _train(dataclasses.replace(weak_ds, samples=mixed), "both kinds")
    labels = metrics["labels"]
    assert labels["image_level"] > 0 and labels["boxes"] > 0 and labels["image_level"] + labels["boxes"] == 240
    assert 0 < metrics["box_images_heldout"] < 60 and metrics["map50"] is not None
    assert metrics["top1"] >= 0.8
