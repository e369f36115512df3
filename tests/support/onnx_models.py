"""Small but real SightScan detectors built with the `onnx` helper API (no torch), for tests and the benchmark.

The colour model classifies a frame by its mean colour: it keeps one prototype RGB per class and answers the
nearest ones, with softmax scores over negative squared distances and a fixed box per class. That is enough to
name the sight of a synthetic clip whose sights differ in colour, and its output really depends on the image.
With `backbone=True` a stack of strided 3x3 convolutions (random weights, a mobile-sized cost) runs first and is
added with weight zero, so benchmarks pay a realistic inference cost while the answers stay the colour model's.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name=name)


def build_colour_model(prototypes: np.ndarray, boxes: np.ndarray, top_k: int = 3, temperature: float = 0.002,
                       backbone: bool = False, seed: int = 0, width: float = 1.0) -> bytes:
    """prototypes: [C, 3] mean RGB in 0..1 per class; boxes: [C, 4] normalised box per class. Returns ONNX bytes.

    width scales the backbone's channels (its cost grows about with width squared)."""
    prototypes = np.asarray(prototypes, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    n_classes = prototypes.shape[0]
    if prototypes.shape != (n_classes, 3) or boxes.shape != (n_classes, 4):
        raise ValueError(f"prototypes must be [C,3] and boxes [C,4], got {prototypes.shape} and {boxes.shape}")
    k = min(top_k, n_classes)
    inits = [
        _const("axes_hw", np.array([2, 3], dtype=np.int64)),
        _const("axes_c", np.array([2], dtype=np.int64)),
        _const("axis_1", np.array([1], dtype=np.int64)),
        _const("prototypes", prototypes),
        _const("class_boxes", boxes),
        _const("neg_inv_t", np.array(-1.0 / temperature, dtype=np.float32)),
        _const("k", np.array([k], dtype=np.int64)),
    ]
    nodes = []
    source = "images"
    if backbone:
        rng = np.random.default_rng(seed)
        channels = [3] + [max(4, int(c * width)) for c in (16, 32, 64, 128)]
        x = "images"
        for i, (cin, cout) in enumerate(zip(channels, channels[1:], strict=False)):
            w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
            inits.append(_const(f"w{i}", w))
            inits.append(_const(f"b{i}", np.zeros(cout, dtype=np.float32)))
            nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3],
                                          strides=[2, 2], pads=[1, 1, 1, 1]))
            nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
            x = f"r{i}"
        # [N,128,h,w] -> one scalar per image, times zero, broadcast back onto the input: the graph must run the
        # backbone (it feeds the output) but the answer is the colour head's.
        inits.append(_const("zero", np.array(0.0, dtype=np.float32)))
        nodes += [
            helper.make_node("ReduceMean", [x, "axes_hw"], ["feat"], keepdims=0),
            helper.make_node("ReduceMean", ["feat", "axis_1"], ["feat1"], keepdims=1),
            helper.make_node("Mul", ["feat1", "zero"], ["feat0"]),
            helper.make_node("Unsqueeze", ["feat0", "axes_hw"], ["feat0u"]),
            helper.make_node("Add", ["images", "feat0u"], ["images_b"]),
        ]
        source = "images_b"
    nodes += [
        helper.make_node("ReduceMean", [source, "axes_hw"], ["mean"], keepdims=0),            # [N,3]
        helper.make_node("Unsqueeze", ["mean", "axis_1"], ["mean_u"]),                        # [N,1,3]
        helper.make_node("Sub", ["mean_u", "prototypes"], ["diff"]),                          # [N,C,3]
        helper.make_node("Mul", ["diff", "diff"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axes_c"], ["dist"], keepdims=0),                # [N,C]
        helper.make_node("Mul", ["dist", "neg_inv_t"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("TopK", ["probs", "k"], ["scores", "classes"], axis=1, largest=1, sorted=1),
        helper.make_node("Gather", ["class_boxes", "classes"], ["boxes"], axis=0),           # [N,K,4]
    ]
    graph = helper.make_graph(
        nodes, "sightscan_colour_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "S", "S"])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", k, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", k]),
         helper.make_tensor_value_info("classes", TensorProto.INT64, ["N", k])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sightscan-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def solid_colour_model(colours: dict[str, tuple[int, int, int]], backbone: bool = False) -> tuple[bytes, list[str]]:
    """A model whose classes are named solid colours (RGB 0..255): handy for protocol tests. Returns (onnx, classes)."""
    names = list(colours)
    protos = np.array([colours[n] for n in names], dtype=np.float32) / 255.0
    boxes = np.tile(np.array([[0.1, 0.1, 0.9, 0.9]], dtype=np.float32), (len(names), 1))
    return build_colour_model(protos, boxes, backbone=backbone), names
