"""The training loop: AdamW with warm-up and cosine decay, AMP on CUDA, early stopping on held-out mAP@0.5."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.data import Sample, Tensors, augment
from trainer.evaluate import coco_map
from trainer.loss import detection_loss
from trainer.model import Detector, ExportWrapper, load_backbone_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    input_size: int = 256
    # Chosen by bench/trainer/sweep.py on the synthetic city: small batches (more updates per epoch), a moderate
    # learning rate and moderate zoom reach the held-out bar in the fewest epochs.
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 5e-4
    patience: int = 4            # evaluations without a better held-out mAP@0.5 before stopping
    eval_every: int = 2          # epochs between held-out evaluations
    seed: int = 0
    backbone: str = "tiny"
    zoom_min: float = 0.7        # augmentation: crop window size relative to the frame (<1 zooms in, >1 out)
    zoom_max: float = 1.15
    width: int = 16              # channels of the tiny backbone's first stage (x2, x4, x6, x8 deeper)
    backbone_weights: Path | None = None
    device: str = "auto"         # auto | cpu | cuda
    threads: int = 0             # torch CPU threads; 0 = torch's default
    time_budget_s: float = 0.0   # stop after this much training time (0 = no limit), a guard for small machines


@dataclass
class TrainResult:
    detector: Detector
    classes: list[str]
    metrics: dict[str, Any]
    epochs_run: int
    best_epoch: int
    train_seconds: float
    device: str
    history: list[dict[str, float]] = field(default_factory=list)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def predict(detector: Detector, images_u8: torch.Tensor, input_size: int, device: torch.device,
            batch: int = 32) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Serving-graph detections (decoding, NMS, top-K as exported) for uint8 [N,3,S,S] images."""
    wrapper = ExportWrapper(detector, input_size).to(device).eval()
    out = []
    for i in range(0, images_u8.shape[0], batch):
        x = images_u8[i:i + batch].to(device).float() / 255.0
        boxes, scores, classes = wrapper(x)
        out += list(zip(boxes.cpu().numpy(), scores.cpu().numpy(), classes.cpu().numpy(), strict=True))
    return out


def evaluate(detector: Detector, classes: list[str], heldout: list[Sample], tensors: Tensors, input_size: int,
             device: torch.device) -> dict[str, Any]:
    was_training = detector.training
    detector.eval()
    dets = predict(detector, tensors.images, input_size, device)
    detector.train(was_training)
    return coco_map(classes, [(s.boxes, s.labels) for s in heldout], dets)


def fit(classes: list[str], train: list[Sample], heldout: list[Sample], cfg: TrainConfig,
        progress: Callable[[int, int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train a detector on `train`, keep the weights with the best held-out mAP@0.5, return them with metrics."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    size = cfg.input_size
    # Train from a larger cache so zoom-in crops keep detail; held-out at exactly the serving size.
    train_t = Tensors.build(train, int(size * 1.25))
    held_t = Tensors.build(heldout, size)

    # On a GPU the uint8 cache moves there once and augmentation runs there too.
    train_images = train_t.images.to(device)
    detector = Detector(len(classes), cfg.backbone, cfg.width)
    if cfg.backbone_weights:
        loaded, missing = load_backbone_weights(detector, cfg.backbone_weights)
        log.info("backbone weights loaded", extra={"path": str(cfg.backbone_weights), "tensors": loaded,
                                                   "missing": missing})
    detector.to(device).train()
    use_amp = device.type == "cuda"
    opt = torch.optim.AdamW(detector.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_t) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    warmup = min(steps_per_epoch * 2, total // 5 + 1)

    def lr_at(step: int) -> float:
        if step < warmup:
            return cfg.lr * (step + 1) / warmup
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    best: tuple[float, int, dict[str, Any], dict[str, torch.Tensor]] | None = None
    evals_without_gain, step, epoch = 0, 0, 0
    history: list[dict[str, float]] = []
    started = time.monotonic()
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(train_t), generator=gen)
        sums = {"loss": 0.0, "cls": 0.0, "box": 0.0, "ctr": 0.0}
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one image
                continue
            images, boxes, labels = augment(train_images[idx].float() / 255.0, train_t.boxes[idx].to(device),
                                            train_t.labels[idx].to(device), size, gen, (cfg.zoom_min, cfg.zoom_max))
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                outputs = detector(images)
            losses = detection_loss(outputs, boxes, labels, size)
            opt.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(detector.parameters(), 10.0)
            scaler.step(opt)
            scaler.update()
            step += 1
            for k in sums:
                sums[k] += float(losses[k].detach()) / steps_per_epoch
        record = {"epoch": float(epoch), **sums, "seconds": time.monotonic() - started}
        out_of_time = cfg.time_budget_s and record["seconds"] >= cfg.time_budget_s
        # The first third of a cosine schedule never holds the best weights: skip its evaluations (CPU time).
        due = epoch > cfg.epochs // 3 and epoch % cfg.eval_every == 0
        if due or epoch == cfg.epochs or out_of_time:
            metrics = evaluate(detector, classes, heldout, held_t, size, device)
            record.update(map50=metrics["map50"], map=metrics["map"])
            score = (metrics["map50"], metrics["map"])
            if best is None or score > (best[0], best[2]["map"]):
                best = (metrics["map50"], epoch, metrics, copy.deepcopy(detector.state_dict()))
                evals_without_gain = 0
            else:
                evals_without_gain += 1
        history.append(record)
        log.info("epoch done", extra={k: round(v, 4) for k, v in record.items()})
        if progress:
            progress(epoch, cfg.epochs, record)
        if evals_without_gain >= cfg.patience:
            log.info("early stop", extra={"epoch": epoch, "best_epoch": best[1] if best else 0})
            break
        if out_of_time:
            log.warning("training time budget reached", extra={"epoch": epoch, "budget_s": cfg.time_budget_s})
            break
    assert best is not None  # the last epoch always evaluates
    detector.load_state_dict(best[3])
    detector.eval()
    return TrainResult(detector.cpu(), list(classes), best[2], epoch, best[1], time.monotonic() - started,
                       str(device), history)
