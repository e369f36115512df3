"""Training a sight model from image-level (weak) labels, true boxes and photos of no sight: a dense head with a
background class over frozen ImageNet features, its "no sight" threshold calibrated on held-out data.

The method, step by step (names and papers in trainer/model.py, trainer/targets.py, trainer/pseudo_boxes.py and
trainer/calibrate.py):
1. Features. The ImageNet backbone is frozen: its features of every training image, of `views` augmented copies
   (zoom, shift, flip, colour) and of the away crops are computed once. On 2 CPU cores this is most of the
   training time, and it is why a city trains in seconds rather than minutes. (Without ImageNet weights a tiny
   CNN is first trained end to end on the image labels, then frozen the same way.)
2. Where the weak images' sights are: a linear classifier over pooled features gives each image's class
   activation map, which GrabCut refines into a pseudo-box (trainer/pseudo_boxes.py). True boxes (Google
   Vision's) are used as they are, every one of an image.
3. What is not a sight: the cells outside every box, away crops of each photo (windows that overlap none of its
   boxes) and the city's photos of no sight, all taught as background (trainer/targets.py).
4. The dense head learns, per grid cell, sight-or-background and the box (trainer/model.py).
5. Refinement (self-training): a weak image may show a second, unlabelled sight. Where the first head names
   another sight with confidence in a weak image's background, those cells are ignored instead of taught as
   background, and the head is trained again.
6. Calibration: the threshold of the "no sight" rule is set on held-out no-sight images for TRAINER_FALSE_CLAIM_RATE
   and stored in the graph (trainer/calibrate.py); the held-out figures are measured at it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from trainer.backbones import BackboneChoice, build, choose_backbone
from trainer.calibrate import Calibration, calibrate
from trainer.config import TrainConfig
from trainer.data import Sample, Tensors, augment
from trainer.evaluate import classification_report, coco_map
from trainer.features import FeatureExtractor
from trainer.model import BACKGROUND, SightModel, decode_boxes, detections, per_cell
from trainer.pseudo_boxes import contrastive_cams, pseudo_boxes
from trainer.targets import IGNORE, away_crops, cell_targets, side_by_side

log = logging.getLogger(__name__)

METHOD = ("dense head over a frozen ImageNet MobileNetV2 (FCOS-style, Tian et al. 2019) with a background class "
          "(open set, as in Dhamija et al. 2018) trained on cells outside the boxes, away crops and no-sight photos; "
          "threshold calibrated on held-out no-sight images; Fast NMS (Bolya et al. 2019); weak labels localised by "
          "CAM (Zhou et al. 2016) + GrabCut (Rother et al. 2004) pseudo-boxes, self-training")
Progress = Callable[[int, int, dict[str, float]], None]
Box = tuple[float, float, float, float]


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
    heldout_negatives: torch.Tensor | None = None  # uint8 [K,3,S,S]: the "no sight" frames it was calibrated on
    # Each held-out sight image's boxes as far as they are known: true boxes, or the weak image's pseudo-box (what
    # the int8 check scores boxes against where no true box is held out: trainer/quantize.py).
    heldout_boxes: list[list[Box]] | None = None


@dataclass
class HeldoutPredictions:
    """The graph's detections on the held-out images, unthresholded, best first (for metrics and benchmarks)."""

    boxes: np.ndarray            # [N,K,4] normalised
    scores: np.ndarray           # [N,K]
    classes: np.ndarray          # [N,K]

    @property
    def predicted(self) -> np.ndarray:
        """[N]: the top detection's sight."""
        return self.classes[:, 0]

    def best_box(self, i: int, sight: int) -> np.ndarray | None:
        """Image i's best-scored box of `sight`, or None when no detection names it."""
        hits = np.nonzero((self.classes[i] == sight) & (self.scores[i] > 0))[0]
        return self.boxes[i, hits[0]] if len(hits) else None

    def score_of(self, i: int, sight: int) -> float:
        hits = np.nonzero(self.classes[i] == sight)[0]
        return float(self.scores[i, hits[0]]) if len(hits) else 0.0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def extract(backbone: FeatureExtractor, images_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Frozen-backbone features of uint8 [N,3,S,S] images (kept on `device`)."""
    return backbone(images_u8).to(device)


def _views(images_u8: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`views` augmented copies of the images, their boxes moved with the pixels; a box mostly cut off gets
    label -1 (ignored, not background). Seeded: the same call gives the same copies."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    out_images, out_boxes, out_labels = [], [], []
    for _ in range(cfg.views):
        for i in range(0, len(images_u8), 64):
            chunk = images_u8[i:i + 64].to(device).float() / 255.0
            img, box, lab = augment(chunk, boxes[i:i + 64].to(device), labels[i:i + 64].to(device),
                                    cfg.input_size, gen, (cfg.zoom_min, cfg.zoom_max))
            out_images.append((img * 255).round().to(torch.uint8).cpu())
            out_boxes.append(box.cpu())
            out_labels.append(lab.cpu())
    return torch.cat(out_images), torch.cat(out_boxes), torch.cat(out_labels)


def _batches(n: int, batch: int, gen: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=gen)
    return [order[i:i + batch] for i in range(0, n, batch)]


def _cosine(step: int, total: int, lr: float) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))


def train_cam_classifier(classifier: nn.Linear, pooled: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
                         epochs: int, gen: torch.Generator) -> float:
    """The image-level linear classifier whose weights give the class activation maps; returns the last loss."""
    opt = torch.optim.AdamW(classifier.parameters(), lr=cfg.lr * 3, weight_decay=cfg.weight_decay)
    total, step, loss_sum = epochs * math.ceil(len(pooled) / cfg.batch_size), 0, 0.0
    for _ in range(epochs):
        loss_sum, batches = 0.0, _batches(len(pooled), cfg.batch_size, gen)
        for idx in batches:
            for g in opt.param_groups:
                g["lr"] = _cosine(step, total, cfg.lr * 3)
            loss = F.cross_entropy(classifier(pooled[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) / len(batches)
    return loss_sum


def head_loss(logits: torch.Tensor, sides: torch.Tensor, cls_targets: torch.Tensor,
              side_targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over sights and background on every cell that is not ignored, and GIoU + L1 on the box each
    sight's cell sees for its own sight."""
    cell_logits, cell_sides = per_cell(logits, sides)
    loss = F.cross_entropy(cell_logits.reshape(-1, cell_logits.shape[2]), cls_targets.reshape(-1),
                           ignore_index=IGNORE)
    positive = cls_targets > BACKGROUND                                        # [N,P]
    if positive.any():
        own = (cls_targets - 1).clamp(min=0)
        pred_sides = torch.gather(cell_sides, 2, own[..., None, None].expand(-1, -1, 1, 4))[:, :, 0]   # [N,P,4]
        pred, target = decode_boxes(pred_sides)[positive], decode_boxes(side_targets)[positive]
        loss = loss + generalized_box_iou_loss(pred, target, reduction="mean") + F.l1_loss(
            pred_sides[positive], side_targets[positive])
    return loss


def train_head(model: SightModel, features: torch.Tensor, cls_targets: torch.Tensor, side_targets: torch.Tensor,
               cfg: TrainConfig, epochs: int, gen: torch.Generator,
               on_epoch: Callable[[int, float], bool] | None = None) -> int:
    """The dense head on (features, cell targets), from fresh weights; returns epochs run.

    `on_epoch(epoch, loss)` may return False to stop early (the time budget)."""
    head = model.head
    for module in head.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total, step, ran = epochs * math.ceil(len(features) / cfg.batch_size), 0, 0
    for epoch in range(1, epochs + 1):
        loss_sum, batches = 0.0, _batches(len(features), cfg.batch_size, gen)
        for idx in batches:
            if len(idx) < 2:
                continue
            for g in opt.param_groups:
                g["lr"] = _cosine(step, total, cfg.lr)
            logits, sides = head(features[idx])
            loss = head_loss(logits, sides, cls_targets[idx], side_targets[idx])
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


def train_from_scratch(model: SightModel, classifier: nn.Linear, images_u8: torch.Tensor, labels: torch.Tensor,
                       cfg: TrainConfig, device: torch.device, gen: torch.Generator) -> None:
    """The fallback without ImageNet weights: backbone and classifier end to end on augmented image labels."""
    params = list(model.backbone.parameters()) + list(classifier.parameters())
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
            pooled = model.backbone(x).mean(dim=(2, 3))
            loss = F.cross_entropy(classifier(pooled), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    model.backbone.eval()


@torch.no_grad()
def predict(model: SightModel, images_u8: torch.Tensor, device: torch.device, top_k: int = 10, batch: int = 32,
            features_of: FeatureExtractor | None = None) -> HeldoutPredictions:
    """The serving graph's detections without the threshold (the rule is applied by whoever scores them)."""
    model.eval()
    out: list[list[torch.Tensor]] = [[], [], []]
    for i in range(0, images_u8.shape[0], batch):
        chunk = images_u8[i:i + batch]
        if features_of is not None:
            logits, sides = model.heads(features_of(chunk))
        else:
            logits, sides = model(chunk.to(device).float() / 255.0)
        for part, t in zip(out, detections(model, logits, sides, top_k, apply_threshold=False), strict=True):
            part.append(t.cpu())
    if not out[0]:
        return HeldoutPredictions(np.zeros((0, top_k, 4), np.float32), np.zeros((0, top_k), np.float32),
                                  np.zeros((0, top_k), np.int64))
    return HeldoutPredictions(*(torch.cat(part).numpy() for part in out))


def localise(classifier: nn.Linear, backbone: FeatureExtractor, images: torch.Tensor, features: torch.Tensor,
             labels: torch.Tensor, cfg: TrainConfig, device: torch.device) -> torch.Tensor:
    """Pseudo-boxes [N,4] of weak images: their sight's contrastive CAM (with the mirrored image's) refined by
    GrabCut (trainer/pseudo_boxes.py)."""
    with torch.no_grad():
        mirrored = extract(backbone, images.flip(3), device).flip(3)
        weights = classifier.weight
        cams = contrastive_cams(features, weights, labels), contrastive_cams(mirrored, weights, labels)
    return pseudo_boxes(images, *cams, method=cfg.pseudo_boxes, roi=cfg.cam_roi, core=cfg.cam_core,
                        seed=cfg.seed).to(device)


def _pad(t: torch.Tensor, m: int, value: float = 0.0) -> torch.Tensor:
    """Pad dim 1 of boxes [N,k,4] or labels [N,k] to m entries (zero-area boxes, -1 labels)."""
    if t.shape[1] >= m:
        return t
    shape = list(t.shape)
    shape[1] = m - t.shape[1]
    return torch.cat([t, torch.full(shape, value, dtype=t.dtype)], dim=1)


def padded(boxes: list[list[Box]], labels: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image box and label lists -> [N,M,4] and [N,M] (zero-area boxes and -1 labels pad)."""
    m = max([1, *(len(b) for b in boxes)])
    out_b, out_l = torch.zeros(len(boxes), m, 4), torch.full((len(boxes), m), -1, dtype=torch.int64)
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        if b:
            out_b[i, :len(b)] = torch.tensor(b, dtype=torch.float32)
            out_l[i, :len(lab)] = torch.tensor(lab)
    return out_b, out_l


def unseen_sights(model: SightModel, features: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
                  weak: torch.Tensor, confidence: float = 0.5) -> torch.Tensor:
    """Self-training: in weak images, background cells where the head confidently names another sight than the
    image's label become IGNORE (a second sight nobody labelled is not background)."""
    with torch.no_grad():
        logits, _ = model.head.eval()(features)
    probs = F.softmax(logits, dim=1).flatten(2)                               # [N,1+C,P]
    best, cls = probs[:, 1:].max(dim=1)
    other = (cls != labels[:, None]) & (best >= confidence)
    flip = weak[:, None] & (targets == BACKGROUND) & other
    return torch.where(flip, torch.full_like(targets, IGNORE), targets)


def heldout_boxes(samples: list[Sample], pseudo: torch.Tensor | None) -> list[list[Box]]:
    """Each held-out image's boxes as far as they are known: true boxes, or the weak image's pseudo-box."""
    out, k = [], 0
    for s in samples:
        if s.weak:
            assert pseudo is not None
            out.append([tuple(float(v) for v in pseudo[k])])
            k += 1
        else:
            out.append([tuple(b) for b in s.boxes])
    return out


def evaluate(model: SightModel, classes: list[str], heldout: list[Sample], cfg: TrainConfig,
             classifier: nn.Linear, device: torch.device,
             features_of: FeatureExtractor) -> tuple[dict[str, Any], HeldoutPredictions, Calibration, torch.Tensor,
                                                     list[list[Box]]]:
    """Calibrate the threshold on the held-out no-sight images, then measure at it: top-1 and the confusion matrix
    on every held-out sight image, the false-claim rate, recall and AUROC of the open-set score, and box mAP on the
    held-out images with true boxes (every sight in them). Also returns those no-sight images (uint8), and each
    held-out sight image's known boxes (true boxes, or the weak image's pseudo-box)."""
    sights = [s for s in heldout if not s.negative]
    photos_of_nothing = [s for s in heldout if s.negative]
    images = Tensors.build(sights, model.input_size).images if sights else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    pred = predict(model, images, device, cfg.top_k, features_of=features_of)
    weak_idx = [i for i, s in enumerate(sights) if s.weak]
    pseudo = None
    if weak_idx:
        weak_images = images[weak_idx]
        feats = extract(features_of, weak_images, device)
        pseudo = localise(classifier, features_of, weak_images, feats,
                          torch.tensor([sights[i].primary for i in weak_idx], device=device), cfg, device)
    # The crops keep away from every sight the model finds in the photo too: a weak photo may show a second sight
    # that nobody labelled, and a crop of it is no "no sight" image.
    known_boxes = heldout_boxes(sights, pseudo)
    avoid = [known + [tuple(float(v) for v in b) for b, sc in zip(pred.boxes[i], pred.scores[i], strict=True)
                      if sc >= cfg.threshold_floor]
             for i, known in enumerate(known_boxes)]
    negatives = away_crops(sights, avoid, model.input_size, cfg.seed + 7, cfg.away_crops)
    if photos_of_nothing:
        negatives = torch.cat([negatives, Tensors.build(photos_of_nothing, model.input_size).images])
    negative_scores = predict(model, negatives, device, cfg.top_k, features_of=features_of).scores[:, 0]
    found = np.array([pred.score_of(i, s.primary) for i, s in enumerate(sights)])
    cal = calibrate(negative_scores, found, pred.scores[:, 0], cfg.false_claim_rate, cfg.threshold_floor,
                    cfg.min_recall)
    model.threshold.fill_(cal.threshold)

    metrics: dict[str, Any] = classification_report(classes, [s.primary for s in sights], pred.predicted)
    metrics.update(threshold=round(cal.threshold, 4), false_claim_rate=round(cal.false_claim_rate, 4),
                   recall=round(cal.recall, 4), auroc=round(cal.auroc, 4), heldout_negatives=cal.negatives,
                   heldout_negative_photos=len(photos_of_nothing), false_claim_target=cfg.false_claim_rate,
                   threshold_rule=cal.rule, min_recall=cfg.min_recall)
    boxed = [i for i, s in enumerate(sights) if not s.weak]
    metrics["box_images_heldout"] = len(boxed)
    metrics["map50"] = metrics["map"] = None
    if boxed:
        dets = [(pred.boxes[i], pred.scores[i], pred.classes[i]) for i in boxed]
        scored = coco_map(classes, [(sights[i].boxes, sights[i].labels) for i in boxed], dets)
        metrics.update(map50=scored["map50"], map=scored["map"], per_sight_map=scored["per_sight"])
    return metrics, pred, cal, negatives, known_boxes


def fit(classes: list[str], train: list[Sample], heldout: list[Sample], cfg: TrainConfig,
        progress: Progress | None = None) -> tuple[TrainResult, HeldoutPredictions]:
    """Train a sight model on `train`, calibrate and score it on `heldout`; see the module doc for the method."""
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
    classifier = nn.Linear(int(model.backbone.channels), len(classes)).to(device)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    history: list[dict[str, float]] = []

    def stage(name: str, **figures: float) -> None:
        record = {"stage": name, "seconds": round(time.monotonic() - started, 2), **figures}
        history.append(record)
        log.info("training stage", extra=record)

    sights = [s for s in train if not s.negative]
    nothing = [s for s in train if s.negative]
    images = Tensors.build(sights, cfg.input_size).images
    labels = torch.tensor([s.primary for s in sights])
    if not choice.pretrained:
        for p in model.backbone.parameters():
            p.requires_grad_(True)
        train_from_scratch(model, classifier, images, labels, cfg, device, gen)
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        stage("backbone from scratch")
    features_of = FeatureExtractor(model.backbone, cfg.input_size, device, cfg.threads)
    features = extract(features_of, images, device)
    labels = labels.to(device)
    train_cam_classifier(classifier, features.mean(dim=(2, 3)), labels, cfg, 60, gen)
    stage("features and CAM classifier", images=len(sights))

    weak = torch.tensor([s.weak for s in sights], device=device)
    pseudo = torch.zeros(len(sights), 4, device=device)
    if weak.any():
        pseudo = localise(classifier, features_of, images, features, labels, cfg, device)
    boxes = [[tuple(float(v) for v in pseudo[i])] if s.weak else [tuple(b) for b in s.boxes]
             for i, s in enumerate(sights)]
    box_t, label_t = padded(boxes, [[s.primary] if s.weak else list(s.labels) for s in sights])
    stage("pseudo-boxes", weak_images=int(weak.sum()), box_images=int((~weak).sum()))

    view_images, view_boxes, view_labels = _views(images, box_t, label_t, cfg, device)
    # Pairs: the largest box of each photo (for weak photos, the pseudo-box) is the one its half keeps.
    main = torch.stack([box_t[i, int(np.argmax([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes[i]]))]
                        for i in range(len(sights))])
    pair_images, pair_boxes, pair_labels = side_by_side(images, main, labels.cpu(), cfg.seed + 5,
                                                        round(cfg.pairs * len(sights)))
    away = away_crops(sights, boxes, cfg.input_size, cfg.seed + 3, cfg.away_crops)
    nothing_images = Tensors.build(nothing, cfg.input_size).images if nothing else away[:0]
    negatives = torch.cat([away, nothing_images, nothing_images.flip(3)])
    extra = extract(features_of, torch.cat([view_images, pair_images, negatives]), device)
    all_features = torch.cat([features, extra])
    grid = model.grid
    m = max(box_t.shape[1], 2)
    pos_targets, pos_sides = cell_targets(
        torch.cat([_pad(box_t, m), _pad(view_boxes, m), _pad(pair_boxes, m)]).to(device),
        torch.cat([_pad(label_t, m, -1), _pad(view_labels, m, -1), _pad(pair_labels, m, -1)]).to(device),
        torch.cat([weak.repeat(1 + cfg.views), torch.ones(len(pair_images), dtype=torch.bool, device=device)]), grid)
    neg_targets = torch.zeros(len(negatives), grid * grid, dtype=torch.int64, device=device)
    cls_targets = torch.cat([pos_targets, neg_targets])
    side_targets = torch.cat([pos_sides, torch.zeros(len(negatives), grid * grid, 4, device=device)])
    stage("views, pairs and negatives", views=len(view_images), pairs=len(pair_images), away_crops=len(away),
          negative_photos=len(nothing))

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

    n_pos = len(labels) * (1 + cfg.views)  # the photos and their views: what self-training revisits
    image_labels = labels.repeat(1 + cfg.views)
    for r in range(rounds):
        if r:
            refined = unseen_sights(model, all_features[:n_pos], cls_targets[:n_pos], image_labels,
                                    weak.repeat(1 + cfg.views))
            stage("self-training", cells_ignored=int((refined != cls_targets[:n_pos]).sum()))
            cls_targets = torch.cat([refined, cls_targets[n_pos:]])
        epochs_run = train_head(model, all_features, cls_targets, side_targets, cfg, cfg.epochs, gen, on_epoch(r))
        stage(f"head, round {r + 1} of {rounds}", epochs=epochs_run, samples=len(all_features))
        if deadline and time.monotonic() > deadline:
            break

    train_seconds = time.monotonic() - started
    metrics, predictions, _, heldout_negatives, known_boxes = evaluate(model, classes, heldout, cfg, classifier,
                                                                       device, features_of)
    metrics.update(method=METHOD, backbone=choice.name, pretrained=choice.pretrained, backbone_note=choice.reason,
                   pseudo_boxes=cfg.pseudo_boxes, refine_rounds=cfg.refine_rounds,
                   labels={"image_level": int(weak.sum()), "boxes": int((~weak).sum()), "negatives": len(nothing)},
                   away_crops=len(away))
    stage("calibration and held-out evaluation", top1=metrics["top1"], threshold=metrics["threshold"],
          false_claim_rate=metrics["false_claim_rate"], recall=metrics["recall"])
    model.eval()
    return TrainResult(model.cpu(), list(classes), metrics, epochs_run, train_seconds, str(device), choice,
                       history, heldout_negatives.cpu(), known_boxes), predictions
