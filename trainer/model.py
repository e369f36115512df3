"""The sight model: a backbone, an image-level sight classifier and a class-agnostic box regressor (PSOL's split).

Why this shape (Zhang et al., "Rethinking the Route Towards Weakly Supervised Object Localization", CVPR 2020):
weak labels say which sight an image shows, not where. PSOL separates the two questions: "which sight" is a
classifier over pooled features, trained on image-level labels; "where" is a class-agnostic box regressor,
trained on pseudo-boxes (here from the classifier's own class activation maps refined by GrabCut,
trainer/pseudo_boxes.py) and on true boxes where the labeller gave them. The classifier is a linear layer over
global-average-pooled features, so its weights also give the class activation map (Zhou et al., CVPR 2016) that
localises each training image.

One box per frame: a webcam frame is mostly of one sight. The serving graph (ExportWrapper) follows
sightscan.detector's contract: every sight's probability, sorted, each with the regressed box.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STRIDE = 32


class BoxHead(nn.Module):
    """Stride-32 features -> one box (x_min, y_min, x_max, y_max in 0..1); spatial layout is kept (flattened)."""

    def __init__(self, channels: int, cells: int, hidden: int = 256) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(channels, 64, 1), nn.ReLU(inplace=True),
                                    nn.Conv2d(64, 32, 3, 1, 1), nn.ReLU(inplace=True))
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * cells * cells, hidden),
                                nn.ReLU(inplace=True), nn.Linear(hidden, 4))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cx, cy, w, h = torch.sigmoid(self.fc(self.reduce(features))).unbind(dim=1)
        box = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
        return box.clamp(0.0, 1.0)


class SightModel(nn.Module):
    """images [N,3,S,S] 0..1 -> (class logits [N,C], box [N,4] normalised)."""

    def __init__(self, backbone: nn.Module, num_classes: int, input_size: int) -> None:
        super().__init__()
        if input_size % STRIDE:
            raise ValueError(f"input_size must be a multiple of {STRIDE}, got {input_size}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.input_size = input_size
        channels = int(backbone.channels)
        self.classifier = nn.Linear(channels, num_classes)
        self.box_head = BoxHead(channels, input_size // STRIDE)

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classifier(features.mean(dim=(2, 3))), self.box_head(features)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.backbone(images))


class ExportWrapper(nn.Module):
    """The serving graph of sightscan.detector's contract: K = every sight, sorted by probability, one shared box."""

    def __init__(self, model: SightModel, top_k: int = 50) -> None:
        super().__init__()
        self.model = model
        self.top_k = min(top_k, model.num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, box = self.model(images)
        scores, classes = torch.topk(F.softmax(logits, dim=1), self.top_k, dim=1)
        boxes = box.unsqueeze(1).expand(-1, self.top_k, -1)
        return boxes.contiguous(), scores, classes.to(torch.int64)
