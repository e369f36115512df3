"""The synthetic city renderer: deterministic bytes, the COCO folder the trainer and the web sources read, and a
webcam clip whose ground truth is right for every frame."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from localsystem.demo.city import CityInfo, H, W, clip_background, clip_frames, read_y4m, render_city, render_clip


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> CityInfo:
    out = tmp_path_factory.mktemp("city")
    info = render_city(out, city="Testopolis", seed=5, sights=3, per_sight=4)
    render_clip(out / "clip.y4m", info, seconds=3, fps=10)
    return info


def test_same_seed_same_bytes_other_seed_other_city(city: CityInfo, tmp_path: Path) -> None:
    again = render_city(tmp_path / "again", city="Testopolis", seed=5, sights=3, per_sight=4)
    render_clip(tmp_path / "again" / "clip.y4m", again, seconds=3, fps=10)
    assert again == CityInfo("Testopolis", 5, city.sights, 4, tmp_path / "again", "synthetic")
    assert _digest(tmp_path / "again") == _digest(city.folder)
    other = render_city(tmp_path / "other", city="Testopolis", seed=6, sights=3, per_sight=4)
    assert other.sights != city.sights
    assert _digest(tmp_path / "other")["images/00001.jpg"] != _digest(city.folder)["images/00001.jpg"]


def test_the_folder_is_a_coco_dataset_of_the_sights(city: CityInfo) -> None:
    coco = json.loads(city.annotations.read_text())
    assert (coco["city"], coco["seed"]) == ("Testopolis", 5)
    assert [c["name"] for c in coco["categories"]] == list(city.sights) and len(set(city.sights)) == 3
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    assert len(coco["images"]) == 12
    assert Counter(img["query_sight"] for img in coco["images"]) == {s: 4 for s in city.sights}
    for img in coco["images"]:
        assert (city.folder / img["file_name"]).read_bytes()[:2] == b"\xff\xd8"  # JPEG
        assert (img["width"], img["height"]) == (W, H)
    boxed = {a["image_id"] for a in coco["annotations"]}
    assert boxed == {img["id"] for img in coco["images"]}  # every photo shows its sight
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and w >= 8 and h >= 8 and x + w <= W and y + h <= H
        assert a["area"] == w * h and a["category_id"] in (1, 2, 3)
    assert CityInfo.load(city.folder) == city


def test_negatives_are_photos_of_the_street_with_no_sight(city: CityInfo, tmp_path: Path) -> None:
    info = render_city(tmp_path / "neg", city="Testopolis", seed=5, sights=3, per_sight=4, negatives=3)
    coco = json.loads(info.annotations.read_text())
    negatives = [img for img in coco["images"] if img["query_sight"] is None]
    assert len(negatives) == 3 and len(coco["images"]) == 15
    assert not {a["image_id"] for a in coco["annotations"]} & {img["id"] for img in negatives}
    # The sight photos are the same bytes as without negatives: they come from their own stream.
    with_neg, without = _digest(info.folder), _digest(city.folder)
    assert all(with_neg[f"images/{i:05d}.jpg"] == without[f"images/{i:05d}.jpg"] for i in range(1, 13))
    assert CityInfo.load(info.folder).per_sight == 4


def test_the_cli_writes_what_the_api_does(city: CityInfo, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "localsystem.demo.city", "--out", str(out), "--city", "Testopolis",
                    "--seed", "5", "--sights", "3", "--per-sight", "4", "--video", str(out / "clip.y4m"),
                    "--seconds", "3", "--fps", "10"], check=True, capture_output=True, timeout=120)
    assert _digest(out) == _digest(city.folder)


def test_every_clip_frame_lists_every_sight_in_view_with_a_tight_box(city: CityInfo) -> None:
    meta = json.loads((city.folder / "video_annotations.json").read_text())
    frames = list(clip_frames(city, seconds=3, fps=10))
    assert meta["fps"] == 10 and len(meta["frames"]) == len(frames) == 30
    assert [m["frame"] for m in meta["frames"]] == list(range(30))
    assert [[(s["sight"], s["bbox"]) for s in m["sights"]] for m in meta["frames"]] == [
        [(name, list(box)) for name, box in f.truths] for f in frames]
    # Each sight alone, pairs of sights side by side, and stretches of street with no sight, in clip_plan's order.
    passes = [f.sights for i, f in enumerate(frames) if i == 0 or f.sights != frames[i - 1].sights]
    a, b, c = city.sights
    assert passes == [(a,), (b,), (a, b), (), (c,), (c, a), ()]
    kinds = Counter(f.kind for f in frames)
    assert kinds["none"] >= 0.15 * len(frames) and kinds["two"] >= 0.2 * len(frames) and kinds["one"] >= 9
    for f in frames:
        assert f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8
        street = clip_background(city, f.pan).astype(int)
        changed = np.abs(f.rgb.astype(int) - street).max(axis=2) > 0
        if not f.truths:
            assert not changed.any(), f.index  # nothing but the street
            continue
        inside = np.zeros_like(changed)
        for _, (x, y, w, h) in f.truths:
            assert x >= 0 and y >= 0 and x + w <= W and y + h <= H
            assert w * h > 0.02 * W * H  # at a photo's scale, not a speck
            inside[int(y):int(y + h), int(x):int(x + w)] = True
            # Each box is tight around its sight.
            ys, xs = np.nonzero(changed[int(y):int(y + h), int(x):int(x + w)])
            assert xs.min() <= 2 and ys.min() <= 2 and w - 1 - xs.max() <= 2 and h - 1 - ys.max() <= 2, f.index
        assert not (changed & ~inside).any(), f.index  # the sights are all that changed in the street
        if f.kind == "two":  # side by side, not on top of each other
            (_, left), (_, right) = f.truths
            assert left[0] + left[2] <= right[0] + 1
    # The camera pans: a sight drifts across the frame during its pass.
    alone = [f for f in frames if f.sights == (a,)]
    first, last = alone[0].truths[0][1], alone[-1].truths[0][1]
    assert abs((first[0] + first[2] / 2) - (last[0] + last[2] / 2)) > 0.2 * W


def test_the_y4m_clip_holds_the_frames(city: CityInfo) -> None:
    header = (city.folder / "clip.y4m").read_bytes()[:80].split(b"\n")[0]
    assert header == f"YUV4MPEG2 W{W} H{H} F10:1 Ip A1:1 C420jpeg".encode()
    decoded = list(read_y4m(city.folder / "clip.y4m"))
    rendered = [f.rgb for f in clip_frames(city, seconds=3, fps=10)]
    assert len(decoded) == len(rendered) == 30
    def blocks(rgb: np.ndarray) -> np.ndarray:  # 4:2:0 keeps one colour per 2x2 pixels: compare 8x8 means
        return rgb.reshape(H // 8, 8, W // 8, 8, 3).mean(axis=(1, 3))

    for got, want in zip(decoded, rendered, strict=True):
        assert np.abs(blocks(got) - blocks(want)).mean() < 2


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="1 to"):
        render_city(tmp_path, sights=0, per_sight=1)
    with pytest.raises(ValueError):
        list(clip_frames(CityInfo("X", 1, ("A Gate",), 1, tmp_path), seconds=0, fps=10))
