"""int8 serving: the exported graph quantized with ONNX Runtime's static QDQ quantization, served only when it
answers like the fp32 graph on the held-out split.

Why static QDQ: the int8 convolutions run about 1.5-2x faster than fp32 on a 2-core CPU and the graph is a third of
the size (issue 21: 4.9 -> 3.2 ms per frame at batch 1), and QDQ (QuantizeLinear/DequantizeLinear pairs around
float ops) is a plain ONNX graph that every runtime reads: ONNX Runtime fuses the pairs into integer kernels, and
onnxruntime-web's WebAssembly build runs QuantizeLinear/DequantizeLinear (opset 18) as they are.

What is quantized: the network only (the backbone and the dense head: every node a convolution's result depends
on). The post-processing after the head (softmax, the 2x2 score pooling, box voting, Fast NMS, the threshold,
top-K) stays float: it costs little, and its scores are compared with the calibrated threshold, where an 8-bit
step would move a frame across the "no sight" rule. Two recipes are tried in turn (FLOAT_STRIDES): every
convolution int8, then the first convolutions (stride 2 and 4 of the frame) float too: the boxes are voted from
cells whose margins are small, and 8-bit steps on the full-resolution pixels moved them most (a synthetic city's
held-out mean box IoU: 0.768 fp32, 0.709 all int8, 0.746-0.755 with these float; bench/int8/RESULTS.md).

Calibration: the activation ranges are measured on the city's own training photos (sights and photos of no sight),
preprocessed exactly as the served graph expects them (trainer/data.py Tensors.build, 0..1).

The decision (`decide`): both graphs are scored on the held-out split by the guard's evaluation of a graph as the
gateway runs it (trainer/guard.py `score`), and int8 is served only when its top-1, false-claim rate, recall and
mean box IoU stay within the tolerances (trainer/settings.py, TRAINER_INT8_*) of fp32's: the first recipe that does
is served. Otherwise, or when quantization fails, the fp32 graph is served and metrics["graph"] says why.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torchvision.ops import box_iou

from sightscan.detector import INPUT_NAME
from trainer.config import Tolerance
from trainer.data import Sample, Tensors
from trainer.guard import Figures, score

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 30   # issue 21's check: 30 frames were enough for the same top sight on a whole clip
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
# The recipes tried, in order, each a stride of the frame at or under which convolutions stay float (0: none):
# every convolution int8 is the fastest (about 0.6x fp32's time at batch 1, 0.4x at batch 8); the first
# convolutions float moved the voted boxes less, for about half the speed-up (bench/int8/RESULTS.md).
FLOAT_STRIDES = (0, 4)
Box = tuple[float, float, float, float]


class CalibrationImages:
    """onnxruntime.quantization's CalibrationDataReader over float32 [N,3,S,S] images, one batch at a time."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = 8) -> None:
        self._batches = [{input_name: np.ascontiguousarray(images[i:i + batch])}
                         for i in range(0, len(images), batch)]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return self._batches[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def calibration_images(samples: Sequence[Sample], size: int, count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """float32 [n,3,S,S] in 0..1: `count` training images spread evenly over `samples` (so every sight and the
    photos of no sight are in), preprocessed as the graph is fed (trainer/export.py probe_images does the same)."""
    if not samples:
        raise ValueError("no training images to calibrate on")
    step = max(1, len(samples) // count)
    picked = list(samples)[::step][:count]
    return Tensors.build(picked, size).images.numpy().astype(np.float32) / 255.0


def network_nodes(model: onnx.ModelProto) -> list[str]:
    """The names of the nodes the network's convolutions depend on, the convolutions included: the backbone and the
    head, without the post-processing after them."""
    producer = {out: node for node in model.graph.node for out in node.output}
    keep: dict[str, onnx.NodeProto] = {}
    stack = [node for node in model.graph.node if node.op_type in QUANTIZED_OPS]
    while stack:
        node = stack.pop()
        if node.name in keep:
            continue
        keep[node.name] = node
        stack.extend(producer[i] for i in node.input if i in producer)
    return [node.name for node in model.graph.node if node.name in keep]


def fine_convs(model: onnx.ModelProto, input_size: int, stride: int) -> set[str]:
    """The convolutions whose output is at `stride` of the frame or finer (shapes from ONNX shape inference)."""
    if stride <= 0:
        return set()
    shapes = {v.name: v.type.tensor_type.shape.dim for v in model.graph.value_info}
    out = set()
    for node in model.graph.node:
        dims = shapes.get(node.output[0]) if node.op_type == "Conv" else None
        if dims is not None and len(dims) == 4 and dims[2].dim_value and dims[2].dim_value * stride >= input_size:
            out.add(node.name)
    return out


def quantize(onnx_fp32: bytes, calibration: np.ndarray, float_stride: int = 0) -> bytes:
    """The fp32 serving graph with its network quantized to int8 (static QDQ, per-channel int8 weights, uint8
    activations calibrated by min/max on `calibration`); convolutions at `float_stride` of the frame or finer
    (0: none) left float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load_model_from_string(onnx_fp32)
    # Every node needs a name for nodes_to_quantize; the exporter names them, but a graph may not.
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"node_{i}"
    with tempfile.TemporaryDirectory(prefix="sightscan-int8-") as tmp:
        named, prepared, out = (Path(tmp) / n for n in ("named.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save_model(model, named)
        # ONNX shape inference and ONNX Runtime's graph optimisations first (folds constants), as ONNX Runtime
        # recommends before quantizing. (Its symbolic shape inference gives up on the post-processing's shapes.)
        quant_pre_process(str(named), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load_model(prepared)
        fine = fine_convs(graph, calibration.shape[-1], float_stride)
        # The file, not the loaded graph: quantize_static rewrites a ModelProto it is given in place.
        quantize_static(
            str(prepared), out, CalibrationImages(calibration, INPUT_NAME),
            quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
            nodes_to_quantize=[n for n in network_nodes(graph) if n not in fine])
        return out.read_bytes()


def box_agreement(fp32: Figures, int8: Figures) -> float | None:
    """Mean IoU of int8's box against fp32's, over the sight images both graphs answer with their own sight."""
    pairs = [(a, b) for a, b in zip(fp32.own_boxes, int8.own_boxes, strict=True) if a is not None and b is not None]
    if not pairs:
        return None
    ious = box_iou(torch.tensor([a for a, _ in pairs]), torch.tensor([b for _, b in pairs])).diagonal()
    return float(ious.mean())


def differences(fp32: Figures, int8: Figures, tol: Tolerance) -> list[str]:
    """The reasons int8 is not served: each figure that moved past its tolerance (none: int8 is served)."""
    worse = []
    if int8.top1 < fp32.top1 - tol.top1:
        worse.append(f"top-1 {int8.top1:.3f} against fp32's {fp32.top1:.3f} (tolerance {tol.top1})")
    if int8.negatives and int8.false_claims > fp32.false_claims + tol.false_claims:
        worse.append(f"false-claim rate {int8.false_claims:.3f} against fp32's {fp32.false_claims:.3f} "
                     f"(tolerance {tol.false_claims})")
    if int8.recall < fp32.recall - tol.recall:
        worse.append(f"recall {int8.recall:.3f} against fp32's {fp32.recall:.3f} (tolerance {tol.recall})")
    if fp32.box_iou is not None and (int8.box_iou is None or int8.box_iou < fp32.box_iou - tol.box_iou):
        worse.append(f"mean box IoU {int8.box_iou or 0.0:.3f} against fp32's {fp32.box_iou:.3f} "
                     f"(tolerance {tol.box_iou})")
    return worse


def with_known_boxes(heldout: Sequence[Sample], boxes: Sequence[Sequence[Box]] | None) -> list[Sample]:
    """The held-out sight images, a weak one with its pseudo-box as its box (`boxes`: trainer/train.py
    TrainResult.heldout_boxes, one entry per sight image), so boxes are scored in a city of weak labels too."""
    sights = [s for s in heldout if not s.negative]
    if boxes is None:
        return sights
    return [dataclasses.replace(s, boxes=tuple(tuple(b) for b in known), labels=(s.primary,) * len(known),
                                weak=False) if s.weak and known else s
            for s, known in zip(sights, boxes, strict=True)]


def decide(onnx_fp32: bytes, train: Sequence[Sample], heldout: Sequence[Sample], classes: Sequence[str],
           input_size: int, negatives: torch.Tensor, tolerance: Tolerance, threads: int = 0,
           enabled: bool = True, heldout_boxes: Sequence[Sequence[Box]] | None = None) -> tuple[bytes, dict[str, Any]]:
    """The graph to serve, and metrics["graph"]: {"served": "int8"|"fp32", "reason", "fp32", "int8" (their held-out
    figures; int8's of the recipe served, or of the last tried), "tried" (each recipe of FLOAT_STRIDES tried, with
    its figures and differences), "bytes", "tolerance", "box_truth", "seconds"}. Never raises: when quantizing or
    scoring the int8 graph fails, fp32 is served and the reason says why.

    Boxes are scored against the held-out true boxes, and a weak image's pseudo-box where `heldout_boxes` gives it
    (the trainer's own guess, but the same for both graphs)."""
    started = time.monotonic()
    info: dict[str, Any] = {"served": "fp32", "bytes": {"fp32": len(onnx_fp32)},
                            "tolerance": dataclasses.asdict(tolerance)}
    if not enabled:
        return onnx_fp32, {**info, "reason": "int8 serving is off (TRAINER_INT8=0)"}
    scored = with_known_boxes(heldout, heldout_boxes)
    sights = [(s, classes[s.primary]) for s in scored]
    info["box_truth"] = {"true": sum(not s.weak for s in heldout if not s.negative),
                         "pseudo": sum(s.weak for s in heldout if not s.negative) - sum(s.weak for s in scored)}
    try:
        calibration = calibration_images(train, input_size)
        fp32 = score(onnx_fp32, classes, input_size, sights, negatives, threads)
        info["fp32"] = fp32.as_dict(boxes=True)
        tried = []
        for stride in FLOAT_STRIDES:  # the fastest first; the next only when it answers unlike fp32
            onnx_int8 = quantize(onnx_fp32, calibration, stride)
            int8 = score(onnx_int8, classes, input_size, sights, negatives, threads)
            agreement = box_agreement(fp32, int8)
            worse = differences(fp32, int8, tolerance) if sights else [
                "no held-out sight images to compare the graphs on"]
            tried.append({"float_stride": stride, "bytes": len(onnx_int8), **int8.as_dict(boxes=True),
                          "box_agreement": None if agreement is None else round(agreement, 4), "differs": worse})
            if not worse:
                break
    except Exception as exc:  # onnxruntime.quantization raises many kinds; a model is never lost to it
        log.warning("int8 quantization failed; serving fp32", exc_info=True)
        return onnx_fp32, {**info, "reason": f"quantization failed: {type(exc).__name__}: {exc}",
                           "seconds": round(time.monotonic() - started, 2)}
    last = tried[-1]
    info["bytes"]["int8"] = last["bytes"]
    info.update(int8={k: v for k, v in last.items() if k not in ("bytes", "differs")}, tried=tried,
                served="fp32" if worse else "int8", seconds=round(time.monotonic() - started, 2),
                reason=("int8 differs from fp32 on the held-out split: " + "; ".join(worse)) if worse
                else f"int8 within tolerance of fp32 on the held-out split (float_stride {last['float_stride']})")
    log.info("served graph", extra={k: info[k] for k in ("served", "reason", "bytes", "seconds")})
    return (onnx_fp32 if worse else onnx_int8), info
