"""Scoring recognition on a rendered city's webcam clip: the right sight where one is in view, no claim where none
is, and both boxed where two are.

Shared by the trainer's tests, the real-loop test and the benchmarks, so all of them score the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from localsystem.demo.city import Box, ClipFrame, H, W
from sightscan.detector import OnnxDetector, preprocess


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


Det = tuple[str, float, Sequence[float]]  # sight, score, box (x_min, y_min, x_max, y_max in 0..1)


@dataclass
class ClipScore:
    """The open-world checks on a clip, each over its own kind of frame (ClipFrame.kind):

    - one sight in view: top-1 (the top detection names it) and the IoU of the right sight's best box;
    - no sight in view: the share of frames answered with any sight at all (false claims);
    - two sights in view: the share where both sights are boxed at IoU >= 0.5 by a detection of their own name.
    """

    frames: int = 0
    sight_frames: int = 0
    correct: int = 0
    ious: list[float] = field(default_factory=list)
    answered: int = 0        # sight frames that got any detection at all
    empty_frames: int = 0
    claimed: int = 0         # empty frames answered with a sight
    pair_frames: int = 0
    pairs_found: int = 0     # two-sight frames with both sights boxed at IoU >= 0.5

    def add(self, truths: Sequence[tuple[str, Sequence[float]]], detections: Sequence[Det]) -> None:
        """One frame: its true sights with normalised boxes (possibly none), and the detections, best first."""
        self.frames += 1
        if not truths:
            self.empty_frames += 1
            self.claimed += bool(detections)
            return
        if len(truths) >= 2:
            self.pair_frames += 1
            self.pairs_found += all(_best_iou(name, box, detections) >= 0.5 for name, box in truths)
            return
        self.sight_frames += 1
        (name, box), = truths
        if not detections:
            return
        self.answered += 1
        if detections[0][0] == name:
            self.correct += 1
            self.ious.append(_best_iou(name, box, detections))

    @property
    def top1(self) -> float:
        return self.correct / self.sight_frames if self.sight_frames else 0.0

    @property
    def mean_iou(self) -> float:
        return float(np.mean(self.ious)) if self.ious else 0.0

    @property
    def false_claims(self) -> float:
        """The share of no-sight frames answered with a sight."""
        return self.claimed / self.empty_frames if self.empty_frames else 0.0

    @property
    def both_boxed(self) -> float:
        """The share of two-sight frames with both sights boxed at IoU >= 0.5."""
        return self.pairs_found / self.pair_frames if self.pair_frames else 0.0

    def share_iou_at_least(self, level: float) -> float:
        return float(np.mean([v >= level for v in self.ious])) if self.ious else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"frames": self.frames, "sight_frames": self.sight_frames, "top1": round(self.top1, 4),
                "mean_iou": round(self.mean_iou, 4), "iou_ge_0.5": round(self.share_iou_at_least(0.5), 4),
                "answered": self.answered, "empty_frames": self.empty_frames,
                "false_claims": round(self.false_claims, 4), "pair_frames": self.pair_frames,
                "both_boxed": round(self.both_boxed, 4)}


def _best_iou(name: str, box: Sequence[float], detections: Sequence[Det]) -> float:
    return max((iou(box, d[2]) for d in detections if d[0] == name), default=0.0)


def frame_truths(frame: ClipFrame) -> list[tuple[str, tuple[float, float, float, float]]]:
    """A clip frame's true sights with normalised boxes, as ClipScore.add takes them."""
    return [(name, normalised(box)) for name, box in frame.truths]


def answers(detector: OnnxDetector, frames: Iterable[ClipFrame], input_size: int) -> list[list[Det]]:
    """Each frame through the served graph as the gateway runs it (one frame a call, stretched to the square
    input): its detections, best first, as ClipScore.add takes them."""
    out = []
    for frame in frames:
        (found,) = detector.detect(preprocess(frame.rgb, input_size)[None])
        out.append([(d.sight, d.score, d.box) for d in found])
    return out


def score_clip(detector: OnnxDetector, frames: Iterable[ClipFrame], input_size: int) -> ClipScore:
    """The open-world checks (ClipScore) of `frames` through the served graph."""
    score = ClipScore()
    for frame in frames:  # one at a time: a clip's frames need not all fit in memory
        (found,) = answers(detector, [frame], input_size)
        score.add(frame_truths(frame), found)
    return score
