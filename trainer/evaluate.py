"""Held-out evaluation: top-1 sight accuracy and the confusion matrix (image labels), and box mAP@0.5 and
mAP@0.5:0.95 with pycocotools (true boxes only: a weak label's box is not a location, so scoring against it would
measure nothing)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# COCO metrics are in pixels only for the area ranges; we score on a 1000x1000 frame so boxes keep full precision.
FRAME = 1000.0


def _xywh(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = (float(v) * FRAME for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def coco_map(classes: Sequence[str], truths: Sequence[tuple[Sequence[Sequence[float]], Sequence[int]]],
             detections: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """truths[i] = (boxes 0..1, labels); detections[i] = (boxes [K,4] 0..1, scores [K], classes [K]).

    Returns {"map50", "map", "per_sight": {name: {"map50", "map"}}}; a sight without held-out boxes is omitted.
    """
    gt: dict[str, Any] = {"images": [], "annotations": [],
                          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(classes)]}
    dets: list[dict[str, Any]] = []
    for i, ((boxes, labels), (dboxes, dscores, dclasses)) in enumerate(zip(truths, detections, strict=True)):
        gt["images"].append({"id": i + 1, "width": FRAME, "height": FRAME})
        for box, label in zip(boxes, labels, strict=True):
            xywh = _xywh(box)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1,
                                      "category_id": int(label) + 1, "bbox": xywh, "area": xywh[2] * xywh[3],
                                      "iscrowd": 0})
        for box, score, cls in zip(dboxes, dscores, dclasses, strict=True):
            xywh = _xywh(box)
            if score > 0 and xywh[2] > 0 and xywh[3] > 0:
                dets.append({"image_id": i + 1, "category_id": int(cls) + 1, "bbox": xywh, "score": float(score)})
    if not dets:
        return {"map50": 0.0, "map": 0.0, "per_sight": {n: {"map50": 0.0, "map": 0.0} for n in classes}}
    # pycocotools prints its progress and tables to stdout; keep the service's stdout clean.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # precision[T, R, K, A, M]: IoU thresholds x recall points x classes x area ranges x max-dets.
    precision = ev.eval["precision"][:, :, :, 0, -1]
    per_sight = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        if (p > -1).any():
            per_sight[classes[cat_id - 1]] = {"map50": _mean(p[0]), "map": _mean(p)}
    return {"map50": float(ev.stats[1]), "map": float(ev.stats[0]), "per_sight": per_sight}


def classification_report(classes: Sequence[str], truth: Sequence[int], predicted: Sequence[int]) -> dict[str, Any]:
    """{"top1", "per_sight_top1", "confusion": {"classes", "matrix"}}; matrix rows are true sights, columns
    predicted ones."""
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        matrix[int(t), int(p)] += 1
    per_row = matrix.sum(axis=1)
    return {
        "top1": float(np.trace(matrix) / max(1, matrix.sum())),
        "per_sight_top1": {c: float(matrix[i, i] / per_row[i]) for i, c in enumerate(classes) if per_row[i]},
        "confusion": {"classes": list(classes), "matrix": matrix.tolist()},
    }


def _mean(p: np.ndarray) -> float:
    valid = p[p > -1]
    return float(valid.mean()) if valid.size else 0.0
