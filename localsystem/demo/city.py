"""A synthetic city: K procedurally drawn sights photographed M times each, with boxes, and a webcam clip.

Real landmark photos cannot be downloaded on the test machines, and a demo must run offline, so the tests, the
benchmarks and `sightscan demo` use this renderer. Every sight has its own deterministic look (silhouette,
palette, texture); every photo places one or two sights on a varied background with clutter, scale, tilt,
lighting, blur and JPEG noise. The same arguments always give the same bytes.

    python -m localsystem.demo.city --out DIR [--city Synthetica] [--seed 7] [--sights 5] [--per-sight 60]
    python -m localsystem.demo.city --out DIR --video clip.y4m --seconds 6 --fps 10   # a fake-webcam clip too

Writes DIR/images/*.jpg and DIR/annotations.json (COCO-style: "categories", "images" with the "query_sight" each
photo was taken for, "annotations" with bbox [x, y, w, h] in pixels). With --video it also writes a YUV4MPEG2
clip (Chromium's --use-file-for-fake-video-capture reads it) in which the camera pans across each sight in turn,
across pairs of sights side by side, and across stretches of street with no sight at all, and
DIR/video_annotations.json: {"fps", "frames": [{"frame", "sights": [{"sight", "bbox": [x, y, w, h]}, ...]}]},
one entry for every frame, listing every sight in view (possibly none). Needs numpy and Pillow only.

What a city looks like is a `Look`: its sights' names, their sprites and the backgrounds they stand on. The
default is drawn procedurally (`SyntheticLook`); localsystem.demo.photos builds cities from real photographs with
the same renderer.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

W, H = 640, 480
PREFIXES = ["Old", "Royal", "Grand", "St. Anselm's", "North", "Harbour", "Twin", "Golden", "Iron", "Victory",
            "Crystal", "Market", "River", "Castle", "Imperial", "Lantern", "Stone", "Emperor's", "Silver", "Seven"]
KINDS = ["Cathedral", "Tower", "Gate", "Town Hall", "Bridge Tower", "Palace", "Observatory", "Column",
         "Opera House", "Lighthouse", "Basilica", "Clock Tower", "Museum", "Pagoda", "Arch"]
MAX_SIGHTS = len(PREFIXES) * len(KINDS)
Box = tuple[float, float, float, float]  # x, y, w, h in pixels


@dataclass(frozen=True)
class CityInfo:
    """What a rendered city is: enough to draw its sights again (for the clip) and to find its files."""

    city: str
    seed: int
    sights: tuple[str, ...]  # category i + 1 is sights[i]
    per_sight: int
    folder: Path
    look: str = "synthetic"  # the Look it was rendered with (look_named)

    @property
    def annotations(self) -> Path:
        return self.folder / "annotations.json"

    @classmethod
    def load(cls, folder: Path) -> CityInfo:
        """The city rendered into `folder` earlier (from its annotations.json)."""
        coco = json.loads((folder / "annotations.json").read_text())
        names = tuple(c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"]))
        per_sight = sum(1 for i in coco["images"] if i.get("query_sight")) // max(1, len(names))
        return cls(coco["city"], int(coco["seed"]), names, per_sight, folder, coco.get("look", "synthetic"))


@dataclass(frozen=True)
class ClipFrame:
    """One webcam frame and its ground truth: every sight in view with its box [x, y, w, h] in pixels (possibly
    none: the camera is on the street between sights)."""

    index: int
    rgb: np.ndarray  # H x W x 3, uint8
    truths: tuple[tuple[str, Box], ...]
    pan: float = 0.0  # where along the street the camera looks (clip_background)

    @property
    def sights(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.truths)

    @property
    def kind(self) -> str:
        """"none", "one" or "two": how many sights are in view (what the open-world checks score separately)."""
        return ("none", "one", "two")[min(2, len(self.truths))]


class Look(Protocol):
    """What a city looks like: its sights' names and sprites, and the streets they stand in."""

    name: str

    def sight_names(self, rng: random.Random, k: int) -> list[str]:
        """`k` distinct sight names, drawn from `rng` (the city's stream: the first draws it makes)."""

    def sprites(self, seed: int, k: int) -> list[Image.Image]:
        """The city's `k` sights as RGBA sprites, transparent around each, in category order."""

    def background(self, rng: random.Random) -> Image.Image:
        """A W x H RGB street scene with none of the city's sights in it."""


class SyntheticLook:
    """Procedurally drawn buildings on procedurally drawn streets: any number of sights, no files needed."""

    name = "synthetic"

    def sight_names(self, rng: random.Random, k: int) -> list[str]:
        return _names(rng, k)

    def sprites(self, seed: int, k: int) -> list[Image.Image]:
        return city_sprites(seed, k)

    def background(self, rng: random.Random) -> Image.Image:
        return background(rng)


def look_named(name: str) -> Look:
    """The Look called `name`: "synthetic" (drawn) or "photo" (real photographs, localsystem.demo.photos)."""
    if name == "synthetic":
        return SyntheticLook()
    if name == "photo":
        from localsystem.demo.photos import PhotoLook

        return PhotoLook()
    raise ValueError(f"unknown city look {name!r}: synthetic or photo")


# Drawing ------------------------------------------------------------------------------------------------------


def sight_names(seed: int, k: int) -> list[str]:
    """The names of a city's `k` sights (the first draws of the city's random stream)."""
    return _names(random.Random(seed), k)


def _names(rng: random.Random, k: int) -> list[str]:
    if not 0 < k <= MAX_SIGHTS:
        raise ValueError(f"a synthetic city has 1 to {MAX_SIGHTS} sights, not {k}")
    names: list[str] = []
    while len(names) < k:
        name = f"{rng.choice(PREFIXES)} {rng.choice(KINDS)}"
        if name not in names:
            names.append(name)
    return names


def _colour(rng: random.Random, lo: int = 30, hi: int = 230) -> tuple[int, int, int]:
    return tuple(rng.randint(lo, hi) for _ in range(3))  # type: ignore[return-value]


def draw_sight(seed: int, size: int = 320) -> Image.Image:
    """One sight's sprite (RGBA, transparent around it); the same seed always gives the same building."""
    rng = random.Random(seed)
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    body, trim, accent = _colour(rng), _colour(rng), _colour(rng)
    cx, ground = size // 2, size - 4
    tiers = rng.randint(1, 4)
    width = rng.randint(int(size * 0.35), int(size * 0.9))
    top = ground
    for t in range(tiers):
        h = rng.randint(int(size * 0.12), int(size * 0.3))
        w = max(12, int(width * (1 - t * rng.uniform(0.15, 0.3))))
        box = (cx - w // 2, top - h, cx + w // 2, top)
        d.rectangle(box, fill=body + (255,), outline=trim + (255,), width=3)
        pattern = rng.choice(["windows", "stripes", "arches", "bricks"])
        if pattern == "windows":
            for x in range(box[0] + 6, box[2] - 8, 14):
                for y in range(box[1] + 6, box[3] - 10, 16):
                    d.rectangle((x, y, x + 7, y + 9), fill=accent + (255,))
        elif pattern == "stripes":
            for x in range(box[0], box[2], 10):
                d.line((x, box[1], x, box[3]), fill=trim + (255,), width=3)
        elif pattern == "arches":
            for x in range(box[0] + 4, box[2] - 18, 22):
                d.pieslice((x, box[3] - 30, x + 18, box[3] - 6), 180, 360, fill=accent + (255,))
                d.rectangle((x, box[3] - 18, x + 18, box[3]), fill=accent + (255,))
        else:
            for y in range(box[1], box[3], 8):
                off = 6 if (y // 8) % 2 else 0
                for x in range(box[0] + off, box[2], 12):
                    d.line((x, y, x, y + 8), fill=trim + (255,))
                d.line((box[0], y, box[2], y), fill=trim + (255,))
        top -= h
    roof = rng.choice(["dome", "spire", "pyramid", "flat", "twin"])
    w = max(14, int(width * 0.4))
    if roof == "dome":
        d.pieslice((cx - w, top - w, cx + w, top + w), 180, 360, fill=accent + (255,), outline=trim + (255,))
        d.line((cx, top - w, cx, top - w - 25), fill=trim + (255,), width=4)
    elif roof == "spire":
        d.polygon([(cx - w // 2, top), (cx + w // 2, top), (cx, max(2, top - rng.randint(60, 120)))],
                  fill=accent + (255,), outline=trim + (255,))
    elif roof == "pyramid":
        d.polygon([(cx - w, top), (cx + w, top), (cx, max(2, top - w))], fill=accent + (255,))
    elif roof == "twin":
        for sx in (-1, 1):
            x0 = cx + sx * w // 2
            d.rectangle((x0 - 10, max(2, top - 70), x0 + 10, top), fill=trim + (255,))
            d.polygon([(x0 - 12, max(2, top - 70)), (x0 + 12, max(2, top - 70)), (x0, max(0, top - 100))],
                      fill=accent + (255,))
    else:
        d.rectangle((cx - w, top - 10, cx + w, top), fill=trim + (255,))
    bbox = img.getbbox()
    return img.crop(bbox) if bbox else img


def city_sprites(seed: int, k: int) -> list[Image.Image]:
    """The sprites of a city's `k` sights, in category order."""
    return [draw_sight(seed * 1000 + i) for i in range(k)]


def background(rng: random.Random) -> Image.Image:
    """A W x H street scene with no sight in it: sky gradient, ground, sensor noise, clutter."""
    sky_top, sky_bottom = np.array(_colour(rng, 90, 255)), np.array(_colour(rng, 120, 255))
    t = np.linspace(0, 1, H)[:, None, None]
    arr = (sky_top * (1 - t) + sky_bottom * t).repeat(W, axis=1)
    horizon = rng.randint(int(H * 0.55), int(H * 0.85))
    arr[horizon:] = np.array(_colour(rng, 40, 160))
    arr += np.random.default_rng(rng.randint(0, 2**31)).normal(0, rng.uniform(2, 14), arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 12)):  # clutter: plain blocks, trees, people-sized blobs
        x, y = rng.randint(-40, W), rng.randint(int(H * 0.3), H)
        w, h = rng.randint(10, 90), rng.randint(10, 120)
        shape = rng.choice(["rect", "ellipse", "tree"])
        if shape == "rect":
            d.rectangle((x, y - h, x + w, y), fill=_colour(rng, 20, 200))
        elif shape == "ellipse":
            d.ellipse((x, y - h, x + w, y), fill=_colour(rng, 20, 200))
        else:
            d.rectangle((x + w // 2 - 3, y - h // 2, x + w // 2 + 3, y), fill=(90, 60, 30))
            d.ellipse((x, y - h, x + w, y - h // 3), fill=(rng.randint(20, 80), rng.randint(100, 180), 40))
    return img


def _transform(sprite: Image.Image, height: int, angle: float, brightness: float) -> Image.Image:
    s = sprite.resize((max(8, int(sprite.width * height / sprite.height)), height), Image.BICUBIC)
    s = s.rotate(angle, resample=Image.BICUBIC, expand=True)
    return ImageEnhance.Brightness(s).enhance(brightness)


def _paste(canvas: Image.Image, s: Image.Image, cx: float, cy: float) -> Box | None:
    """Paste a sprite centred at (cx, cy); its visible box [x, y, w, h], or None when (nearly) all is outside."""
    x, y = int(cx - s.width / 2), int(cy - s.height / 2)
    canvas.paste(s, (x, y), s)
    bb = s.getbbox()
    if not bb:
        return None
    x0, y0 = max(0, x + bb[0]), max(0, y + bb[1])
    x1, y1 = min(W, x + bb[2]), min(H, y + bb[3])
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    return (float(x0), float(y0), float(x1 - x0), float(y1 - y0))


def place(canvas: Image.Image, sprite: Image.Image, rng: random.Random, scale: float) -> Box | None:
    """Paste a sprite `scale` x H tall, tilted, lit and placed at random; its box, or None if hidden."""
    height = max(16, int(H * scale))
    angle, brightness = rng.uniform(-7, 7), rng.uniform(0.6, 1.35)
    s = _transform(sprite, height, angle, brightness)
    cx, cy = rng.uniform(0.2, 0.8) * W, rng.uniform(0.35, 0.75) * H
    return _paste(canvas, s, cx, cy)


def finish(img: Image.Image, rng: random.Random) -> Image.Image:
    """The camera: contrast, colour and sometimes blur."""
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
    if rng.random() < 0.4:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.6)))
    return img


# The photos -----------------------------------------------------------------------------------------------------


def render_city(out: Path, *, city: str = "Synthetica", seed: int = 7, sights: int = 5,
                per_sight: int = 60, negatives: int = 0, look: str | Look = "synthetic") -> CityInfo:
    """Render `sights` x `per_sight` photos with their boxes into `out` (images/, annotations.json).

    Each photo is taken for one sight (its "query_sight", as a crawler's search for that sight would find it);
    one in five shows a second sight too. `negatives` more photos show the city's streets with no sight at all
    ("query_sight": null, no annotations): what a search for the city itself also finds. Deterministic: the same
    arguments give the same bytes.
    """
    if per_sight < 0 or negatives < 0:
        raise ValueError(f"per_sight and negatives must be >= 0, not {per_sight} and {negatives}")
    style = look_named(look) if isinstance(look, str) else look
    rng = random.Random(seed)
    names = style.sight_names(rng, sights)
    sprites = style.sprites(seed, sights)
    (out / "images").mkdir(parents=True, exist_ok=True)
    coco: dict = {"city": city, "seed": seed, "look": style.name,
                  "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
                  "images": [], "annotations": []}
    image_id = 0
    for main in range(sights):
        for _ in range(per_sight):
            image_id += 1
            img = style.background(rng)
            present = [main]
            if rng.random() < 0.2 and sights > 1:
                present.append(rng.choice([i for i in range(sights) if i != main]))
            boxes = []
            for k, cat in enumerate(present):
                scale = rng.uniform(0.3, 0.8) if k == 0 else rng.uniform(0.2, 0.45)
                box = place(img, sprites[cat], rng, scale)
                if box:
                    boxes.append((cat, list(box)))
            img = finish(img, rng)
            name = f"{image_id:05d}.jpg"
            img.save(out / "images" / name, quality=rng.randint(55, 92))
            coco["images"].append({"id": image_id, "file_name": f"images/{name}", "width": W, "height": H,
                                   "query_sight": names[main]})
            for cat, box in boxes:
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                            "category_id": cat + 1, "bbox": box, "area": box[2] * box[3],
                                            "iscrowd": 0})
    street_rng = random.Random(seed * 31 + 17)  # their own stream: adding negatives changes no sight photo
    for _ in range(negatives):
        image_id += 1
        name = f"{image_id:05d}.jpg"
        finish(style.background(street_rng), street_rng).save(out / "images" / name,
                                                               quality=street_rng.randint(55, 92))
        coco["images"].append({"id": image_id, "file_name": f"images/{name}", "width": W, "height": H,
                               "query_sight": None})
    (out / "annotations.json").write_text(json.dumps(coco, indent=1))
    return CityInfo(city, seed, tuple(names), per_sight, out, style.name)


# The webcam clip ------------------------------------------------------------------------------------------------


def _clip_rng(info: CityInfo) -> random.Random:
    return random.Random(info.seed * 7919 + 104729)  # the clip's own stream: independent of the photos


def clip_background(info: CityInfo, pan: float = 0.0) -> np.ndarray:
    """The clip's street with no sight in view (H x W x 3 uint8), as the camera sees it at `pan` (ClipFrame.pan);
    it pans along a street a third wider than the frame."""
    street = _street(look_named(info.look), _clip_rng(info))
    return np.asarray(_view(street, pan))


def _street(look: Look, rng: random.Random) -> Image.Image:
    """The clip's street: a background a third wider than the frame, so the camera can pan along it."""
    return look.background(rng).resize((W * 4 // 3, H), Image.BICUBIC)


def _view(street: Image.Image, pan: float) -> Image.Image:
    """The frame-sized window of the street at `pan` (0..1, left to right)."""
    x = round((street.width - W) * min(1.0, max(0.0, pan)))
    return street.crop((x, 0, x + W, H))


def clip_plan(k: int) -> list[tuple[int, ...]]:
    """The clip's passes, in order: each sight alone, each pair of neighbours side by side, and stretches of street
    with no sight (the empty tuple) between them; about a fifth of the frames show no sight."""
    plan: list[tuple[int, ...]] = []
    for i in range(k):
        plan.append((i,))
        if i % 2 == 1:
            plan += [(i - 1, i), ()]
    if k % 2 == 1:
        plan += [(k - 1, 0), ()] if k > 1 else [()]
    return plan


_PASS_WEIGHT = {0: 0.7, 1: 1.0, 2: 1.0}  # an empty stretch is a little shorter than a pass over a sight


def pass_lengths(plan: list[tuple[int, ...]], seconds: float, fps: int) -> list[int]:
    """Frames per pass of the clip: `seconds` x `fps` shared by weight, at least one each."""
    weights = [_PASS_WEIGHT[len(p)] for p in plan]
    ends = np.round(np.cumsum(weights) / sum(weights) * round(seconds * fps)).astype(int)
    return [max(1, int(e - b)) for b, e in zip([0, *ends[:-1]], ends, strict=True)]


def clip_length(sights: int, seconds: float, fps: int) -> int:
    """How many frames clip_frames yields for a city of `sights` sights."""
    return sum(pass_lengths(clip_plan(sights), seconds, fps))


def _slots(n: int) -> list[tuple[float, float]]:
    """Where in the frame (left and right edge, 0..1) each of `n` sights in view may drift: alone across the middle,
    side by side each in its own half."""
    return [(0.3, 0.7)] if n == 1 else [(0.05, 0.5), (0.5, 0.95)]


def _place_in_slot(frame: Image.Image, sprite: Image.Image, slot: tuple[float, float],
                   pose: tuple[float, float, float], phase: float, cy: float, paired: bool) -> Box:
    """Paste one sight of a pass into its slot at `phase` (0..1) of the pass; its box. It always fits wholly."""
    angle, brightness, base = pose
    lo_f, hi_f = slot
    # A wide building is shown smaller: the whole of it must fit in its share of the frame's width.
    share = (hi_f - lo_f) * (0.9 if paired else 1.0)
    base = min(base * (0.8 if paired else 1.0), share * 0.9 * W / (H * sprite.width / sprite.height))
    s = _transform(sprite, max(16, int(H * (base + 0.06 * math.sin(phase * math.pi)))), angle, brightness)
    half = s.width / 2 + 4
    inset = half if paired else 0.0
    lo, hi = max(half, W * lo_f + inset), min(W - half, W * hi_f - inset)
    cx = hi - (hi - lo) * phase if lo < hi else (lo + hi) / 2
    box = _paste(frame, s, cx, cy)
    assert box is not None  # a sight in view is always wholly in the frame
    return box


def clip_frames(info: CityInfo, *, seconds: float = 6.0, fps: int = 10) -> Iterator[ClipFrame]:
    """The frames of a webcam panning along the city's street, each with its ground truth.

    The camera passes every sight alone, then pairs of sights side by side, with stretches of street between them
    where no sight is in view (clip_plan). A sight in view stays wholly in the frame, at the scale of a photo
    taken from across the square, drifting as the camera pans and growing a little as it gets closer.
    Deterministic for the city's seed.
    """
    if fps <= 0 or seconds <= 0:
        raise ValueError("seconds and fps must be > 0")
    look = look_named(info.look)
    names, sprites = info.sights, look.sprites(info.seed, len(info.sights))
    rng = _clip_rng(info)
    street = _street(look, rng)
    plan = clip_plan(len(names))
    lengths = pass_lengths(plan, seconds, fps)
    for p, present in enumerate(plan):
        # One pass of the camera: the look of each sight stays put, only its place and size change.
        poses = [(rng.uniform(-4, 4), rng.uniform(0.85, 1.2), rng.uniform(0.5, 0.6)) for _ in present]
        cy = H * rng.uniform(0.48, 0.55)
        length = lengths[p]
        first = sum(lengths[:p])
        for i in range(first, first + length):
            phase = (i - first) / max(1, length - 1) if length > 1 else 0.5
            pan = (p + phase) / len(plan)
            frame = _view(street, pan)
            truths = []
            for slot, cat, pose in zip(_slots(len(present)), present, poses, strict=False):
                box = _place_in_slot(frame, sprites[cat], slot, pose, phase, cy, paired=len(present) > 1)
                truths.append((names[cat], box))
            yield ClipFrame(i, np.asarray(frame), tuple(truths), pan)


def _y4m_frame(rgb: np.ndarray) -> bytes:
    ycbcr = np.asarray(Image.fromarray(rgb).convert("YCbCr"))
    h, w = rgb.shape[:2]
    y = ycbcr[:, :, 0]
    cb = ycbcr[:, :, 1].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).astype(np.uint8)
    cr = ycbcr[:, :, 2].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).astype(np.uint8)
    return b"FRAME\n" + y.tobytes() + cb.tobytes() + cr.tobytes()


def render_clip(out: Path, info: CityInfo, *, seconds: float = 6.0, fps: int = 10,
                annotations: Path | None = None) -> Path:
    """Write the clip of `clip_frames` to `out` (YUV4MPEG2, 4:2:0) and its ground truth, one entry per frame, to
    `annotations` (default: the city's folder/video_annotations.json). Returns `out`."""
    annotations = annotations or info.folder / "video_annotations.json"
    meta = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        f.write(f"YUV4MPEG2 W{W} H{H} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in clip_frames(info, seconds=seconds, fps=fps):
            f.write(_y4m_frame(frame.rgb))
            meta.append({"frame": frame.index,
                         "sights": [{"sight": name, "bbox": list(box)} for name, box in frame.truths]})
    annotations.parent.mkdir(parents=True, exist_ok=True)
    annotations.write_text(json.dumps({"fps": fps, "frames": meta}, indent=1))
    return out


def read_y4m(path: Path) -> Iterator[np.ndarray]:
    """The frames of a 4:2:0 YUV4MPEG2 file (as render_clip writes) as H x W x 3 RGB uint8 arrays."""
    with open(path, "rb") as f:
        fields = {t[:1]: t[1:] for t in f.readline().split()[1:]}
        w, h = int(fields[b"W"]), int(fields[b"H"])
        while f.readline().startswith(b"FRAME"):
            y = np.frombuffer(f.read(w * h), np.uint8).reshape(h, w)
            cb, cr = (np.frombuffer(f.read(w * h // 4), np.uint8).reshape(h // 2, w // 2)
                      .repeat(2, 0).repeat(2, 1) for _ in range(2))
            yield np.asarray(Image.merge("YCbCr", [Image.fromarray(c) for c in (y, cb, cr)]).convert("RGB"))


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m localsystem.demo.city", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the folder to write images/ and annotations.json to")
    p.add_argument("--city", default="Synthetica")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--sights", type=int, default=5)
    p.add_argument("--per-sight", type=int, default=60)
    p.add_argument("--negatives", type=int, default=0, help="photos of the city's streets with no sight")
    p.add_argument("--look", default="synthetic", choices=["synthetic", "photo"])
    p.add_argument("--video", type=Path, help="also write a .y4m fake-webcam clip here")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--fps", type=int, default=10)
    a = p.parse_args(argv)
    info = render_city(a.out, city=a.city, seed=a.seed, sights=a.sights, per_sight=a.per_sight,
                       negatives=a.negatives, look=a.look)
    if a.video:
        render_clip(a.video, info, seconds=a.seconds, fps=a.fps, annotations=a.out / "video_annotations.json")
    print(f"{a.city}: {a.sights} sights x {a.per_sight} images -> {a.out}")


if __name__ == "__main__":
    main()
