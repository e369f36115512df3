"""Data preparation without the database: warehouse rows -> samples, sight filtering, the split, augmentation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from sightscan.db import LabelledImage
from trainer.data import NotEnoughData, Sample, augment, check_trainable, from_warehouse, split


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(buf, "JPEG")
    return buf.getvalue()


def _rows(per_sight: dict[int, int]) -> list[LabelledImage]:
    rows, image_id, data = [], 0, _jpeg()
    for sight_id, n in per_sight.items():
        for _ in range(n):
            image_id += 1
            rows.append(LabelledImage(image_id, data, 64, 48, sight_id, f"Sight {sight_id}", (0.1, 0.2, 0.6, 0.9)))
    return rows


def test_sights_with_too_few_images_are_dropped_with_their_images():
    rows = _rows({10: 25, 11: 5, 12: 20})
    # Image 1 also shows the rare sight 11: its label goes, the image stays for sight 10.
    rows.append(LabelledImage(1, rows[0].data, 64, 48, 11, "Sight 11", (0.7, 0.1, 0.9, 0.3)))
    ds = from_warehouse(rows, min_images_per_label=20)
    assert ds.classes == ["Sight 10", "Sight 12"] and ds.sight_ids == [10, 12]
    assert len(ds.samples) == 45
    first = next(s for s in ds.samples if s.key == 1)
    assert first.labels == (0,) and first.boxes == ((0.1, 0.2, 0.6, 0.9),)


def test_weak_labels_are_image_level_and_true_boxes_win_over_them():
    data = _jpeg()
    rows = [LabelledImage(1, data, 64, 48, 10, "Sight 10", (0.0, 0.0, 1.0, 1.0), weak=True),
            LabelledImage(2, data, 64, 48, 10, "Sight 10", (0.1, 0.2, 0.6, 0.9)),
            LabelledImage(2, data, 64, 48, 11, "Sight 11", (0.6, 0.1, 0.9, 0.4)),
            LabelledImage(3, data, 64, 48, 11, "Sight 11", (0.0, 0.0, 1.0, 1.0), weak=True),
            LabelledImage(3, data, 64, 48, 10, "Sight 10", (0.2, 0.2, 0.8, 0.8))]
    ds = from_warehouse(rows, min_images_per_label=1)
    by_key = {s.key: s for s in ds.samples}
    assert by_key[1].weak and by_key[1].labels == (0,)
    assert not by_key[2].weak and by_key[2].labels == (0, 1) and by_key[2].primary == 0
    # Image 3 has both kinds (not what the labeller writes): its true box is kept, its weak label dropped.
    assert not by_key[3].weak and by_key[3].labels == (0,) and by_key[3].boxes == ((0.2, 0.2, 0.8, 0.8),)


def test_nothing_trainable_is_reported_with_a_reason():
    with pytest.raises(NotEnoughData, match="no labelled images"):
        check_trainable(from_warehouse(_rows({1: 3}), min_images_per_label=20))
    with pytest.raises(NotEnoughData, match="only 1 sight"):
        check_trainable(from_warehouse(_rows({1: 30}), min_images_per_label=20), min_sights=2)


def test_split_is_by_image_stratified_and_deterministic():
    samples = [Sample(i, b"", ((0.1, 0.1, 0.5, 0.5),), (i % 4,)) for i in range(200)]
    train, held = split(samples, 0.2, seed=3)
    assert {s.key for s in train}.isdisjoint({s.key for s in held})
    assert len(train) + len(held) == 200
    assert sorted(sum(1 for s in held if s.primary == c) for c in range(4)) == [10, 10, 10, 10]
    again = split(list(reversed(samples)), 0.2, seed=3)
    assert [s.key for s in again[1]] == [s.key for s in held]
    assert [s.key for s in split(samples, 0.2, seed=4)[1]] != [s.key for s in held]


def test_primary_sight_is_the_largest_box():
    s = Sample(1, b"", ((0, 0, 0.2, 0.2), (0.1, 0.1, 0.9, 0.9)), (3, 1))
    assert s.primary == 1


def test_augment_moves_boxes_with_the_pixels():
    # A white square on grey: after any zoom/shift/flip its box must still frame the white pixels.
    img = torch.full((8, 3, 100, 100), 0.5)  # grey like the padding of a zoomed-out frame
    img[:, :, 30:70, 20:50] = 1.0
    boxes = torch.tensor([[[0.2, 0.3, 0.5, 0.7]]]).repeat(8, 1, 1)
    labels = torch.zeros(8, 1, dtype=torch.int64)
    out, b, lab = augment(img, boxes, labels, 64, torch.Generator().manual_seed(1))
    assert out.shape == (8, 3, 64, 64)
    for i in range(8):
        if lab[i, 0] < 0:
            continue
        grey = out[i].mean(0).numpy()
        # Colour jitter rescales values, so find the square relative to the image's own range.
        mask = grey > (grey.min() + grey.max()) / 2
        ys, xs = np.nonzero(mask)
        found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 64
        assert np.abs(found - b[i, 0].numpy()).max() < 0.06, (i, found, b[i, 0])
