"""Scoring recognition on a rendered city's webcam clip: is the top detection the sight in view, and where is it.

Shared by the trainer's tests, the real-loop test and the benchmarks, so all of them score the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sightscan.demo.city import Box, H, W


def normalised(bbox: Box, width: int = W, height: int = H) -> tuple[float, float, float, float]:
    """[x, y, w, h] pixels -> (x_min, y_min, x_max, y_max) in 0..1 of the frame."""
    x, y, w, h = bbox
    return (x / width, y / height, (x + w) / width, (y + h) / height)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x_min, y_min, x_max, y_max) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class ClipScore:
    """Top-1 over every scored frame; IoU of the top box over the frames whose top sight is right."""

    frames: int = 0
    correct: int = 0
    ious: list[float] = field(default_factory=list)
    answered: int = 0      # frames that got any detection at all

    def add(self, truth_sight: str, truth_box: Sequence[float], top_sight: str | None,
            top_box: Sequence[float] | None) -> None:
        self.frames += 1
        if top_sight is None or top_box is None:
            return
        self.answered += 1
        if top_sight == truth_sight:
            self.correct += 1
            self.ious.append(iou(truth_box, top_box))

    @property
    def top1(self) -> float:
        return self.correct / self.frames if self.frames else 0.0

    @property
    def mean_iou(self) -> float:
        return float(np.mean(self.ious)) if self.ious else 0.0

    def share_iou_at_least(self, level: float) -> float:
        return float(np.mean([v >= level for v in self.ious])) if self.ious else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"frames": self.frames, "top1": round(self.top1, 4), "mean_iou": round(self.mean_iou, 4),
                "iou_ge_0.5": round(self.share_iou_at_least(0.5), 4), "answered": self.answered}
