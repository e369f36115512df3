"""A model row's `metrics` JSON as readable, named figures: what each number is, and what it was measured on.

Why one place: the raw keys ("map50", "top1") do not say what was measured, and some of them mislead. Models
trained on weak image-level labels are judged by held-out top-1 sight accuracy; their box mAP counts only true
(Vision) boxes and is null when the held-out split has none. Older rows ("legacy": no "top1") scored mAP against
whole-image weak boxes, which measures agreement with those boxes, not recognition. The REST API (/api/cities) and
the web page both show `figures(metrics)`, so a number is never shown without its name and basis.

Each figure is {"key", "name", "value", "display", "basis", "group"}: `key` is the metrics key it comes from,
`value` the raw value (for "confusion": {"classes", "matrix"}, rows = true sight, columns = predicted), `display`
the value as text, `basis` what it was measured on (or None), `group` "measured" (how well the model does) or
"training" (how it was made). Absent or malformed values are left out.
"""

from __future__ import annotations

from typing import Any

Figure = dict[str, Any]

LEGACY_BASIS = "agreement with whole-image weak boxes, not a measure of recognition"
NO_TRUE_BOXES = "no true boxes in the held-out split"
# Keys only the image-level trainer writes: a row with any of them is not legacy, even if "top1" is missing.
_NEW_KEYS = ("top1", "confusion", "labels", "box_images_heldout", "method", "false_claim_rate")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _figure(key: str, name: str, value: Any, display: str, basis: str | None = None,
            group: str = "measured") -> Figure:
    return {"key": key, "name": name, "value": value, "display": display, "basis": basis, "group": group}


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def is_legacy(metrics: dict[str, Any]) -> bool:
    """Scored before image-level evaluation: mAP against whole-image weak boxes, no top-1 accuracy."""
    return not any(k in metrics for k in _NEW_KEYS) and ("map50" in metrics or "map" in metrics)


def confusion(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The held-out confusion matrix as {"classes", "matrix"} when well formed (square, one row per class)."""
    raw = metrics.get("confusion")
    if not isinstance(raw, dict):
        return None
    classes, matrix = raw.get("classes"), raw.get("matrix")
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes) and isinstance(matrix, list)
            and len(matrix) == len(classes) and classes):
        return None
    if not all(isinstance(row, list) and len(row) == len(classes) and all(_count(v) is not None for v in row)
               for row in matrix):
        return None
    return {"classes": classes, "matrix": matrix}


def _box_figures(metrics: dict[str, Any], legacy: bool) -> list[Figure]:
    out = []
    for key, what in (("map50", "Box mAP@0.5"), ("map", "Box mAP@0.5:0.95")):
        if key not in metrics:
            continue
        value = _number(metrics[key])
        if value is None and metrics[key] is not None:
            continue  # malformed
        if legacy:
            if value is not None:  # a legacy null was never written: nothing to show
                out.append(_figure(key, f"{what} (legacy: whole-image weak boxes)", value, f"{value:.3f}",
                                   LEGACY_BASIS))
            continue
        if value is None:
            out.append(_figure(key, f"{what} (true boxes only)", None, "not measured", NO_TRUE_BOXES))
            continue
        boxed = _count(metrics.get("box_images_heldout"))
        basis = (f"{boxed} held-out images with true boxes, every sight in them" if boxed is not None
                 else "held-out images with true boxes")
        out.append(_figure(key, f"{what} (true boxes only)", value, f"{value:.3f}", basis))
    return out


def _open_set_figures(metrics: dict[str, Any]) -> list[Figure]:
    """The "no sight" rule's figures: measured at the calibrated operating threshold on held-out images."""
    threshold = _number(metrics.get("threshold"))
    if threshold is None:
        return []
    negatives, photos = _count(metrics.get("heldout_negatives")), _count(metrics.get("heldout_negative_photos"))
    target = _number(metrics.get("false_claim_target"))
    where = f"at the operating threshold {threshold:.2f}"
    on_negatives = (f"{negatives} held-out images with no sight ({photos or 0} photos of no sight, the rest crops "
                    f"of held-out photos away from their sights)" if negatives is not None
                    else "held-out images with no sight")
    out = []
    rate = _number(metrics.get("false_claim_rate"))
    if rate is not None:
        out.append(_figure("false_claim_rate", f"No-sight images answered with a sight, {where}", rate,
                           f"{rate * 100:.1f} %" + (f" (target ≤ {target * 100:.0f} %)" if target is not None else ""),
                           on_negatives))
    recall = _number(metrics.get("recall"))
    if recall is not None:
        out.append(_figure("recall", f"Recall of sights, {where}", recall, f"{recall * 100:.1f} %",
                           "held-out sight images whose own sight is detected"))
    auroc = _number(metrics.get("auroc"))
    if auroc is not None:
        out.append(_figure("auroc", "AUROC of the open-set score (sight vs no-sight images)", auroc, f"{auroc:.3f}",
                           f"held-out sight images against {on_negatives}"))
    out.append(_figure("threshold", "Operating threshold (calibrated, inside the served graph)", threshold,
                       f"{threshold:.3f}", "set on held-out no-sight images for the target false-claim rate",
                       group="training"))
    return out


def _training_figures(metrics: dict[str, Any]) -> list[Figure]:
    out = []
    labels = metrics.get("labels") if isinstance(metrics.get("labels"), dict) else {}
    weak, boxes = _count(labels.get("image_level")), _count(labels.get("boxes"))
    train = _count(metrics.get("train_images"))
    if train is None and (weak is not None or boxes is not None):
        train = (weak or 0) + (boxes or 0)
    if train is not None:
        parts = [f"{n} {what}" for n, what in ((weak, "with weak image-level labels"), (boxes, "with true boxes"))
                 if n is not None]
        out.append(_figure("train_images", "Training images", train, str(train), ", ".join(parts) or None,
                           group="training"))
    if isinstance(metrics.get("method"), str) and metrics["method"].strip():
        out.append(_figure("method", "Training method", metrics["method"], metrics["method"].strip(),
                           group="training"))
    backbone = metrics.get("backbone") if isinstance(metrics.get("backbone"), str) else None
    pretrained = metrics.get("pretrained") if isinstance(metrics.get("pretrained"), bool) else None
    if backbone or pretrained is not None:
        start = {True: "ImageNet-pretrained", False: "trained from scratch (no ImageNet weights)", None: None}
        text = ", ".join(p for p in (backbone, start[pretrained]) if p)
        out.append(_figure("backbone", "Backbone", {"backbone": backbone, "pretrained": pretrained}, text,
                           group="training"))
    epochs, best = _count(metrics.get("epochs_run")), _count(metrics.get("best_epoch"))
    if epochs is not None:
        out.append(_figure("epochs_run", "Epochs run", epochs,
                           f"{epochs} (best: {best})" if best is not None else str(epochs),
                           "weights kept from the best held-out epoch" if best is not None else None,
                           group="training"))
    seconds = _number(metrics.get("train_seconds"))
    if seconds is not None and seconds >= 0:
        out.append(_figure("train_seconds", "Training time", seconds, _duration(seconds), group="training"))
    if isinstance(metrics.get("device"), str) and metrics["device"]:
        out.append(_figure("device", "Trained on", metrics["device"], metrics["device"], group="training"))
    graph = metrics.get("graph") if isinstance(metrics.get("graph"), dict) else {}
    if graph.get("served") in ("int8", "fp32"):  # trainer/quantize.py: which graph the gateway and the page get
        sizes = graph.get("bytes") if isinstance(graph.get("bytes"), dict) else {}
        size = _count(sizes.get(graph["served"]))
        reason = graph.get("reason") if isinstance(graph.get("reason"), str) else None
        out.append(_figure("graph", "Served graph", graph["served"],
                           graph["served"] + (f" ({size / 1e6:.1f} MB)" if size is not None else ""), reason,
                           group="training"))
    return out


def figures(metrics: dict[str, Any] | None) -> list[Figure]:
    """The readable figures of a model row's metrics, most telling first (see the module docstring)."""
    if not isinstance(metrics, dict):
        return []
    legacy = is_legacy(metrics)
    heldout = _count(metrics.get("heldout_images"))
    on_heldout = f"{heldout} held-out images" if heldout is not None else "held-out images"
    out: list[Figure] = []
    top1 = _number(metrics.get("top1"))
    if top1 is not None:
        basis = (f"{on_heldout}, image-level labels" if "threshold" not in metrics
                 else "held-out sight images: the top detection, before the no-sight threshold")
        out.append(_figure("top1", "Held-out top-1 sight accuracy", top1, f"{top1 * 100:.1f} %", basis))
    out += _open_set_figures(metrics)
    out += _box_figures(metrics, legacy)
    matrix = confusion(metrics)
    if matrix is not None:
        rows = matrix["matrix"]
        correct, total = sum(rows[i][i] for i in range(len(rows))), sum(map(sum, rows))
        out.append(_figure("confusion", "Held-out confusion matrix (rows: true sight, columns: predicted)",
                           matrix, f"{correct} of {total} held-out images on the diagonal",
                           f"{total} held-out images, image-level labels"))
    if heldout is not None:
        out.append(_figure("heldout_images", "Held-out images", heldout, str(heldout),
                           "kept out of training, used only to measure"))
    return out + _training_figures(metrics)
