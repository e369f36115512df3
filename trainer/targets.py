"""What the dense head is taught at each grid cell, and where the photos' own "no sight" examples come from.

Cell targets (FCOS's assignment, Tian et al. 2019, with centre sampling): a cell whose centre lies in the central
part of a sight's box is that sight, and regresses the box as distances from its centre to the four sides; the
cell holding a box's centre always is, so a small sight still has a cell. A cell inside a box but off its centre
is ignored (its receptive field sees part sight, part street), as is any cell of a box the augmentation mostly cut
off. Every other cell is background. Where boxes overlap the smaller one wins. A weak image's pseudo-box is a
guess, so the ignored ring around it is wider.

Side by side (the mosaic augmentation of YOLOv4, Bochkovskiy et al. 2020, in halves): most photos show one sight,
but a webcam often sees two. Two photos of different sights, each cut to a window around its (pseudo-)box, make
the two halves of one frame, and each keeps its own label and box: the head learns frames with two sights from
photos that each have one label.

Away crops: windows of a photo that overlap none of its (pseudo-)boxes, resized to the model's input. They are
frames with no sight, as a camera turned a little away from the sight would see them: the negatives of the
background class and of the threshold's calibration (trainer/calibrate.py).
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from trainer.data import Sample
from trainer.model import cell_centres

IGNORE = -1
CORE = 0.5          # a cell is a sight's when its centre is within this fraction of the box's half-size of its centre
WEAK_MARGIN = 0.06  # the ring around a weak pseudo-box (in frame units) that is neither sight nor background
Box = tuple[float, float, float, float]


def cell_targets(boxes: torch.Tensor, labels: torch.Tensor, weak: torch.Tensor, grid: int) -> tuple[
        torch.Tensor, torch.Tensor]:
    """boxes [N,M,4] 0..1, labels [N,M] (sight index, -1 for a box the augmentation cut off; zero-area boxes are
    padding), weak [N] -> (class targets [N,P]: 0 background, 1 + sight, or IGNORE; side targets [N,P,4])."""
    n, m, _ = boxes.shape
    centre = cell_centres(grid, grid, boxes.device)                           # [P,2]
    cx, cy = centre[:, 0][None, None], centre[:, 1][None, None]               # [1,1,P]
    x0, y0, x1, y1 = (boxes[..., i][..., None] for i in range(4))             # [N,M,1]
    area = ((x1 - x0) * (y1 - y0))[..., 0]                                    # [N,M]
    real = area > 1e-6
    margin = torch.where(weak, WEAK_MARGIN, 0.0)[:, None, None]
    inside = (cx >= x0 - margin) & (cx <= x1 + margin) & (cy >= y0 - margin) & (cy <= y1 + margin)
    inside &= real[..., None]
    bx, by = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = (x1 - x0) / 2, (y1 - y0) / 2
    core = ((cx - bx).abs() <= CORE * hw) & ((cy - by).abs() <= CORE * hh)
    # The cell holding the box's centre: nearest centre.
    nearest = ((cx - bx) ** 2 + (cy - by) ** 2).argmin(dim=-1)                # [N,M]
    holds = torch.zeros_like(core)
    holds.scatter_(2, nearest[..., None], True)
    positive = (core | holds) & real[..., None] & (labels[..., None] >= 0)
    # Each positive cell belongs to its smallest box.
    big = torch.where(positive, area[..., None], torch.full_like(area[..., None], float("inf")).expand_as(positive))
    owner = big.argmin(dim=1)                                                 # [N,P]
    any_positive = positive.any(dim=1)
    targets = torch.zeros(n, centre.shape[0], dtype=torch.int64, device=boxes.device)
    targets[inside.any(dim=1)] = IGNORE
    owner_label = torch.gather(labels, 1, owner)
    targets = torch.where(any_positive, owner_label + 1, targets)
    owner_box = torch.gather(boxes, 1, owner[..., None].expand(-1, -1, 4))    # [N,P,4]
    sides = torch.stack([centre[None, :, 0] - owner_box[..., 0], centre[None, :, 1] - owner_box[..., 1],
                         owner_box[..., 2] - centre[None, :, 0], owner_box[..., 3] - centre[None, :, 1]], dim=-1)
    return targets, sides.clamp(0.0, 1.0)


def away_windows(boxes: Sequence[Box], rng: random.Random, min_side: float = 0.3, max_aspect: float = 1.6,
                 per_image: int = 2) -> list[Box]:
    """Up to `per_image` windows (normalised) of a frame that overlap none of `boxes`, largest strips first: left
    of, right of, above and below everything boxed, each at least `min_side` of the frame on its short side."""
    if not boxes:
        return []
    pad = 0.02
    ux0 = max(0.0, min(b[0] for b in boxes) - pad)
    uy0 = max(0.0, min(b[1] for b in boxes) - pad)
    ux1 = min(1.0, max(b[2] for b in boxes) + pad)
    uy1 = min(1.0, max(b[3] for b in boxes) + pad)
    strips = [(0.0, 0.0, ux0, 1.0), (ux1, 0.0, 1.0, 1.0), (0.0, 0.0, 1.0, uy0), (0.0, uy1, 1.0, 1.0)]
    windows = []
    for x0, y0, x1, y1 in sorted(strips, key=lambda s: -(s[2] - s[0]) * (s[3] - s[1])):
        w, h = x1 - x0, y1 - y0
        if min(w, h) < min_side:
            continue
        # Frames are 4:3 stretched to a square: keep the window's shape within max_aspect of the frame's.
        if w > h:
            ww = min(w, h * max_aspect)
            ox = x0 + rng.uniform(0.0, w - ww)
            windows.append((ox, y0, ox + ww, y1))
        else:
            hh = min(h, w * max_aspect)
            oy = y0 + rng.uniform(0.0, h - hh)
            windows.append((x0, oy, x1, oy + hh))
        if len(windows) == per_image:
            break
    return windows


def away_crops(samples: Sequence[Sample], boxes: Sequence[Sequence[Box]], size: int, seed: int,
               per_image: int = 2) -> torch.Tensor:
    """uint8 [K,3,S,S]: the away windows of each sample's photo (its `boxes`: true or pseudo), from the full-size
    photo, stretched to the input as frames are."""
    rng = random.Random(seed)
    crops = []
    for sample, its_boxes in zip(samples, boxes, strict=True):
        windows = away_windows(its_boxes, rng, per_image=per_image)
        if not windows:
            continue
        with Image.open(io.BytesIO(sample.jpeg)) as im:
            photo = im.convert("RGB")
            w, h = photo.size
            for x0, y0, x1, y1 in windows:
                crop = photo.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)))
                crops.append(np.asarray(crop.resize((size, size), Image.BILINEAR)))
    if not crops:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def side_by_side(images_u8: torch.Tensor, boxes: torch.Tensor, primary: torch.Tensor, seed: int,
                 count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`count` frames [K,3,S,S] uint8, each two photos of different sights side by side, with boxes [K,2,4] and
    labels [K,2]. boxes [N,4] is each photo's (pseudo-)box of its sight `primary` [N]."""
    rng = random.Random(seed)
    n, _, size, _ = images_u8.shape
    frames, out_boxes, out_labels = [], [], []
    candidates = list(range(n))
    for _ in range(count if n > 1 and len(set(primary.tolist())) > 1 else 0):
        i = rng.choice(candidates)
        j = rng.choice([k for k in candidates if primary[k] != primary[i]])
        halves, placed = [], []
        for half, k in enumerate((i, j)):
            x0, y0, x1, y1 = (float(v) for v in boxes[k])
            width = min(1.0, max(0.4, (x1 - x0) + rng.uniform(0.1, 0.3)))
            left = min(max(0.0, (x0 + x1) / 2 - width / 2 + rng.uniform(-0.05, 0.05)), 1.0 - width)
            a, b = round(left * size), max(round(left * size) + 2, round((left + width) * size))
            part = images_u8[k:k + 1, :, :, a:b].float()
            halves.append(F.interpolate(part, size=(size, size // 2), mode="bilinear", align_corners=False))
            scale = 0.5 / width
            placed.append((half * 0.5 + max(0.0, x0 - left) * scale, y0,
                           half * 0.5 + min(width, x1 - left) * scale, y1))
        frames.append(torch.cat(halves, dim=3).round().clamp(0, 255).to(torch.uint8)[0])
        out_boxes.append(torch.tensor(placed, dtype=torch.float32))
        out_labels.append(torch.tensor([int(primary[i]), int(primary[j])]))
    if not frames:
        return (torch.zeros(0, 3, size, size, dtype=torch.uint8), torch.zeros(0, 2, 4),
                torch.zeros(0, 2, dtype=torch.int64))
    return torch.stack(frames), torch.stack(out_boxes), torch.stack(out_labels)
