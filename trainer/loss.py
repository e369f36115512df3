"""FCOS-style targets and losses for the stride-16 head (focal loss, GIoU, centerness), batched."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from trainer.model import STRIDE, cell_centres, decode_boxes


def assign(boxes: torch.Tensor, labels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cell: the class index (-1 background) and the target box in pixels.

    A cell is positive for a box when its centre lies inside the box and within the box's central part (FCOS
    centre sampling, widened for the large boxes sights make); a cell inside several boxes takes the smallest.
    boxes [N,M,4] normalised, labels [N,M] (-1 = padding) -> cls [N,P], target boxes [N,P,4].
    """
    cells = size // STRIDE
    centres = cell_centres(cells, cells, boxes.device)                       # [P,2]
    px = boxes * size                                                        # [N,M,4]
    x, y = centres[None, :, None, 0], centres[None, :, None, 1]              # [1,P,1]
    x0, y0, x1, y1 = (px[:, None, :, i] for i in range(4))                   # [N,1,M]
    inside = (x > x0) & (x < x1) & (y > y0) & (y < y1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx = torch.clamp((x1 - x0) * 0.3, min=0.75 * STRIDE)
    ry = torch.clamp((y1 - y0) * 0.3, min=0.75 * STRIDE)
    central = ((x - cx).abs() <= rx) & ((y - cy).abs() <= ry)
    ok = inside & central & (labels[:, None, :] >= 0)
    area = ((x1 - x0) * (y1 - y0)).expand_as(ok).masked_fill(~ok, float("inf"))
    best_area, best = area.min(dim=2)                                        # [N,P]
    cls = torch.gather(labels, 1, best).masked_fill(torch.isinf(best_area), -1)
    target = torch.gather(px, 1, best.unsqueeze(-1).expand(-1, -1, 4))
    return cls, target


def centerness(target: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    left, top = centres[..., 0] - target[..., 0], centres[..., 1] - target[..., 1]
    right, bottom = target[..., 2] - centres[..., 0], target[..., 3] - centres[..., 1]
    lr = torch.minimum(left, right).clamp(min=0) / torch.maximum(left, right).clamp(min=1e-6)
    tb = torch.minimum(top, bottom).clamp(min=0) / torch.maximum(top, bottom).clamp(min=1e-6)
    return torch.sqrt(lr * tb)


def detection_loss(outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], boxes: torch.Tensor,
                   labels: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    cls_logits, reg, ctr_logits = (o.float() for o in outputs)  # losses in fp32 even under autocast
    n, c = cls_logits.shape[:2]
    cls_t, box_t = assign(boxes, labels, size)
    pos = cls_t >= 0
    num_pos = max(float(pos.sum()), 1.0)
    logits = cls_logits.reshape(n, c, -1).permute(0, 2, 1)                   # [N,P,C]
    onehot = F.one_hot(cls_t.clamp(min=0), c).float() * pos.unsqueeze(-1)
    loss_cls = sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2.0, reduction="sum") / num_pos
    if not pos.any():
        zero = cls_logits.sum() * 0 + reg.sum() * 0 + ctr_logits.sum() * 0
        return {"loss": loss_cls + zero, "cls": loss_cls.detach(), "box": zero.detach(), "ctr": zero.detach()}
    centres = cell_centres(size // STRIDE, size // STRIDE, boxes.device).expand(n, -1, -1)
    pred = decode_boxes(reg, centres[0])                                     # [N,P,4]
    ctr_t = centerness(box_t, centres)
    weight = ctr_t[pos]
    loss_box = (generalized_box_iou_loss(pred[pos], box_t[pos], reduction="none") * weight).sum() / weight.sum()
    loss_ctr = F.binary_cross_entropy_with_logits(ctr_logits.reshape(n, -1)[pos], ctr_t[pos], reduction="mean")
    loss = loss_cls + 2.0 * loss_box + loss_ctr
    return {"loss": loss, "cls": loss_cls.detach(), "box": loss_box.detach(), "ctr": loss_ctr.detach()}
