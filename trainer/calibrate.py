"""The operating threshold of the "no sight" rule, calibrated on held-out data for a stated false-claim rate.

A frame's open-set score is its best detection's probability under the softmax over sights and background
(trainer/model.py). On held-out images that show no sight (away crops of the held-out photos, and the city's
photos of no sight), the threshold is set so that at most `false_claim_rate` of them would be answered with a
sight; never below `floor`, because held-out negatives are few and a webcam sees more kinds of street than they
show.

The recall guard: the away crops are noisy negatives. A photo can show its sight twice, or a sight its pseudo-box
missed, and one such crop scores like a sight; with a few dozen negatives and a 2% target, that one crop alone
would set the threshold (seen: 0.99, keeping 38% of held-out sights while every clip frame with no sight scored
under 0.1). So the threshold is never above the level that keeps `min_recall` of the held-out sight images: where
the two targets conflict, recall wins and the metrics show the false-claim rate actually measured at it (the
model row says which rule set the threshold, `threshold_rule`).

The figures reported with it: the false-claim rate and the recall of sights at the threshold, and the AUROC of the
score (threshold-free: how well the score separates the two kinds of frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Calibration:
    threshold: float
    false_claim_rate: float    # held-out no-sight images answered with a sight, at the threshold
    recall: float              # held-out sight images whose sight is found, at the threshold
    auroc: float               # of the open-set score: sight images against no-sight images
    negatives: int
    positives: int
    rule: str = "false_claim_rate"   # which target set the threshold: false_claim_rate | min_recall | floor


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """The probability that a random positive scores above a random negative (ties count half)."""
    if not len(positive) or not len(negative):
        return float("nan")
    diff = positive[:, None] - negative[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def recall_ceiling(positive_found: np.ndarray, min_recall: float) -> float:
    """The highest threshold that still finds `min_recall` of the sight images (1.0 when there are none)."""
    found = np.sort(np.asarray(positive_found, dtype=np.float64))
    if not len(found) or min_recall <= 0:
        return 1.0
    # At most `missed` images may fall under the threshold: the threshold is the (missed+1)-th lowest score.
    missed = int(np.floor((1.0 - min_recall) * len(found)))
    return float(found[min(missed, len(found) - 1)])


def calibrate(negative_scores: np.ndarray, positive_found: np.ndarray, positive_scores: np.ndarray,
              false_claim_rate: float, floor: float, min_recall: float = 0.0) -> Calibration:
    """negative_scores [Nn]: best score on each held-out no-sight image; positive_found [Np]: the score of the
    image's own sight (0 when not found); positive_scores [Np]: each sight image's best score (any sight)."""
    negatives = np.sort(np.asarray(negative_scores, dtype=np.float64))[::-1]
    allowed = int(np.floor(false_claim_rate * len(negatives)))
    # Just above the (allowed+1)-th highest negative: at most `allowed` negatives reach the threshold.
    calibrated = float(np.nextafter(negatives[allowed], 1.0)) if len(negatives) > allowed else 0.0
    ceiling = recall_ceiling(positive_found, min_recall)
    threshold, rule = calibrated, "false_claim_rate"
    if threshold > ceiling:
        threshold, rule = ceiling, "min_recall"
    if threshold < floor:
        threshold, rule = floor, "floor"
    threshold = float(min(0.99, threshold))
    return Calibration(
        threshold=threshold,
        false_claim_rate=float((negatives >= threshold).mean()) if len(negatives) else float("nan"),
        recall=float((np.asarray(positive_found) >= threshold).mean()) if len(positive_found) else float("nan"),
        auroc=auroc(np.asarray(positive_scores, dtype=np.float64), negatives),
        negatives=len(negatives), positives=len(positive_found), rule=rule)
