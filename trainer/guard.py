"""The poisoning guard: a model that learned from users' corrections replaces the live one only if it does not do
worse on data no user can change.

The rule (trainer/README.md says why): when the candidate trained on any user sample and the city has a live model,
both are run, through their ONNX graphs as the gateway runs them, on the same images:
- the candidate's held-out sight images, which come from the labeller only (trainer/data.py training_split), and
  whose sight both models know;
- the held-out "no sight" images the candidate was calibrated on (away crops of those photos, and the labeller's
  photos of no sight).
Two figures each, at each model's own operating threshold (inside its graph):
- top-1: held-out sight images whose best detection is their own sight (a missed sight counts as wrong);
- false claims: "no sight" images answered with any sight.
The candidate is refused when its top-1 is lower than the live model's by more than `top1_tolerance`, or its
false-claim rate higher by more than `false_claim_tolerance`; each tolerance is at least two images' worth of its
set, so one image that flips between two honest models never refuses one.

The comparison is fair only on images the live model did not train on: a retrained model holds out what the live
model held out first, then newer images (trainer/data.py `split`), and the guard scores only the held-out images
the live model held out too or never saw (its metrics' `heldout_ids` and `max_image_id`). A live model that did not
record them (trained before this guard) is not compared with: the candidate is taken, and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from sightscan.db import StoredModel
from sightscan.detector import ContractError, OnnxDetector
from trainer.data import Previous, Sample, decode

log = logging.getLogger(__name__)

BATCH = 32


class Rejected(Exception):
    """The candidate did worse than the live model on the labeller's held-out images: no model row is stored. The
    message is the reason; `guard` holds the figures."""

    def __init__(self, reason: str, guard: dict[str, Any]) -> None:
        super().__init__(reason)
        self.guard = guard


@dataclass(frozen=True)
class Figures:
    top1: float           # held-out sight images answered with their own sight first
    false_claims: float   # "no sight" images answered with a sight
    images: int
    negatives: int
    # Also scored, for the int8 check (trainer/quantize.py): sight images whose own sight is answered at all, the
    # mean IoU of that detection's box against the true box (images with true boxes; None without any), and each
    # sight image's own-sight box (None where missed), to compare two graphs' boxes where no true box is known.
    recall: float = 0.0
    box_iou: float | None = None
    own_boxes: tuple[tuple[float, ...] | None, ...] = ()

    def as_dict(self, boxes: bool = False) -> dict[str, Any]:
        """The guard's figures; with `boxes`, recall and box IoU too."""
        out: dict[str, Any] = {"top1": round(self.top1, 4), "false_claims": round(self.false_claims, 4),
                               "images": self.images, "negatives": self.negatives}
        if boxes:
            out.update(recall=round(self.recall, 4),
                       box_iou=None if self.box_iou is None else round(self.box_iou, 4))
        return out


def score(onnx: bytes, classes: Sequence[str], input_size: int, sights: Sequence[tuple[Sample, str]],
          negatives: torch.Tensor, threads: int = 0) -> Figures:
    """A model's guard figures: `sights` are (sample, its sight's name); `negatives` uint8 [K,3,S,S] frames."""
    detector = OnnxDetector(onnx, classes, input_size, threads=threads)
    right, own_boxes, ious = 0, [], []
    for i in range(0, len(sights), BATCH):
        chunk = sights[i:i + BATCH]
        batch = np.stack([decode(s, input_size) for s, _ in chunk]).transpose(0, 3, 1, 2).astype(np.float32) / 255
        for (sample, truth), found in zip(chunk, detector.detect(np.ascontiguousarray(batch)), strict=True):
            right += bool(found) and found[0].sight == truth
            own = next((d.box for d in found if d.sight == truth), None)
            own_boxes.append(own)
            truths = [b for b, c in zip(sample.boxes, sample.labels, strict=True) if c == sample.primary]
            if not sample.weak and truths:  # a weak sample's box is no location (trainer/data.py)
                ious.append(0.0 if own is None else float(box_iou(torch.tensor([own]), torch.tensor(truths)).max()))
    claims = 0
    for i in range(0, len(negatives), BATCH):
        chunk = negatives[i:i + BATCH].float() / 255.0
        if chunk.shape[-1] != input_size:
            chunk = F.interpolate(chunk, size=(input_size, input_size), mode="bilinear", align_corners=False)
        claims += sum(bool(found) for found in detector.detect(np.ascontiguousarray(chunk.numpy())))
    return Figures(right / max(1, len(sights)), claims / max(1, len(negatives)), len(sights), len(negatives),
                   recall=sum(b is not None for b in own_boxes) / max(1, len(sights)),
                   box_iou=float(np.mean(ious)) if ious else None, own_boxes=tuple(own_boxes))


def judge(onnx: bytes, input_size: int, live: StoredModel | None, heldout: Sequence[Sample], classes: Sequence[str],
          negatives: torch.Tensor, user_samples: int, top1_tolerance: float, false_claim_tolerance: float,
          threads: int = 0) -> dict[str, Any]:
    """The guard's verdict on a candidate (its ONNX graph, input size and classes) trained with `user_samples` user
    samples, held out `heldout`: {"checked", "accepted", "reason", figures...}; raises Rejected when refused."""
    if not user_samples:
        return {"checked": False, "accepted": True, "reason": "no corrections in the training set"}
    if live is None:
        return {"checked": False, "accepted": True, "reason": "no live model to compare with"}
    previous = Previous.of(live.metrics)
    if previous is None:
        return {"checked": False, "accepted": True, "live_version": live.version,
                "reason": "the live model did not record its held-out images (trained before the guard): not "
                          "comparable"}
    shared = set(classes) & set(live.classes)
    sights = [(s, classes[s.primary]) for s in heldout
              if not s.negative and classes[s.primary] in shared and previous.unseen(s.key)]
    if not sights:
        return {"checked": False, "accepted": True, "live_version": live.version,
                "reason": "no held-out image of a sight both models know that the live model did not train on"}
    try:
        theirs = score(live.onnx, live.classes, live.input_size, sights, negatives, threads)
    except ContractError as exc:  # a live model that cannot run is no standard to keep
        return {"checked": False, "accepted": True, "live_version": live.version,
                "reason": f"the live model does not run: {exc}"}
    ours = score(onnx, classes, input_size, sights, negatives, threads)
    top1_allowed = max(top1_tolerance, 2 / ours.images)
    claims_allowed = max(false_claim_tolerance, 2 / max(1, ours.negatives))
    verdict: dict[str, Any] = {
        "checked": True, "live_version": live.version, "candidate": ours.as_dict(), "live": theirs.as_dict(),
        "top1_tolerance": round(top1_allowed, 4), "false_claim_tolerance": round(claims_allowed, 4),
        "user_samples": user_samples}
    worse = []
    if ours.top1 < theirs.top1 - top1_allowed:
        worse.append(f"top-1 {ours.top1:.3f} against the live model's {theirs.top1:.3f} (tolerance "
                     f"{top1_allowed:.3f})")
    if ours.negatives and ours.false_claims > theirs.false_claims + claims_allowed:
        worse.append(f"false-claim rate {ours.false_claims:.3f} against {theirs.false_claims:.3f} (tolerance "
                     f"{claims_allowed:.3f})")
    log.info("guard", extra={k: v for k, v in verdict.items() if k != "checked"})
    if worse:
        reason = (f"the model trained with {user_samples} corrections does worse than live version {live.version} "
                  f"on {ours.images} held-out labeller images: " + "; ".join(worse))
        raise Rejected(reason, {**verdict, "accepted": False, "reason": reason})
    return {**verdict, "accepted": True, "reason": "no worse than the live model"}
