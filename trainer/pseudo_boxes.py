"""Pseudo-boxes from class activation maps (Zhou et al., CVPR 2016), batched in torch.

Each map is min-max normalised, upsampled, thresholded at a fraction of its peak, and the box of its largest
connected region is the pseudo-box (the CAM recipe of the WSOL literature; Choe et al., CVPR 2020, show the
threshold is the setting that matters: ours was chosen on synthetic cities with seeds other than the tests').
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """[N,h,w] -> each map scaled to 0..1."""
    flat = maps.flatten(1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    return (maps - lo[:, None, None]) / (hi - lo).clamp(min=1e-9)[:, None, None]


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """[N,H,W] bool -> the largest 8-connected region of each mask (an empty mask stays empty).

    Label propagation by repeated 3x3 max-pooling of pixel ids inside the mask: vectorised over the batch, and
    fine at the small grids CAMs live on.
    """
    n, h, w = mask.shape
    ids = torch.arange(1, h * w + 1, dtype=torch.float32, device=mask.device).view(1, h, w).expand(n, h, w)
    labels = torch.where(mask, ids, torch.zeros_like(ids))
    for _ in range(h * w):
        grown = F.max_pool2d(labels[:, None], 3, 1, 1)[:, 0] * mask
        if torch.equal(grown, labels):
            break
        labels = grown
    out = torch.zeros_like(mask)
    for i in range(n):
        values, counts = torch.unique(labels[i][mask[i]], return_counts=True)
        if len(values):
            out[i] = labels[i] == values[counts.argmax()]
    return out


def boxes_of(mask: torch.Tensor) -> torch.Tensor:
    """[N,H,W] bool -> [N,4] normalised boxes around each mask's pixels (the whole frame when a mask is empty)."""
    n, h, w = mask.shape
    rows, cols = mask.any(dim=2), mask.any(dim=1)
    ar_h = torch.arange(h, device=mask.device).expand(n, h)
    ar_w = torch.arange(w, device=mask.device).expand(n, w)
    y0 = torch.where(rows, ar_h, h).min(dim=1).values
    y1 = torch.where(rows, ar_h, -1).max(dim=1).values + 1
    x0 = torch.where(cols, ar_w, w).min(dim=1).values
    x1 = torch.where(cols, ar_w, -1).max(dim=1).values + 1
    box = torch.stack([x0 / w, y0 / h, x1 / w, y1 / h], dim=1).float()
    empty = ~mask.flatten(1).any(dim=1)
    return torch.where(empty[:, None], torch.tensor([0.0, 0.0, 1.0, 1.0], device=mask.device), box)


def cam_boxes(maps: torch.Tensor, threshold: float, resolution: int = 64) -> torch.Tensor:
    """Class activation maps [N,h,w] -> pseudo-boxes [N,4] (x_min, y_min, x_max, y_max in 0..1)."""
    up = F.interpolate(maps[:, None].float(), size=(resolution, resolution), mode="bilinear",
                       align_corners=False)[:, 0]
    mask = normalise(up) >= threshold
    return boxes_of(largest_component(mask))
