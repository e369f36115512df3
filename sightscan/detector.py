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
