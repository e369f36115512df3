"""Learning from corrections (issue 20's target): a model that confuses one sight, 20 users' corrections of it on a
stretch of the webcam clip, and the next model on the held-back frames of the same stretch.

    .venv/bin/python -m bench.corrections.confusion [--seeds 11 12 13] [--epochs 10] [--threads 2] [--json FILE]

The city (seeded, rendered by localsystem.demo.city) has a crawl with the two faults users meet on the page:
- the confused sight X has few photos of its own, and a search for its look-alike Y returned more photos of X
  (weak labels "Y"): on the clip's stretch showing X the live model names Y, or nothing;
- a search for sight Z returned stills of the webcam's own street with no sight in them (weak labels "Z"): on the
  clip's stretches of empty street the live model claims Z.
The live model trains on that. Users then correct frames of two stretches of the clip, as the page sends them:
"wrong sight: this is X" with X's box on `corrections` frames of X's stretch, and "no sight here" on `negatives`
frames of an empty stretch; the rest of each stretch is held back. The warehouse rows they make (kind user-box,
action wrong-sight; user negatives) go through the trainer's own export (trainer.data.from_warehouse) and
training path (trainer.pipeline.train_dataset, with the live model, so the poisoning guard judges the new one).

Measured on the clip through each model's ONNX graph, before -> after:
- X's top-1 on the held-back frames of its stretch (target: rises by >= 0.3);
- every other sight's top-1 on its own stretch (target: none falls by more than 0.02);
- false claims on the held-back frames of the corrected empty stretch, and on the clip's other empty stretch.
No Kafka or PostgreSQL: the trainer level, as tests/trainer/test_corrections_training.py.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from localsystem.demo.city import (
    CityInfo,
    ClipFrame,
    H,
    W,
    clip_background,
    clip_frames,
    clip_plan,
    pass_lengths,
    render_city,
)
from localsystem.demo.scoring import ClipScore, answers, frame_truths, normalised
from sightscan.db import LabelledImage, StoredModel
from sightscan.detector import OnnxDetector
from trainer.config import TrainConfig
from trainer.data import USER_BOX, Dataset, Negative, Sample, from_coco_folder, from_warehouse
from trainer.guard import Rejected
from trainer.pipeline import train_dataset
from trainer.settings import TrainerSettings

TARGET_RISE = 0.3    # issue 20: the confused sight's top-1 on held-back frames rises by at least this
TARGET_FALL = 0.02   # ... and no other sight's top-1 falls by more than this
_PASS_WEIGHT_EMPTY = 0.7  # localsystem.demo.city: an empty stretch is 0.7 of a sight's pass


@dataclass(frozen=True)
class Setup:
    """One experiment's knobs; the defaults are the bench's (and the slow test's)."""
    sights: int = 4
    per_sight: int = 24          # labeller photos of each sight but X
    confused: int = 0            # X: the sight the live model confuses
    lookalike: int = 1           # Y: what the crawl labelled some of X's photos as
    claimed: int = 2             # Z: what the crawl labelled the street stills as
    own_photos: int = 4          # X's photos labelled X
    mislabelled: int = 6         # X's photos labelled Y (weak)
    street_stills: int = 6       # stills of the webcam's street labelled Z
    stills_boxed: bool = True    # the labeller boxed Z on them (true boxes), or an image-level label only
    corrections: int = 20        # "wrong sight: this is X" frames of X's stretch
    negatives: int = 12          # "no sight here" frames of the first empty stretch
    users: int = 8               # the corrections come from this many users, in turn (each user's share is capped)
    frames_per_pass: int = 50    # clip frames per pass over one sight
    epochs: int = 30
    input_size: int = 224
    threads: int = 2


def _jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _labeller_rows(ds: Dataset, setup: Setup, info: CityInfo, rng: np.random.Generator) -> list[LabelledImage]:
    """The crawl with its two faults, as warehouse label rows (sight ids are class index + 1)."""
    x, y, z = setup.confused, setup.lookalike, setup.claimed
    rows: list[LabelledImage] = []

    def row(s: Sample, label: int, box: tuple[float, float, float, float], weak: bool) -> LabelledImage:
        return LabelledImage(s.key, s.jpeg, W, H, label + 1, ds.classes[label], box, weak)

    of_x = [s for s in ds.samples if not s.negative and s.primary == x]
    if len(of_x) < setup.own_photos + setup.mislabelled:
        raise ValueError(f"{len(of_x)} photos of X, fewer than own_photos + mislabelled")
    kept = {s.key for s in of_x[:setup.own_photos]}
    as_y = {s.key for s in of_x[setup.own_photos:setup.own_photos + setup.mislabelled]}
    for s in ds.samples:
        if s.primary == x and s.key not in kept | as_y:
            continue  # the rest of X's photos: the crawl never found them
        if s.key in as_y:  # a search for Y found a photo of X: an image-level label Y
            rows.append(row(s, y, (0.0, 0.0, 1.0, 1.0), True))
            continue
        rows += [row(s, label, box, False) for box, label in zip(s.boxes, s.labels, strict=True)]
    # A search for Z also found stills of the webcam's street, from anywhere along it, with no sight in view.
    first = max(s.key for s in ds.samples) + 1
    for i, pan in enumerate(rng.uniform(0.0, 1.0, setup.street_stills)):
        still = Sample(first + i, _jpeg(clip_background(info, float(pan))), (), ())
        rows.append(row(still, z, (0.25, 0.3, 0.75, 0.9), False) if setup.stills_boxed
                    else row(still, z, (0.0, 0.0, 1.0, 1.0), True))
    return rows


@dataclass
class Stretches:
    """The clip's frames the experiment uses, shrunk to the model input (the same pixels the graph would see)."""
    corrected: list[ClipFrame]     # X's frames the users correct (full size: their JPEG goes to the warehouse)
    held_back: list[ClipFrame]     # the rest of X's stretch
    said_empty: list[ClipFrame]    # the empty stretch's frames users said "no sight" on (full size)
    empty_held_back: list[ClipFrame]
    other_empty: list[ClipFrame]   # the clip's other empty stretch: nobody corrected it
    own: dict[str, list[ClipFrame]]  # each other sight's frames of its own pass


def _spread(n: int, k: int) -> list[int]:
    """k of n positions, evenly spread over the stretch (a user corrects frames as they come up, not a block)."""
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, k)}) if k else []


def stretches(info: CityInfo, setup: Setup) -> Stretches:
    """Walk the clip once and keep the frames of its single-sight and empty passes."""
    plan = clip_plan(setup.sights)
    weights = [_PASS_WEIGHT_EMPTY if not p else 1.0 for p in plan]
    fps = 10
    seconds = setup.frames_per_pass * sum(weights) / fps
    lengths = pass_lengths(plan, seconds, fps)
    starts = np.cumsum([0, *lengths[:-1]])
    by_pass: dict[int, list[ClipFrame]] = {}
    size = setup.input_size
    for frame in clip_frames(info, seconds=seconds, fps=fps):
        p = int(np.searchsorted(starts, frame.index, side="right") - 1)
        if len(plan[p]) == 2:
            continue
        by_pass.setdefault(p, []).append(frame)
    x_pass = plan.index((setup.confused,))
    empty = [p for p, present in enumerate(plan) if not present]

    def small(f: ClipFrame) -> ClipFrame:  # scored frames only: preprocess would shrink them the same way
        return replace(f, rgb=np.asarray(Image.fromarray(f.rgb).resize((size, size), Image.BILINEAR)))

    x_frames, e_frames = by_pass[x_pass], by_pass[empty[0]]
    fix_x, fix_e = set(_spread(len(x_frames), setup.corrections)), set(_spread(len(e_frames), setup.negatives))
    if len(fix_x) != setup.corrections or len(fix_x) >= len(x_frames) or len(fix_e) >= len(e_frames):
        raise ValueError("the stretches are too short for the corrections: raise frames_per_pass")
    return Stretches(
        corrected=[f for i, f in enumerate(x_frames) if i in fix_x],
        held_back=[small(f) for i, f in enumerate(x_frames) if i not in fix_x],
        said_empty=[f for i, f in enumerate(e_frames) if i in fix_e],
        empty_held_back=[small(f) for i, f in enumerate(e_frames) if i not in fix_e],
        other_empty=[small(f) for f in by_pass[empty[1]]] if len(empty) > 1 else [],
        own={info.sights[p[0]]: [small(f) for f in by_pass[i]] for i, p in enumerate(plan)
             if len(p) == 1 and p[0] != setup.confused})


def correction_rows(st: Stretches, ds: Dataset, setup: Setup, first_id: int) -> tuple[
        list[LabelledImage], list[Negative]]:
    """What the corrections endpoint stores: each frame as a user image, a wrong-sight correction as a user-box
    label of X with X's true box, a no-sight one as a user negative; users take turns (ids 1..users)."""
    x = setup.confused
    boxes = [LabelledImage(first_id + i, _jpeg(f.rgb), W, H, x + 1, ds.classes[x], normalised(f.truths[0][1]),
                           False, USER_BOX, "wrong-sight", 1 + i % setup.users)
             for i, f in enumerate(st.corrected)]
    n = len(boxes)
    negatives = [Negative(first_id + n + i, _jpeg(f.rgb), "user", 1 + (n + i) % setup.users)
                 for i, f in enumerate(st.said_empty)]
    return boxes, negatives


def _settings(setup: Setup, seed: int) -> TrainerSettings:
    return TrainerSettings(train=TrainConfig(epochs=setup.epochs, input_size=setup.input_size, device="cpu",
                                             threads=setup.threads, seed=seed),
                           heldout_fraction=0.2, min_sights=2, group_id="unused", cloud=None, idle_stop_s=0)


def measure(onnx: bytes, classes: Sequence[str], st: Stretches, setup: Setup) -> dict[str, Any]:
    """One model's figures on the held-back frames: X's top-1 and what it said instead, each other sight's top-1,
    and false claims on both empty stretches."""
    detector = OnnxDetector(onnx, classes, setup.input_size, threads=setup.threads)

    def scored(frames: list[ClipFrame]) -> tuple[ClipScore, list]:
        found = answers(detector, frames, setup.input_size)
        score = ClipScore()
        for frame, dets in zip(frames, found, strict=True):
            score.add(frame_truths(frame), dets)
        return score, found

    x_score, x_found = scored(st.held_back)
    said = _said(x_found)
    return {"confused_top1": round(x_score.top1, 4), "confused_said": said,
            "others_said": {name: _said(scored(frames)[1]) for name, frames in st.own.items()},
            "others_top1": {name: round(scored(frames)[0].top1, 4) for name, frames in st.own.items()},
            "empty_false_claims": round(scored(st.empty_held_back)[0].false_claims, 4),
            "other_empty_false_claims": round(scored(st.other_empty)[0].false_claims, 4)}


def _said(found: list[list]) -> dict[str, int]:
    """How often each answer was the top one (what a sight was taken for)."""
    said: dict[str, int] = {}
    for dets in found:
        name = dets[0][0] if dets else "(nothing)"
        said[name] = said.get(name, 0) + 1
    return said


def run(seed: int, setup: Setup = Setup(), folder: Path | None = None) -> dict[str, Any]:
    """The experiment on the city of `seed`: the figures before and after, the guard's verdict, the timings."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    folder = folder or Path(tempfile.mkdtemp(prefix=f"corrections-{seed}-"))
    per_sight = max(setup.per_sight, setup.own_photos + setup.mislabelled)
    info = render_city(folder, city=f"Confusia {seed}", seed=seed, sights=setup.sights, per_sight=per_sight)
    ds = from_coco_folder(folder)
    labeller = _labeller_rows(ds, setup, info, rng)
    ts = _settings(setup, seed)
    started = time.monotonic()
    # The warehouse export as the trainer makes it (trainer.pipeline.export_dataset), min 3 images per sight.
    city = from_warehouse(labeller, 3)
    assert city.classes == ds.classes, "every sight keeps enough photos to be trained"
    _, live_onnx, live_metrics, _ = train_dataset(city, ts)
    live = StoredModel(1, 1, 1, live_onnx, city.classes, setup.input_size, live_metrics)
    live_s = time.monotonic() - started
    st = stretches(info, setup)
    before = measure(live_onnx, city.classes, st, setup)
    boxes, negatives = correction_rows(st, city, setup, first_id=max(r.image_id for r in labeller) + 1)
    corrected = from_warehouse(labeller + boxes, 3, negatives)
    started = time.monotonic()
    out: dict[str, Any] = {"seed": seed, "confused": city.classes[setup.confused],
                           "lookalike": city.classes[setup.lookalike], "claimed": city.classes[setup.claimed],
                           "held_back_frames": len(st.held_back), "empty_held_back_frames": len(st.empty_held_back),
                           "before": before, "live_top1": round(live_metrics["top1"], 4),
                           "live_threshold": live_metrics["threshold"]}
    try:
        _, onnx, metrics, _ = train_dataset(corrected, ts, live=live)
    except Rejected as refused:  # a real finding, not a failure of the bench: reported as it is
        out.update(refused=str(refused), guard=refused.guard, after=None)
        return out
    after = measure(onnx, corrected.classes, st, setup)
    # "graph": which graph was served and measured (int8 or fp32, trainer/quantize.py) where the trainer says.
    out.update(after=after, guard=metrics["guard"], threshold=metrics["threshold"], top1=metrics["top1"],
               graph=metrics.get("graph"),
               corrections=metrics["corrections"],
               seconds={"live": round(live_s, 1), "retrain": round(time.monotonic() - started, 1)})
    out["rise"] = round(after["confused_top1"] - before["confused_top1"], 4)
    out["worst_other_change"] = round(min(after["others_top1"][n] - before["others_top1"][n]
                                          for n in before["others_top1"]), 4)
    out["met"] = out["rise"] >= TARGET_RISE and out["worst_other_change"] >= -TARGET_FALL
    return out


def table(results: list[dict[str, Any]]) -> str:
    """The figures per seed, before -> after, with the targets (Markdown)."""
    lines = [f"Targets: confused sight's top-1 on held-back frames rises by >= {TARGET_RISE}; no other sight's "
             f"top-1 falls by more than {TARGET_FALL}.", "",
             "| seed | confused sight top-1 | rise | other sights' top-1 (worst change) | no-sight stretch false "
             "claims | other empty stretch | guard | target met |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        b, a = r["before"], r["after"]
        if a is None:
            lines.append(f"| {r['seed']} | {b['confused_top1']:.2f} -> refused | | | | | {r['refused']} | no |")
            continue
        others = ", ".join(f"{b['others_top1'][n]:.2f}->{a['others_top1'][n]:.2f}" for n in b["others_top1"])
        g = r["guard"]
        guard = (f"kept (top-1 {g['live']['top1']:.2f}->{g['candidate']['top1']:.2f})" if g.get("checked")
                 else g["reason"])
        lines.append(f"| {r['seed']} | {b['confused_top1']:.2f} -> {a['confused_top1']:.2f} | {r['rise']:+.2f} | "
                     f"{others} ({r['worst_other_change']:+.2f}) | {b['empty_false_claims']:.2f} -> "
                     f"{a['empty_false_claims']:.2f} | {b['other_empty_false_claims']:.2f} -> "
                     f"{a['other_empty_false_claims']:.2f} | {guard} | {'yes' if r['met'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    p.add_argument("--epochs", type=int, default=Setup.epochs)
    p.add_argument("--threads", type=int, default=Setup.threads)
    p.add_argument("--setup", default="{}", help="JSON object of further Setup fields")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    setup = replace(Setup(epochs=a.epochs, threads=a.threads), **json.loads(a.setup))
    results = []
    for seed in a.seeds:
        results.append(run(seed, setup))
        print(json.dumps(results[-1], default=str), flush=True)
    print(json.dumps({"setup": asdict(setup)}))
    print(table(results))
    if a.json:
        a.json.write_text(json.dumps({"setup": asdict(setup), "seeds": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
