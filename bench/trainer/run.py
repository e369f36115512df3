"""Trainer benchmark: training time and quality on synthetic cities, then serving latency of the exported model,
ONNX Runtime against eager torch (p50/p99, batch 1), on CPU and on CUDA if present.

    .venv/bin/python -m bench.trainer.run [--seeds 11 12 13] [--sights 5] [--per-sight 40] [--labels weak|boxes]
                                [--threads N] [--device auto|cpu|cuda] [--config JSON] [--json FILE]

Quality, per seed: held-out top-1 sight accuracy; with weak labels, the IoU of the held-out photos' boxes against
their true boxes (which the trainer never saw); with true boxes, held-out mAP@0.5; and on the city's webcam clip,
top-1 and the mean IoU of the right sight's box. Targets (issue "Recognition", 2-core CPU): weak labels, clip
top-1 >= 0.98 and mean IoU >= 0.7; true boxes, mAP@0.5 >= 0.95.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.stats import summary_ms
from localsystem.demo.city import CityInfo, clip_frames, render_city
from localsystem.demo.scoring import iou, score_clip
from sightscan.detector import OnnxDetector
from trainer.data import Dataset, Sample, from_coco_folder, split
from trainer.export import check_onnx, export_onnx, probe_images, session
from trainer.model import ExportWrapper, SightModel
from trainer.train import HeldoutPredictions, TrainConfig, TrainResult, fit


def time_calls(fn: Any, runs: int, warmup: int = 10) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return summary_ms(out)


def latency(model: SightModel, onnx_bytes: bytes, threads: int, runs: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    size = model.input_size
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    wrapper = ExportWrapper(model.cpu().eval()).eval()
    xt = torch.from_numpy(x)

    def eager() -> None:
        with torch.inference_mode():
            wrapper(xt)

    sess = session(onnx_bytes, threads)
    res: dict[str, Any] = {"threads": threads, "input_size": size,
                           "onnxruntime_cpu": time_calls(lambda: sess.run(None, {"images": x}), runs),
                           "torch_eager_cpu": time_calls(eager, runs)}
    res["ratio_eager_over_onnxruntime_p50"] = round(res["torch_eager_cpu"]["p50_ms"]
                                                   / res["onnxruntime_cpu"]["p50_ms"], 2)
    if torch.cuda.is_available():
        gpu = ExportWrapper(model).cuda().eval()
        xg = xt.cuda()

        def eager_gpu() -> None:
            with torch.inference_mode():
                gpu(xg)
            torch.cuda.synchronize()

        res["torch_eager_cuda"] = time_calls(eager_gpu, runs)
        model.cpu()
    return res


@dataclasses.dataclass
class TrainedCity:
    """A seeded synthetic city rendered, split 80/20 and trained (the benches' common start)."""

    info: CityInfo
    dataset: Dataset
    train: list[Sample]
    heldout: list[Sample]
    result: TrainResult
    predictions: HeldoutPredictions
    onnx: bytes               # the exported fp32 graph
    seconds: float            # training and export


def train_city(seed: int, a: argparse.Namespace, cfg: TrainConfig, prefix: str = "bench-city") -> TrainedCity:
    """`a` has sights, per_sight, negatives, labels ("boxes" or "weak") and, optionally, look."""
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}-{seed}-"))
    info = render_city(folder, city=f"Bench {seed}", seed=seed, sights=a.sights, per_sight=a.per_sight,
                       negatives=a.negatives, look=getattr(a, "look", "synthetic"))
    ds = from_coco_folder(folder, weak=a.labels == "weak")
    train, heldout = split(ds.samples, 0.2, 0)
    started = time.monotonic()
    result, pred = fit(ds.classes, train, heldout, cfg)
    onnx_bytes = export_onnx(result.model)
    return TrainedCity(info, ds, train, heldout, result, pred, onnx_bytes, time.monotonic() - started)


def one_city(seed: int, a: argparse.Namespace, cfg: TrainConfig) -> dict[str, Any]:
    city = train_city(seed, a, cfg)
    info, ds, train, heldout, result = city.info, city.dataset, city.train, city.heldout, city.result
    pred, onnx_bytes, total = city.predictions, city.onnx, city.seconds
    probe = probe_images(heldout, cfg.input_size)
    check = check_onnx(result.model, onnx_bytes, probe)
    detector = OnnxDetector(onnx_bytes, ds.classes, cfg.input_size, threads=a.threads)
    clip = score_clip(detector, clip_frames(info, seconds=2.0 * a.sights, fps=10), cfg.input_size)
    m = result.metrics
    out: dict[str, Any] = {
        "seed": seed, "train_images": len(train), "heldout_images": len(heldout),
        "train_seconds": round(result.train_seconds, 1), "train_and_export_seconds": round(total, 1),
        "heldout_top1": round(m["top1"], 4), "clip": clip.as_dict(),
        "heldout_open_set": {k: m[k] for k in ("threshold", "false_claim_rate", "recall", "auroc",
                                               "heldout_negatives")},
        "onnx_check": dataclasses.asdict(check), "stages": result.history, "backbone": m["backbone"],
        "pretrained": m["pretrained"], "model": result.model, "onnx": onnx_bytes,
    }
    if a.labels == "weak":
        # The true boxes of weak samples were never used in training: score the held-out boxes against them.
        sights = [s for s in heldout if not s.negative]
        boxes = [pred.best_box(i, s.primary) for i, s in enumerate(sights)]
        ious = [iou(s.boxes[0], b) for s, b in zip(sights, boxes, strict=True) if b is not None]
        out["heldout_box_iou_when_right"] = round(float(np.mean(ious)), 4) if ious else 0.0
    else:
        out["heldout_map50"] = round(m["map50"], 4)
        out["heldout_map50_95"] = round(m["map"], 4)
    return out


def means(cities: list[dict[str, Any]], labels: str) -> dict[str, float]:
    picks = {"heldout_top1": lambda c: c["heldout_top1"], "clip_top1": lambda c: c["clip"]["top1"],
             "clip_mean_iou": lambda c: c["clip"]["mean_iou"],
             "clip_false_claims": lambda c: c["clip"]["false_claims"],
             "clip_both_boxed": lambda c: c["clip"]["both_boxed"],
             "train_and_export_seconds": lambda c: c["train_and_export_seconds"]}
    if labels == "weak":
        picks["heldout_box_iou_when_right"] = lambda c: c["heldout_box_iou_when_right"]
    else:
        picks["heldout_map50"] = lambda c: c["heldout_map50"]
    return {k: round(float(np.mean([pick(c) for c in cities])), 4) for k, pick in picks.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    p.add_argument("--sights", type=int, default=5)
    p.add_argument("--per-sight", type=int, default=40)
    p.add_argument("--labels", choices=("weak", "boxes"), default="weak")
    p.add_argument("--look", choices=("synthetic", "photo"), default="synthetic")
    p.add_argument("--negatives", type=int, default=8, help="photos of the city's streets with no sight")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--config", default="{}", help="JSON object of further TrainConfig fields")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = TrainConfig(epochs=a.epochs, device=a.device, threads=a.threads)
    cfg = dataclasses.replace(cfg, **json.loads(a.config))
    cities = [one_city(seed, a, cfg) for seed in a.seeds]
    last = cities[-1]
    figures = {
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "config": {k: str(v) for k, v in dataclasses.asdict(cfg).items()},
        "labels": a.labels, "city": f"{a.sights} sights x {a.per_sight} photos",
        "cities": [{k: v for k, v in c.items() if k not in ("model", "onnx")} for c in cities],
        "mean": means(cities, a.labels),
        "latency_batch1": latency(last["model"], last["onnx"], a.threads, a.runs),
    }
    text = json.dumps(figures, indent=1, default=str)
    print(text)
    if a.json:
        a.json.write_text(text)


if __name__ == "__main__":
    main()
