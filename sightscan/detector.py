"""The model contract shared by the trainer (which exports it) and the gateway (which serves it).

A SightScan detector is an ONNX graph with
    input   "images"   float32 [N, 3, S, S]  RGB, values 0..1, the whole frame resized (stretched) to S×S
    outputs "boxes"    float32 [N, K, 4]     x_min, y_min, x_max, y_max normalised to 0..1 of the frame
            "scores"   float32 [N, K]        confidence 0..1, sorted descending
            "classes"  int64   [N, K]        index into the model row's class list
K is fixed by the graph (top-K after decoding); callers drop detections under their score threshold.
S is the model row's input_size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "classes")


def preprocess(rgb: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xSxS float32 in 0..1 (stretched to the square input, as the model was trained)."""
    from PIL import Image

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB array, got shape {rgb.shape}")
    if rgb.shape[0] != size or rgb.shape[1] != size:
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0


# Serving ---------------------------------------------------------------------------------------------------
# The ONNX Runtime detector both the gateway (live frames) and the trainer (evaluation of the export) use, so
# the two cannot disagree on how outputs are decoded. onnxruntime is imported lazily: importing this module for
# `preprocess` alone must not require it.


class ContractError(ValueError):
    """An ONNX graph that does not follow the SightScan detector contract; the message says how."""


@dataclass(frozen=True)
class Detection:
    class_index: int
    sight: str
    score: float
    box: tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in 0..1 of the frame

    def as_json(self) -> dict[str, Any]:
        return {"sight": self.sight, "score": round(self.score, 4), "box": [round(v, 4) for v in self.box]}


class OnnxDetector:
    """An ONNX Runtime session for one model row: batched NCHW float input in, decoded detections out."""

    def __init__(self, onnx: bytes, classes: Sequence[str], input_size: int, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # 0 lets ONNX Runtime use every core; callers on a shared machine pass a smaller number.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # ONNX Runtime's workers spin after each run by default, burning the cores that decode the next frames
        # (and that the JVMs of the stack share); idle workers should sleep.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(onnx, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise ContractError(f"not a loadable ONNX graph: {exc}") from exc
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = {o.name for o in self.session.get_outputs()}
        if inputs != [INPUT_NAME] or not set(OUTPUT_NAMES) <= outputs:
            raise ContractError(f"expected input {INPUT_NAME!r} and outputs {OUTPUT_NAMES}, "
                                f"got inputs {inputs} and outputs {sorted(outputs)}")
        if input_size <= 0:
            raise ContractError(f"input_size must be > 0, got {input_size}")
        self.classes = list(classes)
        self.input_size = input_size

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw outputs (boxes [N,K,4], scores [N,K], classes [N,K]) for a [N,3,S,S] float32 batch."""
        boxes, scores, classes = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        return boxes, scores, classes

    def detect(self, batch: np.ndarray, threshold: float = 0.0) -> list[list[Detection]]:
        """Detections per image of the batch, score >= threshold, dropping indices outside the class list."""
        boxes, scores, classes = self.run(batch)
        result: list[list[Detection]] = []
        for b, s, c in zip(boxes, scores, classes, strict=True):
            found = []
            for box, score, idx in zip(b, s, c, strict=True):
                idx = int(idx)
                if float(score) <= 0.0 or float(score) < threshold or not 0 <= idx < len(self.classes):
                    continue
                clipped = np.clip(box.astype(np.float64), 0.0, 1.0)
                found.append(Detection(idx, self.classes[idx], float(score), tuple(float(v) for v in clipped)))
            result.append(found)
        return result
