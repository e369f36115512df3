"""int8 against fp32 (issue 21): a seeded synthetic city trained as the trainer trains it, its exported graph
quantized as the trainer quantizes it (trainer/quantize.py), both graphs scored on the held-out split and timed.

    .venv/bin/python -m bench.int8.run [--seeds 11] [--labels boxes|weak] [--sights 5] [--per-sight 40]
                                       [--threads 2] [--runs 200] [--json FILE] [--save DIR]
    .venv/bin/python -m bench.int8.run --time FP32.onnx INT8.onnx... [--repeat 3]   (timing alone, saved graphs)

Per seed: the held-out figures of each graph (top-1, false-claim rate, recall, mean box IoU: trainer/guard.py
`score`, what the trainer decides on), the graph the trainer would serve and why, the sizes, the seconds the
quantization and the extra held-out scoring add to training, and the city's webcam clip through both graphs (top-1
and mean IoU, and the frames whose top sight differs). Then ms per frame, p50/p99, at batch 1 and batch 8 with
`--threads` threads, of fp32 and of each int8 recipe (trainer/quantize.py FLOAT_STRIDES), their runs interleaved
so all see the same machine, and the ratios int8/fp32.
Targets: top-1 within 0.01, mean IoU within 0.02.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.stats import summary_ms
from bench.trainer.run import train_city
from localsystem.demo.city import clip_frames
from localsystem.demo.scoring import ClipScore, frame_truths
from sightscan.detector import OnnxDetector, preprocess
from trainer.config import Tolerance, TrainConfig
from trainer.quantize import FLOAT_STRIDES, calibration_images, decide, quantize


def clip(onnx: bytes, classes: list[str], size: int, frames: list, threads: int) -> tuple[ClipScore, list[str]]:
    """The clip through one graph, as the gateway runs it: its score and each frame's top sight."""
    detector = OnnxDetector(onnx, classes, size, threads=threads)
    score, tops = ClipScore(), []
    for frame in frames:
        (found,) = detector.detect(preprocess(frame.rgb, size)[None])
        score.add(frame_truths(frame), [(d.sight, d.score, d.box) for d in found])
        tops.append(found[0].sight if found else "")
    return score, tops


def latency(graphs: dict[str, bytes], classes: list[str], size: int, batch: int, threads: int,
            runs: int) -> dict[str, Any]:
    """ms per frame of each graph at `batch`, the graphs' runs interleaved (one of each in turn)."""
    detectors = {name: OnnxDetector(g, classes, size, threads=threads) for name, g in graphs.items()}
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    times: dict[str, list[float]] = {name: [] for name in graphs}
    for i in range(runs + 10):
        for name, det in detectors.items():
            t0 = time.perf_counter()
            det.run(x)
            if i >= 10:  # warm-up
                times[name].append((time.perf_counter() - t0) / batch)
    out: dict[str, Any] = {name: summary_ms(t) for name, t in times.items()}
    for name in graphs:
        if name != "fp32":
            out[f"ratio_{name}_over_fp32_p50"] = round(out[name]["p50_ms"] / out["fp32"]["p50_ms"], 2)
            out[f"ratio_{name}_over_fp32_p99"] = round(out[name]["p99_ms"] / out["fp32"]["p99_ms"], 2)
    return out


def one_city(seed: int, a: argparse.Namespace, cfg: TrainConfig) -> dict[str, Any]:
    city = train_city(seed, a, cfg, prefix="bench-int8")
    info, ds, train, heldout, result = city.info, city.dataset, city.train, city.heldout, city.result
    fp32, trained = city.onnx, city.seconds
    # What trainer/pipeline.py does after the export.
    served, graph = decide(fp32, train, heldout, ds.classes, cfg.input_size, result.heldout_negatives, Tolerance(),
                           a.threads, True, result.heldout_boxes)
    # The graph decide() judged last (the one served when int8 is), and every recipe's, for the timing.
    calibration = calibration_images(train, cfg.input_size)
    recipes = {f"int8_float_stride_{stride}": quantize(fp32, calibration, stride) for stride in FLOAT_STRIDES}
    int8 = recipes[f"int8_float_stride_{graph.get('int8', {}).get('float_stride', 0)}"]
    frames = list(clip_frames(info, seconds=2.0 * a.sights, fps=10))
    clips = {name: clip(g, ds.classes, cfg.input_size, frames, a.threads) for name, g in
             (("fp32", fp32), ("int8", int8))}
    differ = sum(x != y for x, y in zip(clips["fp32"][1], clips["int8"][1], strict=True))
    if a.save:
        a.save.mkdir(parents=True, exist_ok=True)
        (a.save / f"{seed}-{a.labels}-fp32.onnx").write_bytes(fp32)
        for name, g in recipes.items():
            (a.save / f"{seed}-{a.labels}-{name}.onnx").write_bytes(g)
    return {
        "seed": seed, "labels": a.labels, "train_images": len(train), "heldout_images": len(heldout),
        "train_and_export_seconds": round(trained, 1), "int8_check_seconds": graph.get("seconds"),
        "served": graph["served"], "reason": graph["reason"], "box_truth": graph.get("box_truth"),
        "heldout": {"fp32": graph.get("fp32"), "int8": graph.get("int8")}, "tried": graph.get("tried"),
        "mb": {k: round(v / 1e6, 2) for k, v in graph["bytes"].items()},
        "clip": {"fp32": clips["fp32"][0].as_dict(), "int8": clips["int8"][0].as_dict(),
                 "frames": len(frames), "top_sight_differs": differ},
        "latency_ms_per_frame": {f"batch{b}": latency({"fp32": fp32, **recipes}, ds.classes, cfg.input_size, b,
                                                      a.threads, a.runs if b == 1 else max(20, a.runs // 4))
                                 for b in (1, 8)},
        "served_is_int8": served == int8,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[11])
    p.add_argument("--labels", choices=("boxes", "weak"), default="boxes")
    p.add_argument("--sights", type=int, default=5)
    p.add_argument("--per-sight", type=int, default=40)
    p.add_argument("--negatives", type=int, default=8)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--json", type=Path)
    p.add_argument("--save", type=Path, help="keep each city's fp32 and int8 graphs here (for --time)")
    p.add_argument("--time", type=Path, nargs="+", metavar="GRAPH",
                   help="only time these graphs: fp32 first, then int8 ones")
    p.add_argument("--repeat", type=int, default=3, help="--time: measure this many times (a shared machine)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.time:
        graphs = {"fp32": a.time[0].read_bytes(), **{f"int8_{i}": g.read_bytes() for i, g in enumerate(a.time[1:])}}
        classes = [f"sight {i}" for i in range(64)]  # the graph's class count does not matter for timing
        runs = [{f"batch{b}": latency(graphs, classes, 224, b, a.threads, a.runs if b == 1 else max(20, a.runs // 4))
                 for b in (1, 8)} for _ in range(a.repeat)]
        print(json.dumps({"threads": a.threads, "runs": runs}, indent=1))
        return
    cfg = TrainConfig(epochs=a.epochs, device="cpu", threads=a.threads)
    cities = [one_city(seed, a, cfg) for seed in a.seeds]
    text = json.dumps({"cities": cities, "threads": a.threads, "torch": torch.__version__}, indent=1, default=str)
    print(text)
    if a.json:
        a.json.write_text(text)


if __name__ == "__main__":
    main()
