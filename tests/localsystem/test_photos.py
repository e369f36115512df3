"""The photo city (localsystem.demo.photos): real photographs on real streets through the same renderer, with the
same guarantees as the synthetic city (deterministic bytes, boxes in the frame, a clip with none/one/two sights),
names and sprites that agree for a seed, and streets that never show a piece of a sight."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from localsystem.demo import photos
from localsystem.demo.city import CityInfo, H, W, clip_frames, look_named, render_city
from localsystem.demo.photos import GROUNDS, PHOTOS, SCENES, SIGHTS, PhotoLook

SEED = 3


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _order(seed: int, k: int) -> list[int]:
    return photos._order(random.Random(seed))[:k]


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> CityInfo:
    return render_city(tmp_path_factory.mktemp("photo-city"), look="photo", sights=6, per_sight=3, negatives=2,
                       seed=SEED)


def test_a_photo_city_is_a_coco_dataset_with_boxes_in_the_frame(city: CityInfo) -> None:
    coco = json.loads(city.annotations.read_text())
    assert coco["look"] == "photo" and city.look == "photo"
    assert [c["name"] for c in coco["categories"]] == list(city.sights) and len(set(city.sights)) == 6
    assert [c["id"] for c in coco["categories"]] == list(range(1, 7))
    assert len(coco["images"]) == 6 * 3 + 2
    sights = [img for img in coco["images"] if img["query_sight"]]
    negatives = [img for img in coco["images"] if img["query_sight"] is None]
    assert len(sights) == 18 and len(negatives) == 2
    boxed = {a["image_id"] for a in coco["annotations"]}
    assert boxed == {img["id"] for img in sights}  # every photo shows its sight, no street photo shows any
    assert not boxed & {img["id"] for img in negatives}
    for img in coco["images"]:
        with Image.open(city.folder / img["file_name"]) as im:
            assert im.format == "JPEG" and im.size == (W, H) == (img["width"], img["height"])
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and w >= 8 and h >= 8 and x + w <= W and y + h <= H
        assert 1 <= a["category_id"] <= 6
    # The photo of each sight shows that sight (category of its query).
    ids = {c["name"]: c["id"] for c in coco["categories"]}
    for img in sights:
        assert ids[img["query_sight"]] in {a["category_id"] for a in coco["annotations"] if a["image_id"] == img["id"]}
    assert CityInfo.load(city.folder) == city


def test_rendering_again_gives_the_same_bytes(city: CityInfo, tmp_path: Path) -> None:
    again = render_city(tmp_path, look="photo", sights=6, per_sight=3, negatives=2, seed=SEED)
    assert again.sights == city.sights
    assert _digest(tmp_path) == _digest(city.folder)


def test_names_and_sprites_agree_for_a_seed(city: CityInfo) -> None:
    look = look_named("photo")
    assert isinstance(look, PhotoLook) and look.name == "photo"
    order = _order(SEED, 6)
    assert len(set(order)) == 6
    names = look.sight_names(random.Random(SEED), 6)
    assert tuple(names) == city.sights == tuple(PhotoLook().sight_names(random.Random(SEED), 6))
    sprites, again = look.sprites(SEED, 6), PhotoLook().sprites(SEED, 6)
    for name, i, sprite, other in zip(names, order, sprites, again, strict=True):
        assert name.endswith(" " + SIGHTS[i].kind)  # sight i of the city is photo order[i], named for it
        assert sprite.mode == "RGBA" and max(sprite.size) <= photos.SPRITE_SIZE
        assert max(sprite.size) >= photos.SPRITE_SIZE - 4
        assert sprite.tobytes() == other.tobytes() == photos._sprite(i).tobytes()
        alpha = np.asarray(sprite)[:, :, 3]
        assert (alpha == 255).mean() > 0.3  # opaque over the object
    # Fewer sights: the first photos of the same order.
    assert [s.tobytes() for s in look.sprites(SEED, 4)] == [s.tobytes() for s in sprites[:4]]
    assert look.sight_names(random.Random(SEED), 4) == names[:4]
    # A sprite handed out is a copy: changing it changes no later city.
    sprites[0].paste((255, 0, 255, 255), (0, 0, 20, 20))
    assert look.sprites(SEED, 1)[0].tobytes() == photos._sprite(order[0]).tobytes()


def test_other_seeds_pick_other_photos_in_another_order() -> None:
    orders = {tuple(_order(seed, 6)) for seed in range(12)}
    assert len(orders) >= 10
    assert len({frozenset(o) for o in orders}) >= 5  # other subsets too, not just other orders
    assert _order(SEED, 6) != _order(SEED + 1, 6)
    assert PhotoLook().sight_names(random.Random(SEED), 6) != PhotoLook().sight_names(random.Random(SEED + 1), 6)
    every = {i for seed in range(12) for i in _order(seed, 6)}
    assert every == set(range(len(SIGHTS)))


def test_too_many_sights_is_an_error() -> None:
    look = PhotoLook()
    assert len(SIGHTS) >= 8
    assert len(look.sight_names(random.Random(1), len(SIGHTS))) == len(SIGHTS)
    for k in (0, len(SIGHTS) + 1):
        with pytest.raises(ValueError, match="sights"):
            look.sight_names(random.Random(1), k)
        with pytest.raises(ValueError, match="sights"):
            look.sprites(1, k)


def test_the_clip_shows_no_sight_one_and_two(city: CityInfo) -> None:
    frames = list(clip_frames(city, seconds=3, fps=10))
    assert {f.kind for f in frames} == {"none", "one", "two"}
    for f in frames:
        assert f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8
        for name, (x, y, w, h) in f.truths:
            assert name in city.sights
            assert x >= 0 and y >= 0 and x + w <= W and y + h <= H
    again = list(clip_frames(city, seconds=3, fps=10))
    assert all(a.rgb.tobytes() == b.rgb.tobytes() and a.truths == b.truths for a, b in zip(frames, again, strict=True))


def test_street_regions_touch_no_sight_outline() -> None:
    for file, (x0, y0, x1, y1), _ in SCENES + GROUNDS:
        for sight in SIGHTS:
            if sight.file == file:
                assert not photos.outline_mask(sight)[y0:y1, x0:x1].any(), (file, sight.kind)


def test_streets_are_made_of_no_pixel_of_a_sight(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every photo replaced by a marker: black, with its sights' outlines white. A street built from those shows
    no white at all; with all-white markers (the control) it is bright."""
    files = {f for f, _, _ in SCENES + GROUNDS} | {s.file for s in SIGHTS}
    real = {f: photos._photo(f) for f in files}
    marked = {}
    for f, img in real.items():
        mask = np.zeros((img.height, img.width), bool)
        for sight in SIGHTS:
            if sight.file == f:
                mask |= photos.outline_mask(sight)
        marked[f] = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").convert(img.mode)
    white = {f: Image.new(img.mode, img.size, 255 if img.mode == "L" else (255, 255, 255)) for f, img in real.items()}
    monkeypatch.setattr(photos, "_lfw", lambda: np.zeros((200, 25, 25), np.uint8))
    look = PhotoLook()

    monkeypatch.setattr(photos, "_photo", lambda f: marked[f])
    for seed in range(40):
        street = np.asarray(look.background(random.Random(seed)))
        assert street.shape == (H, W, 3)
        assert street.max() <= 8, seed

    monkeypatch.setattr(photos, "_photo", lambda f: white[f])
    assert np.mean([np.asarray(look.background(random.Random(seed))).mean() for seed in range(10)]) > 80


def test_streets_are_real_photos_and_deterministic() -> None:
    look = PhotoLook()
    a, b = look.background(random.Random(11)), look.background(random.Random(11))
    assert a.mode == "RGB" and a.size == (W, H) and a.tobytes() == b.tobytes()
    assert a.tobytes() != look.background(random.Random(12)).tobytes()
    # Real texture, not a flat fill: plenty of local detail.
    for seed in range(5):
        grey = np.asarray(look.background(random.Random(seed)).convert("L"), dtype=float)
        assert np.abs(np.diff(grey, axis=1)).mean() > 1.0, seed


def test_every_file_used_has_its_licence_noted() -> None:
    used = {f for f, _, _ in SCENES + GROUNDS} | {s.file for s in SIGHTS} | {"lfw_subset.npy"}
    assert used <= set(PHOTOS)
    for f in used:
        source, licence = PHOTOS[f]
        assert source and licence
        assert (photos._data_dir() / f).is_file(), f  # shipped in the wheel, not fetched at run time
