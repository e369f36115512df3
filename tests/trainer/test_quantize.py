"""int8 serving (trainer/quantize.py) without training: a real ONNX detector with a convolutional backbone
(tests/support/onnx_models.py) is quantized, scored against its fp32 graph on held-out images, and served as int8
only within the tolerances; a worse graph or a failed quantization leaves fp32 served with the reason."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from sightscan.detector import OnnxDetector
from tests.support.onnx_models import build_colour_model
from trainer import quantize as quantize_module
from trainer.config import Tolerance
from trainer.data import Sample
from trainer.guard import Figures
from trainer.quantize import decide, differences, network_nodes, quantize, with_known_boxes

CLASSES = ["Red Gate", "Green Tower", "Blue Bridge"]
RGB = [(220, 30, 30), (30, 200, 40), (30, 40, 220)]
GREY = (128, 128, 128)
BOX = (0.1, 0.2, 0.6, 0.9)
SIZE = 32
NEGATIVES = torch.full((6, 3, SIZE, SIZE), 128, dtype=torch.uint8)


def _jpeg(rgb: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), rgb).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _model(colours: list[tuple[int, int, int]]) -> bytes:
    """A colour detector behind a conv backbone (the part int8 quantizes); the 4th prototype, grey, is "no sight"
    (an index outside the class list, which the detector drops)."""
    return build_colour_model(np.array(colours, np.float32) / 255.0,
                              np.tile(np.array([BOX], np.float32), (len(colours), 1)), backbone=True, width=0.25)


FP32 = _model([*RGB, GREY])


def _samples(first: int, per_sight: int) -> list[Sample]:
    return [Sample(first + 10 * k + i, _jpeg(RGB[k]), (BOX,), (k,)) for k in range(3) for i in range(per_sight)]


def _decide(onnx_fp32: bytes = FP32, enabled: bool = True):
    return decide(onnx_fp32, _samples(1, 4) + [Sample(99, _jpeg(GREY), (), ())], _samples(100, 3), CLASSES, SIZE,
                  NEGATIVES, Tolerance(), threads=1, enabled=enabled)


def test_the_int8_graph_is_served_when_it_answers_like_fp32():
    served, info = _decide()
    assert info["served"] == "int8" and "within tolerance" in info["reason"]
    graph = onnx.load_model_from_string(served)
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # Only the network is quantized: the answer's post-processing (softmax, top-K) reads float.
    producers = {o: n.op_type for n in graph.graph.node for o in n.output}
    for node in graph.graph.node:
        if node.op_type in ("Softmax", "TopK"):
            assert all(producers.get(i) != "DequantizeLinear" for i in node.input)
    assert info["bytes"]["int8"] == len(served) < info["bytes"]["fp32"] == len(FP32)
    assert info["int8"] == {**info["fp32"], "box_agreement": 1.0, "float_stride": 0}   # the fastest recipe did
    assert [t["float_stride"] for t in info["tried"]] == [0]
    assert info["fp32"]["top1"] == 1.0 and info["fp32"]["false_claims"] == 0.0 and info["fp32"]["box_iou"] == 1.0
    assert info["tolerance"] == {"top1": 0.01, "false_claims": 0.02, "recall": 0.02, "box_iou": 0.02}
    # It runs as the gateway runs it, batched.
    batch = np.random.default_rng(0).random((8, 3, SIZE, SIZE), dtype=np.float32)
    assert OnnxDetector(served, CLASSES, SIZE, threads=1).run(batch)[1].shape[0] == 8


def test_a_quantized_graph_that_answers_worse_is_not_served(monkeypatch):
    swapped = _model([RGB[1], RGB[0], RGB[2], GREY])   # names the red gate green and the green tower red
    monkeypatch.setattr(quantize_module, "quantize", lambda onnx_fp32, calibration, float_stride=0: swapped)
    served, info = _decide()
    assert served == FP32 and info["served"] == "fp32"
    assert "top-1 0.333 against fp32's 1.000 (tolerance 0.01)" in info["reason"]
    assert info["int8"]["top1"] == pytest.approx(1 / 3, abs=1e-3)
    assert [(t["float_stride"], t["differs"][0][:5]) for t in info["tried"]] == [(0, "top-1"), (4, "top-1")]


def test_the_next_recipe_is_served_when_the_fastest_answers_worse(monkeypatch):
    swapped = _model([RGB[1], RGB[0], RGB[2], GREY])
    real = quantize_module.quantize
    monkeypatch.setattr(quantize_module, "quantize", lambda onnx_fp32, calibration, float_stride=0:
                        swapped if float_stride == 0 else real(onnx_fp32, calibration, float_stride))
    served, info = _decide()
    assert info["served"] == "int8" and info["int8"]["float_stride"] == 4 and served != swapped
    assert "(float_stride 4)" in info["reason"] and len(info["tried"]) == 2


def test_a_failed_quantization_serves_fp32_and_says_why(monkeypatch):
    def fails(onnx_fp32: bytes, calibration: np.ndarray, float_stride: int = 0) -> bytes:
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(quantize_module, "quantize", fails)
    served, info = _decide()
    assert served == FP32 and info["served"] == "fp32"
    assert info["reason"] == "quantization failed: RuntimeError: unsupported op"
    served, info = _decide(enabled=False)
    assert served == FP32 and info["served"] == "fp32" and "TRAINER_INT8=0" in info["reason"]


def _figures(top1: float = 0.9, false_claims: float = 0.05, recall: float = 0.95,
             box_iou: float | None = 0.7) -> Figures:
    return Figures(top1, false_claims, 100, 50, recall, box_iou)


def test_each_figure_has_its_tolerance():
    tol = Tolerance()
    assert differences(_figures(), _figures(top1=0.891, false_claims=0.07, recall=0.93, box_iou=0.681), tol) == []
    worse = differences(_figures(), _figures(top1=0.88, false_claims=0.08, recall=0.92, box_iou=0.67), tol)
    assert [w.split(" ")[0] for w in worse] == ["top-1", "false-claim", "recall", "mean"]
    # Better is never worse.
    assert differences(_figures(), _figures(top1=1.0, false_claims=0.0, recall=1.0, box_iou=0.9), tol) == []
    # No boxes known: boxes are not compared.
    assert differences(_figures(box_iou=None), _figures(box_iou=None), tol) == []


def test_weak_held_out_images_are_scored_against_their_pseudo_boxes():
    weak = Sample(1, _jpeg(RGB[0]), ((0.0, 0.0, 1.0, 1.0),), (0,), weak=True)
    boxed = Sample(2, _jpeg(RGB[1]), (BOX,), (1,))
    nothing = Sample(3, _jpeg(GREY), (), ())
    scored = with_known_boxes([weak, nothing, boxed], [[(0.2, 0.2, 0.7, 0.8)], [BOX]])
    assert [(s.key, s.weak, s.boxes, s.labels) for s in scored] == [(1, False, ((0.2, 0.2, 0.7, 0.8),), (0,)),
                                                                    (2, False, (BOX,), (1,))]
    served, info = decide(FP32, _samples(1, 2), [weak, boxed], CLASSES, SIZE, NEGATIVES, Tolerance(), threads=1,
                          heldout_boxes=[[BOX], [BOX]])
    assert info["box_truth"] == {"true": 1, "pseudo": 1} and info["fp32"]["box_iou"] == 1.0


def test_the_post_processing_is_not_part_of_the_network():
    model = onnx.load_model_from_string(FP32)
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
    kept = {n.op_type for n in model.graph.node if n.name in set(network_nodes(model))}
    assert kept == {"Conv", "Relu"}


def test_quantize_keeps_the_contract():
    calibration = np.random.default_rng(1).random((4, 3, SIZE, SIZE), dtype=np.float32)
    int8 = quantize(FP32, calibration)
    graph = onnx.load_model_from_string(int8)
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["boxes", "scores", "classes"]
