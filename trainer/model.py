"""A compact anchor-free detector: a small CNN backbone, an FPN-lite merge and an FCOS-style head at stride 16.

Why this shape: sights fill a large part of a photo, so one output level at stride 16 (16x16 cells at 256 px)
covers them, and dense positives (every cell inside the central part of a box, as in FCOS) train far faster from
scratch than a single CenterNet peak. Plain 3x3 convolutions run well on CPUs (oneDNN) in training and serving.
Everything here is written for this project (Apache-2.0); no AGPL/YOLO code.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

STRIDE = 16


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(ch, ch), nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class TinyBackbone(nn.Module):
    """Five stride-2 stages; returns the stride-16 and stride-32 maps."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(conv_bn(3, w, 2), conv_bn(w, 2 * w, 2))           # /4
        self.stage8 = nn.Sequential(conv_bn(2 * w, 4 * w, 2), Residual(4 * w))      # /8
        self.stage16 = nn.Sequential(conv_bn(4 * w, 6 * w, 2), Residual(6 * w))     # /16
        self.stage32 = nn.Sequential(conv_bn(6 * w, 8 * w, 2), Residual(8 * w))     # /32
        self.channels = (6 * w, 8 * w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c16 = self.stage16(self.stage8(self.stem(x)))
        return c16, self.stage32(c16)


class MobileNetBackbone(nn.Module):
    """torchvision's MobileNetV3-Small features (BSD-3), for when ImageNet weights are available locally."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v3_small

        self.features = mobilenet_v3_small(weights=None).features
        # Blocks 0-8 end at stride 16 (48 ch), 9-12 at stride 32 (576 ch).
        self.channels = (48, 576)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # ImageNet normalisation lives in the graph so the ONNX input stays plain 0..1 RGB.
        mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        x = (x - mean) / std
        c16 = self.features[:9](x)
        return c16, self.features[9:](c16)


BACKBONES = {"tiny": TinyBackbone, "mobilenet_v3_small": MobileNetBackbone}


class Detector(nn.Module):
    """Raw dense outputs per stride-16 cell: class logits [N,C,H,W], box distances [N,4,H,W], centerness [N,1,H,W]."""

    def __init__(self, num_classes: int, backbone: str = "tiny", width: int = 16, head_ch: int = 64) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.backbone = TinyBackbone(width) if backbone == "tiny" else MobileNetBackbone()
        c16, c32 = self.backbone.channels
        self.lat16 = nn.Conv2d(c16, head_ch, 1)
        self.lat32 = nn.Conv2d(c32, head_ch, 1)
        self.tower = nn.Sequential(conv_bn(head_ch, head_ch), conv_bn(head_ch, head_ch))
        self.cls = nn.Conv2d(head_ch, num_classes, 3, 1, 1)
        self.reg = nn.Conv2d(head_ch, 4, 3, 1, 1)
        self.ctr = nn.Conv2d(head_ch, 1, 3, 1, 1)
        # Focal-loss prior (RetinaNet/FCOS): start every class at p=0.01 so background does not swamp early steps.
        nn.init.constant_(self.cls.bias, -4.595)
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f16, f32 = self.backbone(x)
        f = self.lat16(f16) + F.interpolate(self.lat32(f32), scale_factor=2.0, mode="nearest")
        f = self.tower(f)
        # Distances in units of the stride, exp keeps them positive.
        reg = torch.exp(self.scale * torch.tanh(self.reg(f) / 4.0)) * STRIDE
        return self.cls(f), reg, self.ctr(f)


def cell_centres(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """(h*w, 2) pixel centres (x, y) of the stride-16 cells, row-major."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * STRIDE
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * STRIDE
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def decode_boxes(reg: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """[N,4,H,W] left/top/right/bottom distances -> [N,H*W,4] x_min,y_min,x_max,y_max pixels."""
    n = reg.shape[0]
    d = reg.reshape(n, 4, -1).permute(0, 2, 1)
    return torch.cat([centres - d[..., :2], centres + d[..., 2:]], dim=-1)


class ExportWrapper(nn.Module):
    """The serving graph of sightscan.detector's contract: decoding, per-class Fast NMS and top-K inside.

    Fast NMS (YOLACT) is written with plain tensor ops (an IoU matrix of the top candidates), so the graph needs no
    NonMaxSuppression op, has fixed output shapes, and runs the same in torch and ONNX Runtime.
    """

    def __init__(self, detector: Detector, input_size: int, top_k: int = 50, candidates: int = 100,
                 iou_threshold: float = 0.5) -> None:
        super().__init__()
        self.detector = detector
        self.input_size = input_size
        self.top_k = top_k
        self.candidates = candidates
        self.iou_threshold = iou_threshold
        cells = input_size // STRIDE
        self.register_buffer("centres", cell_centres(cells, cells), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cls, reg, ctr = self.detector(images)
        n, c = cls.shape[0], cls.shape[1]
        boxes = decode_boxes(reg, self.centres).clamp(0, self.input_size) / self.input_size   # [N,HW,4]
        scores = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr)).reshape(n, c, -1)      # [N,C,HW]
        scores = scores.permute(0, 2, 1).reshape(n, -1)                                     # [N,HW*C]
        top_scores, idx = torch.topk(scores, self.candidates, dim=1)
        cell = torch.div(idx, c, rounding_mode="floor")
        classes = idx - cell * c
        cand = torch.gather(boxes, 1, cell.unsqueeze(-1).expand(-1, -1, 4))                 # [N,M,4]
        iou = pairwise_iou(cand)
        same = (classes.unsqueeze(2) == classes.unsqueeze(1)).to(iou.dtype)
        # Only higher-scored candidates (earlier in the sorted list) may suppress: strict upper triangle.
        upper = torch.triu(torch.ones_like(iou[0]), diagonal=1).unsqueeze(0)
        max_iou = (iou * same * upper).amax(dim=1)
        kept = top_scores * (max_iou <= self.iou_threshold).to(top_scores.dtype)
        out_scores, order = torch.topk(kept, self.top_k, dim=1)
        out_boxes = torch.gather(cand, 1, order.unsqueeze(-1).expand(-1, -1, 4))
        out_classes = torch.gather(classes, 1, order)
        return out_boxes, out_scores, out_classes.to(torch.int64)


def pairwise_iou(b: torch.Tensor) -> torch.Tensor:
    """[N,M,4] -> [N,M,M] IoU of every pair within each image."""
    area = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    lt = torch.maximum(b[:, :, None, :2], b[:, None, :, :2])
    rb = torch.minimum(b[:, :, None, 2:], b[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[:, :, None] + area[:, None, :] - inter + 1e-9)


def load_backbone_weights(detector: Detector, path: Path) -> tuple[int, int]:
    """Load a backbone state dict (e.g. torchvision's ImageNet MobileNetV3 file); returns (loaded, missing) counts.

    Keys are matched with or without a leading "features."/"backbone." so both torchvision checkpoints and our own
    saved backbones load; classifier weights and shape mismatches are ignored rather than fatal.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = detector.backbone.state_dict()
    matched: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for candidate in (key, key.removeprefix("backbone."), f"features.{key}"):
            if candidate in own and own[candidate].shape == value.shape:
                matched[candidate] = value
                break
    detector.backbone.load_state_dict(matched, strict=False)
    return len(matched), len(own) - len(matched)
