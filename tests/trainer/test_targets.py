"""What the dense head is taught per cell, the no-sight crops, the side-by-side pairs and the threshold's
calibration: small exact cases, no training."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.calibrate import auroc, calibrate
from trainer.data import Sample
from trainer.targets import IGNORE, away_crops, away_windows, cell_targets, side_by_side


def test_cells_in_a_boxs_centre_are_its_sight_the_rest_of_it_ignored_and_outside_background():
    # A 4x4 grid (cell centres at 0.125, 0.375, 0.625, 0.875); one box over the left half.
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 1.0]]])
    targets, sides = cell_targets(boxes, torch.tensor([[2]]), torch.tensor([False]), grid=4)
    grid = targets.view(4, 4)
    assert (grid[:, 2:] == 0).all(), "right half: background"
    assert (grid[1:3, :2] == 3).all(), "the box's centre: sight 2 (class 3, after background)"
    assert (grid[0, :2] == IGNORE).all() and (grid[3, :2] == IGNORE).all(), "inside, off-centre: ignored"
    # Sides: from cell (1, 0), centre (0.125, 0.375), to the box's four sides.
    assert sides[0, 4].tolist() == pytest.approx([0.125, 0.375, 0.375, 0.625])


def test_a_cut_off_box_is_ignored_not_background_and_padding_is_nothing():
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]]])
    targets, _ = cell_targets(boxes, torch.tensor([[-1, -1]]), torch.tensor([False]), grid=4)
    grid = targets.view(4, 4)
    assert (grid[:, :2] == IGNORE).all() and (grid[:, 2:] == 0).all()


def test_two_sights_each_get_their_cells_and_a_tiny_one_still_has_one():
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 1.0], [0.8, 0.4, 0.85, 0.45]]])
    targets, _ = cell_targets(boxes, torch.tensor([[0, 1]]), torch.tensor([False]), grid=4)
    assert (targets == 1).any() and (targets == 2).sum() == 1


def test_away_windows_overlap_no_box_and_keep_a_frames_shape():
    rng = random.Random(0)
    box = (0.4, 0.2, 0.6, 0.9)
    windows = away_windows([box], rng, per_image=4)
    assert windows, "a sight in the middle leaves room on both sides"
    for x0, y0, x1, y1 in windows:
        overlap = max(0, min(x1, box[2]) - max(x0, box[0])) * max(0, min(y1, box[3]) - max(y0, box[1]))
        assert overlap == 0 and min(x1 - x0, y1 - y0) >= 0.3
        assert max((x1 - x0) / (y1 - y0), (y1 - y0) / (x1 - x0)) <= 1.6 + 1e-9
    assert away_windows([(0.0, 0.0, 1.0, 1.0)], rng) == []  # the sight fills the frame: nothing is away from it


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buf, "JPEG")
    return buf.getvalue()


def test_away_crops_come_from_the_full_photo():
    sample = Sample(1, _jpeg((200, 10, 10)), ((0.4, 0.0, 0.6, 1.0),), (0,), weak=True)
    crops = away_crops([sample], [[(0.4, 0.0, 0.6, 1.0)]], size=32, seed=1)
    assert crops.shape == (2, 3, 32, 32) and crops.dtype == torch.uint8
    assert abs(int(crops[:, 0].float().mean()) - 200) <= 6


def test_side_by_side_puts_two_different_sights_in_the_two_halves():
    images = torch.stack([torch.full((3, 32, 32), v, dtype=torch.uint8) for v in (10, 120, 240)])
    boxes = torch.tensor([[0.3, 0.1, 0.7, 0.9]] * 3)
    frames, placed, labels = side_by_side(images, boxes, torch.tensor([0, 0, 1]), seed=2, count=5)
    assert frames.shape == (5, 3, 32, 32) and placed.shape == (5, 2, 4) and labels.shape == (5, 2)
    assert (labels[:, 0] != labels[:, 1]).all()
    assert (placed[:, 0, 2] <= 0.5 + 1e-6).all() and (placed[:, 1, 0] >= 0.5 - 1e-6).all()


def test_calibration_meets_the_false_claim_target_and_reports_at_it():
    negatives = np.linspace(0.0, 0.9, 100)             # the 98th-highest-but-two is 0.882
    found = np.array([0.95, 0.99, 0.5, 0.0])
    cal = calibrate(negatives, found, found, false_claim_rate=0.02, floor=0.3)
    assert cal.false_claim_rate <= 0.02 and (negatives >= cal.threshold).sum() == 2
    assert cal.recall == 0.5 and cal.negatives == 100 and cal.positives == 4
    floored = calibrate(np.zeros(10), found, found, false_claim_rate=0.02, floor=0.6)
    assert floored.threshold == 0.6 and floored.false_claim_rate == 0.0
    assert auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auroc(np.array([0.5]), np.array([0.5])) == 0.5


def test_a_single_noisy_negative_cannot_push_the_threshold_past_the_recall_guard():
    # 31 clean no-sight crops and one crop that shows the sight after all (a photo with its sight twice).
    negatives = np.array([0.05] * 31 + [0.99])
    found = np.linspace(0.55, 1.0, 40)          # the held-out sights' own scores
    strict = calibrate(negatives, found, found, false_claim_rate=0.02, floor=0.5)
    assert strict.threshold == pytest.approx(0.99) and strict.recall < 0.1 and strict.rule == "false_claim_rate"
    guarded = calibrate(negatives, found, found, false_claim_rate=0.02, floor=0.5, min_recall=0.9)
    assert guarded.rule == "min_recall" and guarded.recall >= 0.9
    assert guarded.false_claim_rate == pytest.approx(1 / 32)   # the conflict shows in the measured rate
    # No conflict: the false-claim target sets it, and the floor still holds under it.
    clean = calibrate(negatives[:31], found, found, false_claim_rate=0.02, floor=0.5, min_recall=0.9)
    assert clean.rule == "floor" and clean.threshold == 0.5 and clean.false_claim_rate == 0.0
