"""ONNX export of the serving graph (sightscan.detector's contract) and its check against ONNX Runtime."""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from sightscan.detector import INPUT_NAME, OUTPUT_NAMES
from trainer.model import ExportWrapper, SightModel

log = logging.getLogger(__name__)


class ExportMismatch(RuntimeError):
    """ONNX Runtime's output differs from torch's beyond the tolerance."""


@dataclass(frozen=True)
class ExportCheck:
    max_box_diff: float
    max_score_diff: float
    class_agreement: float   # fraction of confident detections whose class matches


def export_onnx(model: SightModel, top_k: int = 50) -> bytes:
    """The sight model's serving graph (softmax, sorting, boxes inside) as ONNX bytes with a dynamic batch axis."""
    wrapper = ExportWrapper(model.cpu().eval(), top_k=top_k).eval()
    input_size = model.input_size
    example = torch.rand(2, 3, input_size, input_size)
    batch = torch.export.Dim("batch", min=1, max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter is chatty about its own internals
        program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=list(OUTPUT_NAMES), dynamic_shapes=({0: batch},),
                                    opset_version=18, verbose=False)
    buf = io.BytesIO()
    onnx.save_model(program.model_proto, buf)
    data = buf.getvalue()
    onnx.checker.check_model(onnx.load_model_from_string(data))
    return data


def probe_images(samples: list, size: int, count: int = 8) -> np.ndarray:
    """float32 [n,3,S,S]: the first `count` sight images of `samples` (trainer.data.Sample), for check_onnx."""
    from trainer.data import Tensors

    sights = [s for s in samples if not s.negative][:count]
    return Tensors.build(sights, size).images.numpy().astype(np.float32) / 255.0


def session(onnx_bytes: bytes, threads: int = 0):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


def check_onnx(model: SightModel, onnx_bytes: bytes, images: np.ndarray, top_k: int = 50,
               atol: float = 1e-3, min_score: float = 0.05) -> ExportCheck:
    """Run the same float32 [N,3,S,S] images through eager torch and ONNX Runtime and compare the detections.

    Compared: the sorted scores element-wise, and every confident torch detection (score >= min_score) against a
    matching onnxruntime detection (same class, score within atol) for its box.
    """
    with torch.no_grad():
        ref = [t.numpy() for t in ExportWrapper(model.cpu().eval(), top_k=top_k).eval()(
            torch.from_numpy(images))]
    got = session(onnx_bytes).run(list(OUTPUT_NAMES), {INPUT_NAME: images})
    for name, r, g in zip(OUTPUT_NAMES, ref, got, strict=True):
        if r.shape != g.shape:
            raise ExportMismatch(f"{name}: torch shape {r.shape} != onnxruntime shape {g.shape}")
    if got[2].dtype != np.int64:
        raise ExportMismatch(f"classes dtype {got[2].dtype}, expected int64")
    score_diff = float(np.abs(ref[1] - got[1]).max())
    # Near-equal scores may come out of top-K in either order, so each confident torch detection is matched to the
    # onnxruntime detection with the same class and a score within atol that has the closest box.
    box_diffs, agree = [], []
    for rb, rs, rc, gb, gs, gc in zip(*ref, *got, strict=True):
        for i in np.nonzero(rs >= min_score)[0]:
            same = (np.abs(gs - rs[i]) <= atol) & (gc == rc[i])
            agree.append(bool(same.any()))
            if same.any():
                box_diffs.append(float(np.abs(gb[same] - rb[i]).max(axis=1).min()))
    box_diff = max(box_diffs, default=0.0)
    agreement = float(np.mean(agree)) if agree else 1.0
    check = ExportCheck(box_diff, score_diff, agreement)
    log.info("onnx check", extra={"max_box_diff": box_diff, "max_score_diff": score_diff,
                                  "class_agreement": agreement})
    if score_diff > atol or box_diff > atol * 10 or agreement < 0.99:
        raise ExportMismatch(f"onnxruntime differs from torch: {check}")
    return check
