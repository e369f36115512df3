"""The sight model: a frozen backbone and a dense head over a stride-16 grid, with a background class.

Why this shape:
- **A grid fine enough for two sights.** The head fuses the backbone's stride-32 features, upsampled, with its
  stride-16 features (the top-down path of a feature pyramid, Lin et al., CVPR 2017, at one level): 14x14 cells
  at 224 px instead of 7x7, so a narrow sight beside another still has cells of its own and its box edges fall
  on a grid half as coarse.
- **Every sight in view gets its own box.** Each grid cell answers "which sight, if any, is here" over C sights
  plus background, and regresses each sight's box as distances from its centre to the four sides (FCOS, Tian et
  al., ICCV 2019, at a single level, with a box per sight). A city has each of its sights once, so a frame shows a
  sight at most once: each sight's detection is scored by the 2x2 cells most sure of it and boxed by the vote
  of the three cells most sure of it. Two sights in a frame are two detections.
- **"No sight" is an answer.** The background class is trained on what is not a sight: the cells of every photo
  outside its sight's (pseudo-)box, crops of the photos away from their sights, and photos of the city that show
  no sight. This is the background-class approach to open-set recognition that Dhamija et al. ("Reducing Network
  Agnostophobia", NeurIPS 2018) compare against; with the softmax over sights *and* background, a frame of
  street gives every sight a low probability instead of sharing 1 among them. The trainer then calibrates the
  operating threshold on held-out no-sight images for a stated false-claim rate (trainer/calibrate.py).
- **Weak labels still work.** Images with only an image-level label are localised first by class activation maps
  refined by GrabCut (trainer/pseudo_boxes.py); true boxes (Google Vision's) train every box of their image.

The serving graph (ExportWrapper) follows sightscan.detector's contract with the rule inside: one candidate per
sight, Fast NMS across sights (Bolya et al., YOLACT, ICCV 2019: the matrix form, exportable to ONNX), scores
under the calibrated operating threshold set to 0, top-K. So the gateway (and any other client of the graph)
applies exactly the same "no sight" rule by dropping zero scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.backbones import unpack

BACKBONE_STRIDE = 32
STRIDE = 16  # the head's cells
BACKGROUND = 0  # channel 0 of the class logits; sight i is channel i + 1
VOTERS = 3  # the cells whose boxes make a sight's box
NMS_IOU_ANY = 0.7  # two sights' boxes this alike are one object whose cells disagree on its name


class DenseHead(nn.Module):
    """Packed backbone features (trainer.backbones.pack) -> (class logits [N,1+C,2h,2w], side distances
    [N,4C,2h,2w] in 0..1 of the frame: each sight's box as seen from the cell, so a cell between two sights can
    place either). The stride-32 map is reduced first and then upsampled (a 1x1 convolution commutes with
    nearest upsampling, and costs a quarter as much before it)."""

    def __init__(self, coarse_channels: int, fine_channels: int, num_classes: int, hidden: int = 96) -> None:
        super().__init__()
        self.coarse_channels = coarse_channels
        self.lateral_coarse = nn.Conv2d(coarse_channels, hidden, 1)
        self.lateral_fine = nn.Conv2d(fine_channels, hidden, 1)
        self.neck = nn.Sequential(nn.ReLU(inplace=True), nn.Dropout2d(0.1),
                                  nn.Conv2d(hidden, hidden, 3, 1, 1), nn.ReLU(inplace=True))
        self.cls = nn.Conv2d(hidden, 1 + num_classes, 1)
        self.box = nn.Conv2d(hidden, 4 * num_classes, 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coarse, fine = unpack(features, self.coarse_channels)
        top_down = F.interpolate(self.lateral_coarse(coarse), scale_factor=2.0, mode="nearest")
        x = self.neck(top_down + self.lateral_fine(fine))
        return self.cls(x), torch.sigmoid(self.box(x))


def cell_centres(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """[h*w, 2]: each cell's centre (x, y) in 0..1 of the frame, row-major."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


def decode_boxes(sides: torch.Tensor) -> torch.Tensor:
    """Side distances [N,P,...,4] (left, top, right, bottom) from each of the P cells (row-major on a square grid)
    -> boxes [N,P,...,4] (x_min, y_min, x_max, y_max), 0..1."""
    p = sides.shape[1]
    grid = round(p ** 0.5)
    centre = cell_centres(grid, grid, sides.device).view(1, p, *([1] * (sides.dim() - 3)), 2)
    return torch.cat([centre - sides[..., :2], centre + sides[..., 2:]], dim=-1).clamp(0.0, 1.0)


def per_cell(logits: torch.Tensor, sides: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's maps -> (logits [N,P,1+C], side distances [N,P,C,4]) per cell."""
    n, k, h, w = logits.shape
    return (logits.flatten(2).transpose(1, 2),
            sides.flatten(2).transpose(1, 2).reshape(n, h * w, k - 1, 4))


def pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """[N,K,4] -> [N,K,K] IoU of every pair within each image."""
    area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    lo = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    hi = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=-1)
    return inter / (area[:, :, None] + area[:, None, :] - inter).clamp(min=1e-9)


def fast_nms(boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Fast NMS (YOLACT) across sights: scores [N,K] (sorted descending) with a candidate zeroed where a better one
    overlaps it by more than NMS_IOU_ANY (one object whose cells disagree on its name)."""
    better = torch.ones_like(scores[:, :, None] * scores[:, None, :]).triu(diagonal=1) > 0   # [i, j]: i above j
    suppressed = ((pairwise_iou(boxes) > NMS_IOU_ANY) & better).any(dim=1)
    return torch.where(suppressed, torch.zeros_like(scores), scores)


class SightModel(nn.Module):
    """images [N,3,S,S] 0..1 -> (class logits [N,1+C,h,w], side distances [N,4C,h,w]); h = w = S / 16."""

    def __init__(self, backbone: nn.Module, num_classes: int, input_size: int) -> None:
        super().__init__()
        if input_size % BACKBONE_STRIDE:
            raise ValueError(f"input_size must be a multiple of {BACKBONE_STRIDE}, got {input_size}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.input_size = input_size
        self.head = DenseHead(int(backbone.coarse_channels), int(backbone.fine_channels), num_classes)
        self.grid = input_size // STRIDE  # the head's cells per side
        # The operating threshold calibrated on held-out no-sight images (trainer/calibrate.py); part of the graph.
        self.register_buffer("threshold", torch.tensor(0.5))

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(features)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.backbone(images))


def detections(model: SightModel, logits: torch.Tensor, sides: torch.Tensor, top_k: int,
               apply_threshold: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The head's outputs -> (boxes [N,K,4], scores [N,K], sight indices [N,K]), best first.

    A city has each sight once, so a frame shows it at most once: each sight is one candidate, scored by the 2x2
    cells most sure of it, its box voted by the VOTERS cells most sure of it. Then Fast NMS across sights, and scores
    under the model's operating threshold are 0 when `apply_threshold`."""
    cell_logits, cell_sides = per_cell(logits, sides)
    probs = F.softmax(cell_logits, dim=2)[..., 1:]                           # [N,P,C]: sights only
    # A sight's score is its probability averaged over 2x2 cells, at the best place: a sight fills at least that
    # much of the stride-16 grid, while a street detail that fools the head is mostly one cell. On a small city's
    # clip the best no-sight frame fell from 0.67 to 0.53, the 5th percentile of sight frames from 0.95 to 0.93;
    # on a city of photos the sight frames found stayed the same. (3x3 cells: 0.43 on the first, but 4% fewer
    # sight frames found on the second, whose narrowest sight is about two cells wide.)
    n, p, c = probs.shape
    area = F.avg_pool2d(probs.transpose(1, 2).reshape(n, c, *logits.shape[2:]), 2, 1)
    scores = area.flatten(2).max(dim=2).values                               # [N,C]
    # Box voting: the boxes of the VOTERS cells most sure of the sight, weighted by how sure each is. Their mean is
    # steadier than one cell's box; the sight's outer cells (ignored in training, their view half street) are left
    # out, as they widen the box (clip IoU 0.73 -> 0.75 on a city of photos, 0.55 -> 0.60 on a synthetic one).
    # Each weight is the cell's margin over the first cell left out, so a near-tie at the edge of the vote weighs
    # next to nothing either way and the box does not jump between ONNX Runtime and torch (or between frames).
    first_out = torch.topk(probs, min(VOTERS + 1, probs.shape[1]), dim=1).values[:, -1:, :]   # [N,1,C]
    best = (probs >= probs.max(dim=1, keepdim=True).values).to(probs.dtype)
    vote = (probs - first_out).clamp(min=0.0) + 1e-6 * best
    cell_boxes = decode_boxes(cell_sides)                                     # [N,P,C,4]
    boxes = (cell_boxes * vote[..., None]).sum(dim=1) / vote.sum(dim=1).clamp(min=1e-9)[..., None]   # [N,C,4]
    order = torch.argsort(scores, dim=1, descending=True)
    scores = torch.gather(scores, 1, order)
    boxes = torch.gather(boxes, 1, order[..., None].expand(-1, -1, 4))
    kept = fast_nms(boxes, scores)
    if apply_threshold:
        kept = torch.where(kept >= model.threshold, kept, torch.zeros_like(kept))
    k = min(top_k, scores.shape[1])
    kept, pick = torch.topk(kept, k, dim=1)
    return (torch.gather(boxes, 1, pick[..., None].expand(-1, -1, 4)), kept,
            torch.gather(order, 1, pick).to(torch.int64))


class ExportWrapper(nn.Module):
    """The serving graph of sightscan.detector's contract: K detections, each its own sight, box and score; a score
    of 0 means "no detection" (under the operating threshold, or suppressed)."""

    def __init__(self, model: SightModel, top_k: int = 10) -> None:
        super().__init__()
        self.model = model
        self.top_k = top_k

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, sides = self.model(images)
        boxes, scores, classes = detections(self.model, logits, sides, self.top_k)
        return boxes.contiguous(), scores, classes
