"""sightscan.model_metrics: a model row's metrics as named figures that say what was measured, and on what."""

from __future__ import annotations

from sightscan.model_metrics import LEGACY_BASIS, NO_TRUE_BOXES, figures, is_legacy

NEW = {
    "top1": 0.975, "map50": 0.612, "map": 0.301, "box_images_heldout": 12, "heldout_images": 40,
    "train_images": 160, "labels": {"image_level": 150, "boxes": 10},
    "confusion": {"classes": ["Old Tower", "Harbour Gate"], "matrix": [[20, 1], [0, 19]]},
    "method": "CAM pseudo-boxes + PSOL box regression, 1 self-training round",
    "backbone": "resnet18", "pretrained": False, "train_seconds": 192.4, "epochs_run": 30, "best_epoch": 24,
    "device": "cpu", "onnx_check": {"max_abs_diff": 1e-5},
}


def by_key(metrics: dict) -> dict[str, dict]:
    return {f["key"]: f for f in figures(metrics)}


def test_new_metrics_are_named_with_their_basis() -> None:
    figs = figures(NEW)
    assert all(set(f) == {"key", "name", "value", "display", "basis", "group"} for f in figs)
    assert [f["key"] for f in figs if f["group"] == "measured"] == ["top1", "map50", "map", "confusion",
                                                                    "heldout_images"]
    assert [f["key"] for f in figs][:4] == ["top1", "map50", "map", "confusion"]  # the telling ones first
    f = by_key(NEW)
    assert f["top1"] == {"key": "top1", "name": "Held-out top-1 sight accuracy", "value": 0.975,
                         "display": "97.5 %", "basis": "40 held-out images, image-level labels",
                         "group": "measured"}
    assert (f["map50"]["name"], f["map50"]["display"], f["map50"]["basis"]) == (
        "Box mAP@0.5 (true boxes only)", "0.612", "12 held-out images with true boxes, every sight in them")
    assert f["map"]["name"] == "Box mAP@0.5:0.95 (true boxes only)"
    assert f["confusion"]["value"] == NEW["confusion"]
    assert f["confusion"]["display"] == "39 of 40 held-out images on the diagonal"
    assert "rows: true sight, columns: predicted" in f["confusion"]["name"]
    assert f["train_images"]["basis"] == "150 with weak image-level labels, 10 with true boxes"
    assert f["method"]["display"].startswith("CAM pseudo-boxes")
    assert f["backbone"]["display"] == "resnet18, trained from scratch (no ImageNet weights)"
    assert (f["epochs_run"]["display"], f["train_seconds"]["display"], f["device"]["display"]) == (
        "30 (best: 24)", "3 min 12 s", "cpu")
    assert "onnx_check" not in f  # not a figure; still in the raw metrics
    assert not is_legacy(NEW)


def test_null_map50_says_there_were_no_true_boxes_rather_than_a_number() -> None:
    f = by_key({**NEW, "map50": None, "map": None, "box_images_heldout": 0, "labels": {"image_level": 160},
                "train_images": None})
    assert f["map50"] == {"key": "map50", "name": "Box mAP@0.5 (true boxes only)", "value": None,
                          "display": "not measured", "basis": NO_TRUE_BOXES, "group": "measured"}
    assert f["map"]["value"] is None and f["map"]["basis"] == NO_TRUE_BOXES
    assert f["top1"]["display"] == "97.5 %"
    assert (f["train_images"]["value"], f["train_images"]["basis"]) == (160, "160 with weak image-level labels")


def test_a_legacy_row_is_marked_as_weak_box_agreement() -> None:
    legacy = {"map50": 0.9, "map": 0.71, "train_images": 30, "heldout_images": 8, "backbone": "resnet18",
              "pretrained": True, "epochs_run": 12, "best_epoch": 12, "train_seconds": 42.04, "device": "cpu"}
    assert is_legacy(legacy) and is_legacy({"map50": 0.9})
    f = by_key(legacy)
    assert "top1" not in f and "confusion" not in f
    assert f["map50"]["name"] == "Box mAP@0.5 (legacy: whole-image weak boxes)"
    assert f["map50"]["basis"] == LEGACY_BASIS == "agreement with whole-image weak boxes, not a measure of recognition"
    assert f["map"]["basis"] == LEGACY_BASIS and f["map50"]["display"] == "0.900"
    assert (f["backbone"]["display"], f["train_seconds"]["display"]) == ("resnet18, ImageNet-pretrained", "42.0 s")


def test_absent_and_malformed_values_are_left_out() -> None:
    assert figures(None) == [] and figures({}) == []
    assert [f["key"] for f in figures({"top1": 0.5})] == ["top1"]
    assert by_key({"top1": 0.5})["top1"]["basis"] == "held-out images, image-level labels"
    bad = {"top1": "high", "map50": True, "heldout_images": -3, "train_seconds": "slow", "device": 7,
           "labels": [1, 2], "confusion": {"classes": ["A", "B"], "matrix": [[1, 2]]}}
    f = by_key(bad)
    assert f == {}
    assert by_key({"confusion": {"classes": ["A"], "matrix": [[1.5]]}}) == {}


def test_the_served_graph_is_named_with_its_reason() -> None:
    graph = {"served": "int8", "reason": "int8 within tolerance of fp32 on the held-out split",
             "bytes": {"fp32": 10_083_405, "int8": 2_865_629}}
    f = by_key({**NEW, "graph": graph})["graph"]
    assert (f["name"], f["value"], f["display"], f["basis"], f["group"]) == (
        "Served graph", "int8", "int8 (2.9 MB)", graph["reason"], "training")
    assert by_key({**NEW, "graph": {"served": "fp32"}})["graph"]["display"] == "fp32"
    assert "graph" not in by_key({**NEW, "graph": {"served": "bf16"}}) and "graph" not in by_key(NEW)
