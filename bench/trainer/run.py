"""Trainer benchmark: training time and held-out mAP on the synthetic city, then serving latency of the exported
model, ONNX Runtime against eager torch (p50/p99, batch 1, the serving input size), on CPU and on CUDA if present.

    python bench/trainer/run.py [--city DIR] [--epochs N] [--threads N] [--device auto|cpu|cuda] [--json FILE]

Without --city it renders the issue's city (5 sights x 60 images) with sightscan.demo.city.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sightscan.demo.city import render_city  # noqa: E402
from trainer.data import Tensors, from_coco_folder, split  # noqa: E402
from trainer.export import check_onnx, export_onnx, session  # noqa: E402
from trainer.model import ExportWrapper  # noqa: E402
from trainer.train import TrainConfig, fit  # noqa: E402


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "runs": len(samples)}


def time_calls(fn: Any, runs: int, warmup: int = 10) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return percentiles(out)


def latency(detector: torch.nn.Module, onnx_bytes: bytes, size: int, threads: int, runs: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    wrapper = ExportWrapper(detector.cpu().eval(), size).eval()
    xt = torch.from_numpy(x)

    def eager() -> None:
        with torch.inference_mode():
            wrapper(xt)

    sess = session(onnx_bytes, threads)
    res: dict[str, Any] = {"threads": threads,
                           "onnxruntime_cpu": time_calls(lambda: sess.run(None, {"images": x}), runs),
                           "torch_eager_cpu": time_calls(eager, runs)}
    if torch.cuda.is_available():
        gpu = ExportWrapper(detector, size).cuda().eval()
        xg = xt.cuda()

        def eager_gpu(amp: bool) -> None:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                gpu(xg)
            torch.cuda.synchronize()

        res["torch_eager_cuda_fp32"] = time_calls(lambda: eager_gpu(False), runs)
        res["torch_eager_cuda_amp"] = time_calls(lambda: eager_gpu(True), runs)
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            s = ort.InferenceSession(onnx_bytes, providers=["CUDAExecutionProvider"])
            res["onnxruntime_cuda"] = time_calls(lambda: s.run(None, {"images": x}), runs)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--city", type=Path, help="a folder written by sightscan.demo.city (default: render one)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="{}", help="JSON object of further TrainConfig fields, e.g. from sweep.py")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    city = a.city
    if city is None:
        city = render_city(Path(tempfile.mkdtemp(prefix="bench-city-")), sights=5, per_sight=60).folder
    ds = from_coco_folder(city)
    train, heldout = split(ds.samples, 0.2, a.seed)
    cfg = TrainConfig(epochs=a.epochs, input_size=a.size, device=a.device, threads=a.threads, seed=a.seed)
    cfg = dataclasses.replace(cfg, **json.loads(a.config))
    result = fit(ds.classes, train, heldout, cfg)
    onnx_bytes = export_onnx(result.detector, a.size)
    probe = Tensors.build(heldout[:8], a.size).images.numpy().astype(np.float32) / 255.0
    check = check_onnx(result.detector, onnx_bytes, probe, a.size)
    figures = {
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "training": {"config": {k: str(v) for k, v in dataclasses.asdict(cfg).items()},
                     "device": result.device, "train_images": len(train), "heldout_images": len(heldout),
                     "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                     "train_seconds": round(result.train_seconds, 1),
                     "map50": round(result.metrics["map50"], 4), "map50_95": round(result.metrics["map"], 4),
                     "per_sight": result.metrics["per_sight"],
                     "history": [{k: round(v, 4) for k, v in h.items()} for h in result.history]},
        "onnx": {"bytes": len(onnx_bytes), "max_box_diff": check.max_box_diff,
                 "max_score_diff": check.max_score_diff, "class_agreement": check.class_agreement},
        "latency_batch1": latency(result.detector, onnx_bytes, a.size, a.threads, a.runs),
    }
    text = json.dumps(figures, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text)


if __name__ == "__main__":
    main()
