"""Training data: samples from the warehouse (or a COCO-style folder), filtering, the stratified split, augmentation.

A sample is either box-labelled (true boxes, e.g. Google Vision's landmarks) or weak: an image-level label, the
sight the image was crawled for. A weak sample's box says nothing about where the sight is; the trainer localises
it itself (trainer/pseudo_boxes.py) and never trains the box head on the stored box.

Users' corrections (docs/corrections.md) are samples too, of origin "user": a frame's user boxes are its true
boxes (they win over whatever the labeller said of the same image: a person looked at this frame), a "no sight"
frame is a negative, and a frame corrected with "wrong sight" is a hard example, repeated in training. User samples
train and never judge: the held-out split is drawn from the labeller's samples only (`training_split`), so the
metrics, the calibration and the poisoning guard (trainer/guard.py) are measured on data no user can change, and
each user's share of the training set is capped.

Boxes are kept normalised (x_min, y_min, x_max, y_max in 0..1 of the frame) end to end, as the warehouse stores
them and as the model contract outputs them, so stretching a frame to the square input never changes a box.
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

if TYPE_CHECKING:  # the warehouse layer (psycopg2) is only needed where rows come from the warehouse
    from sightscan.db import LabelledImage


class NotEnoughData(ValueError):
    """The city's labelled data cannot train a model; the message is the reason reported in the failure event."""


@dataclass(frozen=True)
class Sample:
    key: int                           # image id
    jpeg: bytes                        # encoded bytes, decoded lazily
    boxes: tuple[tuple[float, float, float, float], ...]
    labels: tuple[int, ...]            # indices into the class list
    weak: bool = False                 # image-level label only: `boxes` are not locations (see the module doc)
    origin: str = "labeller"           # "labeller", or "user": a user's correction (trains, never held out)
    user_id: int | None = None         # the user whose correction it is (None: the operator's, or the labeller's)
    hard: bool = False                 # a "wrong sight" correction: the model named another sight here

    @property
    def negative(self) -> bool:
        """A photo of the city that shows none of its sights: no boxes, no labels (what "no sight" looks like)."""
        return not self.labels

    @property
    def primary(self) -> int:
        """The sight the image is mostly of (largest box; a weak sample's one label): what the split stratifies on
        and what top-1 accuracy is scored against. -1 for a negative."""
        if self.negative:
            return -1
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in self.boxes]
        return self.labels[int(np.argmax(areas))]


@dataclass(frozen=True)
class Dataset:
    classes: list[str]
    samples: list[Sample]
    sight_ids: list[int | None]  # warehouse sight id per class (None for folder data)


USER_BOX = "user-box"  # a label kind (sql/migrations/0006_corrections.sql)


@dataclass(frozen=True)
class Negative:
    """A frame that shows none of the city's sights: a user's "no sight" (user_id None: the operator's)."""
    image_id: int
    data: bytes
    origin: str = "user"
    user_id: int | None = None


def from_warehouse(rows: Iterable[LabelledImage], min_images_per_label: int,
                   negatives: Iterable[Negative | tuple[int, bytes]] = ()) -> Dataset:
    """Group label rows by image, drop sights with fewer than `min_images_per_label` images, index the rest; add
    the frames of no sight (`negatives`) as negative samples.

    Rows carry a label's `kind`, and a user box its correction's `action` and `user_id` (sightscan/db.py). On an
    image with user boxes, the user boxes are its boxes and the labeller's labels of it are left out. A negative is
    left out when the image has a box of a kept sight from a user (a user box wins over a user's "no sight"), and
    wins over the labeller's labels of the image."""
    negatives = [n if isinstance(n, Negative) else Negative(n[0], bytes(n[1]), "labeller") for n in negatives]
    said_nothing = {n.image_id for n in negatives}
    by_image: dict[int, list[LabelledImage]] = defaultdict(list)
    for row in rows:
        by_image[row.image_id].append(row)
    images_per_sight = Counter(sid for labels in by_image.values() for sid in {r.sight_id for r in labels})
    names = {r.sight_id: r.sight_name for labels in by_image.values() for r in labels}
    kept = sorted(sid for sid, n in images_per_sight.items() if n >= min_images_per_label)
    index = {sid: i for i, sid in enumerate(kept)}
    samples = []
    for image_id, labels in sorted(by_image.items()):
        kept_labels = [r for r in labels if r.sight_id in index]
        user_boxes = [r for r in kept_labels if r.kind == USER_BOX]
        if user_boxes:
            samples.append(Sample(image_id, labels[0].data, tuple(tuple(map(float, r.box)) for r in user_boxes),
                                  tuple(index[r.sight_id] for r in user_boxes), False, "user", user_boxes[0].user_id,
                                  any(r.action == "wrong-sight" for r in user_boxes)))
            continue
        # An image whose only sights were dropped would teach "this building is background": leave it out. So is
        # a frame a user said shows no sight: it is a negative (below).
        kept_labels = [r for r in kept_labels if r.kind != USER_BOX]
        if not kept_labels or image_id in said_nothing:
            continue
        # The labeller gives an image either true boxes or its one weak label, never both; were both there, the
        # true boxes win (they carry strictly more information).
        true_boxes = [r for r in kept_labels if not r.weak]
        chosen, weak = (true_boxes, False) if true_boxes else (kept_labels[:1], True)
        samples.append(Sample(image_id, labels[0].data, tuple(tuple(map(float, r.box)) for r in chosen),
                              tuple(index[r.sight_id] for r in chosen), weak))
    labelled = {s.key for s in samples}
    seen: set[int] = set()
    for n in negatives:
        if n.image_id not in labelled and n.image_id not in seen:
            seen.add(n.image_id)
            samples.append(Sample(n.image_id, bytes(n.data), (), (), origin=n.origin, user_id=n.user_id))
    return Dataset([names[sid] for sid in kept], samples, list(kept))


def from_coco_folder(folder: Path, weak: bool = False) -> Dataset:
    """A COCO-style folder (annotations.json with pixel boxes), as localsystem.demo.city renders a synthetic city.

    weak=True keeps only what the offline loop knows: each image's query sight as an image-level label. Its true
    box is kept in `boxes` so that benchmarks can score localisation, but marked weak, so training ignores it.
    """
    coco = json.loads((folder / "annotations.json").read_text())
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    samples = []
    for img in coco["images"]:
        anns = by_image.get(img["id"])
        if img.get("query_sight", "") is None:  # a photo of the city's streets, showing no sight
            samples.append(Sample(img["id"], (folder / img["file_name"]).read_bytes(), (), (), weak))
            continue
        if not anns:
            continue
        w, h = img["width"], img["height"]
        boxes = tuple((a["bbox"][0] / w, a["bbox"][1] / h, (a["bbox"][0] + a["bbox"][2]) / w,
                       (a["bbox"][1] + a["bbox"][3]) / h) for a in anns)
        labels = tuple(index[a["category_id"]] for a in anns)
        if weak:
            query = next(c["id"] for c in cats if c["name"] == img["query_sight"])
            at = [a["category_id"] for a in anns]
            boxes = (boxes[at.index(query)] if query in at else (0.0, 0.0, 1.0, 1.0),)
            labels = (index[query],)
        samples.append(Sample(img["id"], (folder / img["file_name"]).read_bytes(), boxes, labels, weak))
    return Dataset([c["name"] for c in cats], samples, [None] * len(cats))


@dataclass(frozen=True)
class Previous:
    """What the live model was split from (its metrics' `heldout_ids` and `max_image_id`): the images it held out,
    and the newest image it could have seen."""
    heldout: frozenset[int]
    max_image_id: int

    @classmethod
    def of(cls, metrics: dict) -> Previous | None:
        """From a model's metrics; None for a model that did not record them (trained before the guard)."""
        held, newest = metrics.get("heldout_ids"), metrics.get("max_image_id")
        if not isinstance(held, list) or not isinstance(newest, int):
            return None
        return cls(frozenset(int(k) for k in held), newest)

    def unseen(self, key: int) -> bool:
        """The live model never trained on this image: it held it out, or it is newer than the live model."""
        return key in self.heldout or key > self.max_image_id


def split(samples: Sequence[Sample], heldout_fraction: float, seed: int,
          previous: Previous | None = None) -> tuple[list[Sample], list[Sample]]:
    """Split by image, stratified by each image's primary sight; the same seed always gives the same split.

    With `previous` (the live model's split), a retrained model holds out the images the live one held out first,
    then images newer than the live model, and only then images the live model trained on, each in the seeded
    order: its held-out images are ones the live model never trained on, unless a sight's held-out share grew past
    those. That lets the poisoning guard score both models on one held-out set (trainer/guard.py)."""
    groups: dict[int, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: s.key):
        groups[s.primary].append(s)
    train, heldout = [], []
    for label in sorted(groups):
        group = groups[label]
        random.Random(seed * 1_000_003 + label).shuffle(group)
        if previous is not None:  # a stable sort: the seeded order within each rank
            group.sort(key=lambda s: 0 if s.key in previous.heldout else 1 if s.key > previous.max_image_id else 2)
        # At least one held-out image per sight, so every sight is scored; at least one left to train on.
        n_held = min(len(group) - 1, max(1, round(len(group) * heldout_fraction)))
        heldout += group[:n_held]
        train += group[n_held:]
    return train, heldout


@dataclass(frozen=True)
class UserData:
    """What the users' corrections put in a training set (reported in the model's metrics)."""
    boxes: int = 0          # user-box samples trained on (before repeats)
    negatives: int = 0      # user "no sight" frames trained on
    hard: int = 0           # of the boxes, "wrong sight" ones, each trained 1 + hard_repeats times
    users: int = 0          # distinct users (the operator counts as one)
    capped: int = 0         # user samples left out by the share cap

    def as_dict(self) -> dict[str, int]:
        return {"boxes": self.boxes, "negatives": self.negatives, "hard": self.hard, "users": self.users,
                "capped": self.capped}


def training_split(samples: Sequence[Sample], heldout_fraction: float, seed: int, max_user_share: float = 1.0,
                   hard_repeats: int = 0, previous: Previous | None = None) -> tuple[
                       list[Sample], list[Sample], UserData]:
    """(train, held out, what users contributed): the labeller's samples split by `split` (after the live model's
    split, `previous`); every user sample trains, a "wrong sight" one 1 + `hard_repeats` times (each copy gets its
    own augmented views and pairs).

    The cap: one user's samples, counted with their repeats, are at most `max_user_share` of the labeller's
    training samples (at least one sample each); past it, a user's newest corrections (highest image ids) are left
    out. The operator's corrections (user_id None) are not capped: the operator is trusted as the labeller is."""
    labeller = [s for s in samples if s.origin != "user"]
    users = sorted((s for s in samples if s.origin == "user"), key=lambda s: s.key)
    train, heldout = split(labeller, heldout_fraction, seed, previous)
    allowed = max(1.0, max_user_share * len(train))
    spent: dict[int | None, int] = defaultdict(int)
    kept, capped = [], 0
    for s in users:
        weight = 1 + hard_repeats if s.hard else 1
        if s.user_id is not None and spent[s.user_id] + weight > allowed:
            capped += 1
            continue
        spent[s.user_id] += weight
        kept.append(s)
    for s in kept:
        train += [s] * (1 + hard_repeats if s.hard else 1)
    info = UserData(sum(not s.negative for s in kept), sum(s.negative for s in kept), sum(s.hard for s in kept),
                    len({s.user_id for s in kept}), capped)
    return train, heldout, info


def check_trainable(dataset: Dataset, min_sights: int = 1) -> None:
    if not dataset.samples:
        raise NotEnoughData("no labelled images with boxes for sights that have enough images")
    if len(dataset.classes) < min_sights:
        raise NotEnoughData(f"only {len(dataset.classes)} sight(s) with enough images; need {min_sights}")


def decode(sample: Sample, size: int) -> np.ndarray:
    """Encoded image -> SxSx3 uint8, stretched like sightscan.detector.preprocess does."""
    with Image.open(io.BytesIO(sample.jpeg)) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))


@dataclass
class Tensors:
    """A split decoded once into memory: images uint8 [N,3,S,S], padded boxes [N,M,4] (0..1), labels [N,M] (-1 pad)."""

    images: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def build(cls, samples: Sequence[Sample], size: int) -> Tensors:
        m = max([1, *(len(s.boxes) for s in samples)])
        images = torch.from_numpy(np.stack([decode(s, size) for s in samples])).permute(0, 3, 1, 2).contiguous()
        boxes = torch.zeros(len(samples), m, 4)
        labels = torch.full((len(samples), m), -1, dtype=torch.int64)
        for i, s in enumerate(samples):
            if s.boxes:
                boxes[i, : len(s.boxes)] = torch.tensor(s.boxes)
                labels[i, : len(s.labels)] = torch.tensor(s.labels)
        return cls(images, boxes, labels)

    def __len__(self) -> int:
        return self.images.shape[0]


def augment(images: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, size: int, gen: torch.Generator,
            zoom: tuple[float, float] = (0.55, 1.25)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random zoom in/out with aspect jitter, shift, horizontal flip and colour jitter, on a whole batch.

    Suited to photos of buildings: framing, distance and light vary, buildings stay upright (no vertical flip or
    rotation) and a mirrored facade is still the same sight. images are float 0..1 [N,3,H,W]; boxes 0..1.
    """
    n = images.shape[0]
    s = torch.empty(n).uniform_(*zoom, generator=gen)                # window size relative to the frame
    r = torch.exp(torch.empty(n).uniform_(-0.2, 0.2, generator=gen))
    a = torch.stack([s * r, s / r], dim=1).clamp(0.4, 1.4)           # per axis
    lo, hi = torch.minimum(torch.zeros_like(a), 1 - a), torch.maximum(torch.zeros_like(a), 1 - a)
    t = lo + (hi - lo) * torch.rand(n, 2, generator=gen)               # window origin
    flip = torch.rand(n, generator=gen) < 0.5
    sign_x = torch.where(flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = a[:, 0] * sign_x
    theta[:, 1, 1] = a[:, 1]
    theta[:, :, 2] = a + 2 * t - 1
    # Random draws stay on the CPU generator (reproducible on any device); the pixel work runs where images are.
    dev = images.device
    a, t, flip = a.to(dev), t.to(dev), flip.to(dev)
    grid = F.affine_grid(theta.to(dev), [n, 3, size, size], align_corners=False)
    # Sample around grey so zoomed-out borders are neutral rather than black.
    out = F.grid_sample(images - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5

    # Boxes: v = (u - t) / a, mirrored when flipped.
    b = boxes.clone()
    ax, ay, tx, ty = (v[:, None] for v in (a[:, 0], a[:, 1], t[:, 0], t[:, 1]))
    x0, x1 = (b[..., 0] - tx) / ax, (b[..., 2] - tx) / ax
    fx = flip[:, None]
    b[..., 0], b[..., 2] = torch.where(fx, 1 - x1, x0), torch.where(fx, 1 - x0, x1)
    b[..., 1], b[..., 3] = (b[..., 1] - ty) / ay, (b[..., 3] - ty) / ay
    full = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    b = b.clamp(0, 1)
    wh = (b[..., 2:] - b[..., :2])
    visible = (wh[..., 0] * wh[..., 1]) / full.clamp(min=1e-9)
    # A sight mostly cut off is dropped rather than taught as a tiny fragment.
    keep = (labels >= 0) & (visible >= 0.4) & (wh.min(dim=-1).values >= 0.04)
    new_labels = torch.where(keep, labels, torch.full_like(labels, -1))

    # Colour: brightness, contrast, saturation.
    bright = torch.empty(n, 1, 1, 1).uniform_(0.7, 1.3, generator=gen).to(dev)
    contrast = torch.empty(n, 1, 1, 1).uniform_(0.7, 1.3, generator=gen).to(dev)
    sat = torch.empty(n, 1, 1, 1).uniform_(0.6, 1.4, generator=gen).to(dev)
    out = out * bright
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean
    grey = (0.299 * out[:, 0:1] + 0.587 * out[:, 1:2] + 0.114 * out[:, 2:3])
    out = (out - grey) * sat + grey
    return out.clamp(0, 1), b, new_labels
