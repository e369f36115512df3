"""How many epochs (and which learning rate / width) reach the held-out mAP@0.5 bar: one line per configuration.

    python bench/trainer/sweep.py --city DIR [--device cuda] '{"epochs": 16}' '{"epochs": 20, "lr": 0.008}' ...

Each argument is a JSON object of TrainConfig fields; eval_every is 1 so the history shows the curve.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainer.data import from_coco_folder, split  # noqa: E402
from trainer.train import TrainConfig, fit  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--city", type=Path, required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("configs", nargs="+")
    a = p.parse_args()
    ds = from_coco_folder(a.city)
    train, heldout = split(ds.samples, 0.2, 0)
    for raw in a.configs:
        cfg = dataclasses.replace(TrainConfig(device=a.device, eval_every=1, patience=100), **json.loads(raw))
        r = fit(ds.classes, train, heldout, cfg)
        curve = [round(h.get("map50", -1), 3) for h in r.history]
        print(json.dumps({"config": json.loads(raw), "map50": round(r.metrics["map50"], 4),
                          "map": round(r.metrics["map"], 4), "best_epoch": r.best_epoch,
                          "seconds": round(r.train_seconds, 1), "curve": curve}), flush=True)


if __name__ == "__main__":
    main()
