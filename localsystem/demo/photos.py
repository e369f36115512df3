"""A city of real photographs: the "photo" Look of localsystem.demo.city (`render_city(..., look="photo")`).

The synthetic Look draws every sight and street with one renderer, so a recogniser could learn that renderer's
statistics instead of the sights. This Look builds the same kind of city from real photographs: its sights are
real objects cut out of real photos (a cat, an espresso cup, a rocket on its pad, an astronaut, a motorcycle, a
photographer at his tripod, a museum's coin tray, a fundus photo of an eye, a model space shuttle), and they stand
on real scenes and textures (lattice launch towers at dusk, a skyline, the Hubble deep field above brick, grass,
gravel, a lawn or a wooden table top), among real clutter (faces of the LFW data set as passers-by, small patches
of real photos). The same renderer then places, tilts, lights, blurs and compresses them.

Where the photos come from: all of them are files inside the scikit-image wheel (skimage/data/, pinned as
scikit-image==0.26.0 in pyproject's dev and train extras), read from the installed package without importing it
and never downloaded (scikit-image fetches its other sample files with pooch at run time; none of those is used).
`PHOTOS` lists each file with its provenance and licence exactly as the wheel states them (the docstrings of
skimage/data/_fetchers.py; skimage/data/README.txt says nothing about licences, and the wheel's LICENSE.txt gives
"Files: * Copyright: 2009-2022 the scikit-image team License: BSD-3-Clause" for the package as a whole). Most are
public domain or CC0; for motorcycle_left.png (the Middlebury 2014 stereo benchmark) and lfw_subset.npy (Labeled
Faces in the Wild) the wheel names the source but states no licence of its own.

Each sight is a hand-traced outline (polygons and ellipses, in the photo's pixels) around the object: its sprite
is the photo cropped to that outline with a feathered alpha mask, about 320 px on its long side. Backgrounds use
only declared regions of the photos that no sight outline touches (`SCENES`, `GROUNDS`; the tests check this
pixel by pixel), so no sight is ever part of a street. Everything is deterministic: numpy, Pillow and those files
only, and the same seed gives the same bytes.

Which photos a city uses: sight i of a city with seed s is photo `_order(random.Random(s))[i]`, a seeded shuffle
of all the sight photos (the first draws of the city's stream). `sight_names(rng, k)` makes those draws from the
stream render_city hands it (random.Random(seed), fresh) and then draws one name prefix per sight;
`sprites(seed, k)` repeats the same draws on its own random.Random(seed), so both agree on the photos for the same
seed, and a city with fewer sights uses the first photos of the same order.
"""

from __future__ import annotations

import functools
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from localsystem.demo.city import PREFIXES, H, W

SPRITE_SIZE = 320  # the long side of a sprite, in pixels (the renderer rescales it)

# file -> (where the wheel says it comes from, the licence the wheel states for it)
PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut.png": ("Eileen Collins, NASA Great Images database (https://flic.kr/p/r9qvLn)",
                      "No known copyright restrictions, released into the public domain."),
    "chelsea.png": ("Chelsea the cat, photo by Stefan van der Walt",
                    "No copyright restrictions. CC0 by the photographer (Stefan van der Walt)."),
    "coffee.png": ("Coffee cup, courtesy of Pikolo Espresso Bar",
                   "No copyright restrictions. CC0 by the photographer (Rachel Michetti)."),
    "rocket.jpg": ("Falcon 9 with DSCOVR at Launch Complex 40, SpaceX Photos (flickr)",
                   "Captured by SpaceX and released in the public domain."),
    "motorcycle_left.png": ("Middlebury 2014 stereo benchmark (Scharstein et al., GCPR 2014), left image, "
                            "down-sampled 4x",
                            "None stated in the wheel beyond its source (scikit-image's LICENSE.txt: 'Files: *', "
                            "BSD-3-Clause)."),
    "camera.png": ("Cameraman on a lawn, photo by Lav Varshney",
                   "No copyright restrictions. CC0 by the photographer (Lav Varshney)."),
    "coins.png": ("Greek coins from Pompeii, Brooklyn Museum Collection", "No known copyright restrictions."),
    "retina.jpg": ("Fundus photograph of a normal left eye, Wikimedia Commons (Mikael Haggstrom)",
                   "Creative Commons CC0 1.0 Universal Public Domain Dedication."),
    "brick.png": ("Bricks25, CC0Textures (perspective-corrected, rotated, cropped, grey)",
                  "Creative Commons CC0 License."),
    "grass.png": ("Grass-01 by linolafett, DeviantArt (cropped, grey)", "Creative Commons CC0 License."),
    "gravel.png": ("Gravel04, CC0Textures (rescaled, cropped, grey)", "Creative Commons CC0 License."),
    "hubble_deep_field.jpg": ("Hubble eXtreme Deep Field, HubbleSite (NASA)",
                              "Captured by NASA; may be freely used in the public domain."),
    "lfw_subset.npy": ("Labeled Faces in the Wild (http://vis-www.cs.umass.edu/lfw/): 100 face and 100 non-face "
                       "crops, 25 x 25 grey",
                       "None stated in the wheel beyond its source (scikit-image's LICENSE.txt: 'Files: *', "
                       "BSD-3-Clause)."),
}

Shape = tuple  # ("poly", [(x, y), ...]) | ("ellipse", (x0, y0, x1, y1)) | ("rrect", (x0, y0, x1, y1), radius)


@dataclass(frozen=True)
class Sight:
    """One sight photo: the file, what the city calls it, and its outline in the photo's pixels."""

    file: str
    kind: str  # the name's second half: "Harbour " + "Cat Monument"
    outline: tuple[Shape, ...]


SIGHTS: tuple[Sight, ...] = (
    Sight("astronaut.png", "Astronaut Memorial", (("poly", (
        (200, 15), (233, 17), (280, 37), (300, 67), (293, 120), (276, 150), (286, 165), (300, 195), (306, 225),
        (330, 253), (347, 256), (360, 300), (364, 335), (373, 347), (413, 341), (460, 353), (487, 380), (507, 427),
        (512, 467), (512, 512), (15, 512), (18, 420), (22, 350), (28, 300), (45, 268), (60, 253), (93, 230),
        (117, 187), (133, 165), (150, 160), (168, 148), (157, 118), (155, 100), (153, 60), (173, 27))),)),
    Sight("astronaut.png", "Shuttle Monument", (("poly", (
        (401, 0), (436, 0), (438, 42), (445, 39), (451, 48), (452, 205), (456, 232), (462, 262), (462, 286),
        (370, 286), (366, 262), (354, 234), (356, 218), (380, 195), (381, 48), (386, 40), (393, 42), (400, 40))),)),
    Sight("chelsea.png", "Cat Monument", (("poly", (
        (30, 0), (345, 0), (395, 0), (392, 30), (368, 75), (372, 140), (362, 200), (342, 262), (322, 300),
        (18, 300), (8, 200), (12, 100), (22, 30))),)),
    Sight("coffee.png", "Coffee House", (("ellipse", (77, 67, 481, 391)), ("ellipse", (172, 16, 409, 210)),
                                          ("poly", ((398, 72), (410, 62), (424, 66), (420, 110), (404, 130))))),
    Sight("rocket.jpg", "Launch Tower", (("poly", (
        (322, 126), (331, 134), (336, 160), (336, 345), (354, 358), (372, 398), (373, 427), (267, 427),
        (268, 398), (290, 358), (309, 345), (309, 160), (313, 134))),)),
    Sight("motorcycle_left.png", "Motorcycle Museum", (("poly", (
        (92, 200), (112, 188), (150, 158), (200, 163), (330, 185), (345, 178), (356, 170), (380, 140), (420, 131),
        (472, 130), (494, 95), (518, 97), (540, 118), (580, 122), (584, 142), (564, 170), (556, 186), (580, 256),
        (604, 268), (648, 296), (676, 330),
        (686, 390), (666, 440), (620, 452), (580, 432), (545, 388), (480, 372), (420, 378), (345, 378),
        (342, 438), (322, 438), (318, 380), (268, 372), (232, 398), (170, 396), (130, 362), (118, 310),
        (122, 262), (98, 238))),)),
    Sight("camera.png", "Photographer Statue", (
        ("poly", ((0, 257), (7, 233), (50, 170), (87, 130), (133, 110), (157, 107), (160, 100), (170, 80), (193, 67),
                  (227, 63), (257, 80), (270, 110), (263, 133), (257, 140), (323, 139), (327, 157), (332, 173),
                  (333, 200), (313, 230), (303, 245), (303, 280), (285, 300), (267, 312), (153, 355), (150, 512),
                  (0, 512))),
        ("poly", ((284, 230), (300, 230), (300, 490), (284, 490))),  # the tripod: column, head, handle, legs
        ("poly", ((278, 312), (318, 312), (322, 335), (278, 335))),
        ("poly", ((312, 316), (336, 298), (340, 304), (318, 322))),
        ("poly", ((305, 330), (315, 328), (408, 505), (400, 512), (395, 512))),
        ("poly", ((282, 330), (292, 332), (240, 512), (228, 512))))),
    Sight("coins.png", "Coin Cabinet", (("rrect", (0, 0, 384, 303), 18),)),
    Sight("retina.jpg", "Red Eye Dome", (("ellipse", (14, 10, 1394, 1400)),)),
)

# Backgrounds: regions of photos (x0, y0, x1, y1), none of them touching a sight's outline, and how to tint a
# grey one (an RGB factor, jittered per street; None: a colour photo).
Region = tuple[str, tuple[int, int, int, int], tuple[int, int, int] | None]
SCENES: tuple[Region, ...] = (  # what stands behind the square: the upper part of a street, or all of it
    ("rocket.jpg", (0, 0, 262, 427), None),  # a lattice launch tower at dusk, left of the rocket
    ("rocket.jpg", (382, 0, 640, 427), None),  # the lightning mast and the other tower, right of it
    ("camera.png", (342, 0, 512, 245), (185, 200, 235)),  # sky, a dome and towers behind the photographer
    ("hubble_deep_field.jpg", (0, 0, 1000, 872), None),  # the night sky
)
GROUNDS: tuple[Region, ...] = (  # what the sights stand on, or a wall that fills the frame
    ("brick.png", (0, 0, 512, 512), (205, 125, 100)),
    ("grass.png", (0, 0, 512, 512), (120, 175, 85)),
    ("gravel.png", (0, 0, 512, 512), (180, 170, 150)),
    ("camera.png", (420, 250, 512, 512), (135, 170, 100)),  # the lawn right of the tripod
    ("coffee.png", (490, 0, 600, 400), None),  # the wooden table right of the saucer
)
N_FACES = 100  # lfw_subset.npy: 100 faces, then 100 non-faces (background crops of the same photos)


def _data_dir() -> Path:
    """skimage/data in the installed wheel, found without importing scikit-image (numpy and Pillow read it)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the photo city needs scikit-image's sample photos: pip install scikit-image==0.26.0")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.cache
def _photo(file: str) -> Image.Image:
    """A photo from the wheel, decoded once (RGB, or L for a grey one). Callers never change it in place."""
    with Image.open(_data_dir() / file) as img:
        img.load()
        return img.convert("L") if img.mode in ("L", "I", "I;16", "1") else img.convert("RGB")


@functools.cache
def _lfw() -> np.ndarray:
    """The 200 LFW crops, 25 x 25 uint8: faces [:100], non-faces [100:]."""
    return np.clip(np.load(_data_dir() / "lfw_subset.npy") * 255 + 0.5, 0, 255).astype(np.uint8)


def _draw(d: ImageDraw.ImageDraw, shape: Shape, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> None:
    kind = shape[0]
    if kind == "poly":
        d.polygon([((x - dx) * scale, (y - dy) * scale) for x, y in shape[1]], fill=255)
    else:
        x0, y0, x1, y1 = shape[1]
        box = ((x0 - dx) * scale, (y0 - dy) * scale, (x1 - dx) * scale, (y1 - dy) * scale)
        if kind == "ellipse":
            d.ellipse(box, fill=255)
        else:
            d.rounded_rectangle(box, radius=shape[2] * scale, fill=255)


def outline_mask(sight: Sight) -> np.ndarray:
    """The pixels of the sight's photo its sprite shows (bool, the photo's size), feathered edge included."""
    img = _photo(sight.file)
    mask = Image.new("L", img.size, 0)
    d = ImageDraw.Draw(mask)
    for shape in sight.outline:
        _draw(d, shape)
    return np.asarray(mask.filter(ImageFilter.MaxFilter(9))) > 0  # a margin wider than the sprite's feather


def _bounds(sight: Sight) -> tuple[int, int, int, int]:
    w, h = _photo(sight.file).size
    xs, ys = [], []
    for shape in sight.outline:
        if shape[0] == "poly":
            xs += [x for x, _ in shape[1]]
            ys += [y for _, y in shape[1]]
        else:
            xs += [shape[1][0], shape[1][2]]
            ys += [shape[1][1], shape[1][3]]
    return max(0, min(xs) - 2), max(0, min(ys) - 2), min(w, max(xs) + 2), min(h, max(ys) + 2)


@functools.cache
def _sprite(index: int) -> Image.Image:
    """Sight `index` as an RGBA sprite: the photo cropped to its outline, SPRITE_SIZE on the long side, with an
    antialiased alpha mask feathered over about a pixel and a half."""
    sight = SIGHTS[index]
    x0, y0, x1, y1 = _bounds(sight)
    scale = SPRITE_SIZE / max(x1 - x0, y1 - y0)
    size = (max(8, round((x1 - x0) * scale)), max(8, round((y1 - y0) * scale)))
    rgb = _photo(sight.file).convert("RGB").crop((x0, y0, x1, y1)).resize(size, Image.LANCZOS)
    big = Image.new("L", (size[0] * 4, size[1] * 4), 0)  # drawn 4x and reduced: smooth edges
    d = ImageDraw.Draw(big)
    for shape in sight.outline:
        _draw(d, shape, scale * 4, x0, y0)
    alpha = big.resize(size, Image.BOX).filter(ImageFilter.GaussianBlur(1.2))
    alpha = alpha.point(lambda v: 0 if v < 8 else v)  # no faint halo: the renderer's box is the opaque sight
    sprite = rgb.convert("RGBA")
    sprite.putalpha(alpha)
    bbox = sprite.getbbox()
    return sprite.crop(bbox) if bbox else sprite


def _order(rng: random.Random) -> list[int]:
    """The city's sight photos, in category order: a shuffle of all of them (the first draws of `rng`)."""
    order = list(range(len(SIGHTS)))
    rng.shuffle(order)
    return order


def _check(k: int) -> None:
    if not 0 < k <= len(SIGHTS):
        raise ValueError(f"a photo city has 1 to {len(SIGHTS)} sights (one per sight photo), not {k}")


# Streets --------------------------------------------------------------------------------------------------------


def _tinted(img: Image.Image, tint: tuple[int, int, int] | None, rng: random.Random) -> Image.Image:
    """A grey crop coloured by `tint` (jittered), a colour one as it is: RGB either way. Multiplicative only, so
    a black pixel stays black (what the tests' marker photos rely on)."""
    if img.mode == "RGB":
        return img
    factor = np.array([min(255, max(40, c + rng.randint(-25, 25))) for c in (tint or (200, 200, 200))]) / 255.0
    grey = np.asarray(img, dtype=np.float32)[:, :, None] * factor * 1.25
    return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), "RGB")


def _crop(region: Region, size: tuple[int, int], rng: random.Random, *, turn: bool) -> Image.Image:
    """A random crop of `region` scaled to `size`, mirrored at random. A texture (`turn`) may also be turned a
    quarter or flipped upside down; its crop is 60 to 100 % of the largest one of the frame's shape. A scene is
    a strip of the street: one too narrow for the frame's shape is extended with its mirror image (up to three
    copies side by side) rather than blown up."""
    file, (x0, y0, x1, y1), tint = region
    src = _photo(file).crop((x0 + 2, y0 + 2, x1 - 2, y1 - 2))  # no edge row: it would show at a mirror seam
    if turn and rng.random() < 0.5:
        src = src.transpose(Image.ROTATE_90)
    if turn and rng.random() < 0.5:
        src = ImageOps.flip(src)
    aspect = size[0] / size[1]
    ch = min(src.height, (1 if turn else 3) * src.width / aspect) * rng.uniform(0.6, 1.0)
    cw = ch * aspect
    if cw > src.width:  # mirror-tile: the seams are continuous
        tiles = [src if i % 2 == 0 else ImageOps.mirror(src) for i in range(int(cw // src.width) + 1)]
        wide = Image.new(src.mode, (src.width * len(tiles), src.height))
        for i, t in enumerate(tiles):
            wide.paste(t, (i * src.width, 0))
        src = wide
    cw, ch = min(cw, src.width), min(ch, src.height)  # rounding
    x, y = rng.uniform(0, src.width - cw), rng.uniform(0, src.height - ch)
    out = src.resize(size, Image.BICUBIC, box=(x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    return _tinted(out, tint, rng)


def _paste_soft(canvas: Image.Image, patch: Image.Image, mask: Image.Image, x: int, y: int) -> None:
    canvas.paste(patch, (x, y), mask.filter(ImageFilter.GaussianBlur(1.0)))


def _person(canvas: Image.Image, rng: random.Random, foot: int) -> None:
    """A passer-by: a real LFW face on a torso of real texture (clothes), sized by how near the camera it is."""
    fh = max(10, int(foot / H * rng.uniform(18, 46)))
    fw = max(8, int(fh * 0.8))
    face = Image.fromarray(_lfw()[rng.randrange(N_FACES)], "L").resize((fw, fh), Image.BICUBIC)
    face = _tinted(face, (rng.randint(190, 240), rng.randint(150, 195), rng.randint(120, 170)), rng)
    tw, th = int(fw * rng.uniform(1.6, 2.2)), int(fh * rng.uniform(2.0, 2.8))
    torso = _crop(rng.choice(GROUNDS), (tw, th), rng, turn=True)
    torso = ImageEnhance.Brightness(torso).enhance(rng.uniform(0.3, 1.0))
    cx = rng.randint(-tw // 2, W)
    body = Image.new("L", (tw, th), 0)
    ImageDraw.Draw(body).rounded_rectangle((0, 0, tw - 1, th + tw), radius=tw // 2, fill=255)
    _paste_soft(canvas, torso, body, cx - tw // 2, foot - th)
    head = Image.new("L", (fw, fh), 0)
    ImageDraw.Draw(head).ellipse((0, 0, fw - 1, fh - 1), fill=255)
    _paste_soft(canvas, face, head, cx - fw // 2, foot - th - fh + max(1, fh // 8))


def _patch(canvas: Image.Image, rng: random.Random, foot: int) -> None:
    """A small thing on the street: an LFW background crop, or a patch of a texture (a sign, a bush, a box)."""
    w, h = rng.randint(14, 90), rng.randint(14, 110)
    if rng.random() < 0.5:
        img = Image.fromarray(_lfw()[N_FACES + rng.randrange(N_FACES)], "L").resize((w, h), Image.BICUBIC)
        img = _tinted(img, (rng.randint(120, 230), rng.randint(120, 230), rng.randint(120, 230)), rng)
    else:
        img = _crop(rng.choice(GROUNDS + SCENES[:3]), (w, h), rng, turn=True)
    mask = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(mask)
    if rng.random() < 0.5:
        d.ellipse((0, 0, w - 1, h - 1), fill=255)
    else:
        d.rectangle((1, 1, w - 2, h - 2), fill=255)
    _paste_soft(canvas, img, mask, rng.randint(-w // 2, W - w // 2), foot - h)


def street(rng: random.Random) -> Image.Image:
    """A W x H RGB street of real photos: a real scene above a real ground (or either filling the frame), a soft
    horizon between them, real clutter in front, then the light of the day. No sight is ever in it."""
    layout = rng.random()
    if layout < 0.2:  # a wall or a ground seen from above fills the frame
        img, horizon = _crop(rng.choice(GROUNDS), (W, H), rng, turn=True), 0
    elif layout < 0.35:  # the scene fills the frame
        img, horizon = _crop(rng.choice(SCENES), (W, H), rng, turn=False), H
    else:
        horizon = rng.randint(int(H * 0.4), int(H * 0.72))
        band = 10
        img = _crop(rng.choice(GROUNDS), (W, H), rng, turn=True)
        sky = _crop(rng.choice(SCENES), (W, horizon + band), rng, turn=False)
        fade = np.ones((horizon + band, W), np.float32)
        fade[horizon:] = np.linspace(1, 0, band + 2)[1:-1, None]
        img.paste(sky, (0, 0), Image.fromarray((fade * 255).astype(np.uint8), "L"))
    for _ in range(rng.randint(2, 9)):
        foot = rng.randint(max(horizon, int(H * 0.45)), H + 20)
        (_person if rng.random() < 0.55 else _patch)(img, rng, foot)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.75, 1.2))
    return ImageEnhance.Color(img).enhance(rng.uniform(0.7, 1.3))


class PhotoLook:
    """Real photographs: sights cut out of scikit-image's sample photos on streets of its real textures."""

    name = "photo"

    def sight_names(self, rng: random.Random, k: int) -> list[str]:
        """`k` names, "<prefix> <kind>": the photos from `_order(rng)` (rng's first draws), then one prefix each.
        The kinds differ, so the names do."""
        _check(k)
        return [f"{rng.choice(PREFIXES)} {SIGHTS[i].kind}" for i in _order(rng)[:k]]

    def sprites(self, seed: int, k: int) -> list[Image.Image]:
        """The sprites of the photos `sight_names(random.Random(seed), k)` named, in the same order (copies)."""
        _check(k)
        return [_sprite(i).copy() for i in _order(random.Random(seed))[:k]]

    def background(self, rng: random.Random) -> Image.Image:
        return street(rng)
