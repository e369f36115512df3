"""The detector, its serving graph and the ONNX contract of sightscan.detector, without training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sightscan.detector import INPUT_NAME, OUTPUT_NAMES
from trainer.export import check_onnx, export_onnx, session
from trainer.model import Detector, ExportWrapper, load_backbone_weights, pairwise_iou


@pytest.fixture(scope="module")
def detector() -> Detector:
    torch.manual_seed(0)
    return Detector(4).eval()


def test_serving_graph_follows_the_contract(detector):
    boxes, scores, classes = ExportWrapper(detector, 256, top_k=20)(torch.rand(2, 3, 256, 256))
    assert boxes.shape == (2, 20, 4) and scores.shape == (2, 20) and classes.shape == (2, 20)
    assert boxes.dtype == torch.float32 and scores.dtype == torch.float32 and classes.dtype == torch.int64
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all(), "scores must be sorted descending"
    assert ((classes >= 0) & (classes < 4)).all()


def test_fast_nms_leaves_no_overlapping_duplicates(detector):
    boxes, scores, classes = ExportWrapper(detector, 256, top_k=50)(torch.rand(1, 3, 256, 256))
    live = scores[0] > 0
    b, c = boxes[0][live], classes[0][live]
    iou = pairwise_iou(b[None])[0]
    same = c[:, None] == c[None, :]
    off_diagonal = ~torch.eye(len(b), dtype=torch.bool)
    assert not ((iou > 0.5 + 1e-4) & same & off_diagonal).any()


def test_pairwise_iou():
    b = torch.tensor([[[0, 0, 2, 2], [1, 1, 3, 3], [5, 5, 6, 6]]], dtype=torch.float32)
    iou = pairwise_iou(b)[0]
    assert iou[0, 1].item() == pytest.approx(1 / 7) and iou[0, 2].item() == 0 and iou[1, 1].item() == pytest.approx(1)


def test_onnx_export_matches_torch_and_has_a_dynamic_batch(detector):
    data = export_onnx(detector, 256)
    sess = session(data)
    assert [i.name for i in sess.get_inputs()] == [INPUT_NAME]
    assert tuple(o.name for o in sess.get_outputs()) == OUTPUT_NAMES
    for n in (1, 3):
        images = np.random.default_rng(n).random((n, 3, 256, 256), dtype=np.float32)
        boxes, scores, classes = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        assert boxes.shape == (n, 50, 4) and scores.shape == (n, 50) and classes.dtype == np.int64
        check = check_onnx(detector, data, images, 256)
        assert check.max_score_diff <= 1e-3 and check.class_agreement >= 0.99


def test_pretrained_backbone_weights_load_from_a_local_file(tmp_path):
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(1)
    reference = mobilenet_v3_small(weights=None)  # stands in for torchvision's downloaded ImageNet file
    path = tmp_path / "mobilenet_v3_small.pth"
    torch.save(reference.state_dict(), path)
    det = Detector(3, "mobilenet_v3_small")
    loaded, missing = load_backbone_weights(det, path)
    assert loaded == len(det.backbone.state_dict()) and missing == 0
    assert torch.equal(det.backbone.features[0][0].weight, reference.features[0][0].weight)
    # The ImageNet classifier head in the file is ignored, not an error.
    assert any(k.startswith("classifier.") for k in reference.state_dict())
