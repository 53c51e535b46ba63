"""Box-format vocabulary shared by the dataset, the loss, the decoder and the metrics.

Names say the format and the units:
- ``xyxy``: (x1, y1, x2, y2), top-left and bottom-right corners.
- ``cxcywh``: (centre x, centre y, width, height).
- ``_px`` / pixels: network-input pixels unless a name says ``orig`` (original image pixels).
- ``_norm``: divided by the input width/height, in [0, 1].
"""
import torch
from torch import Tensor


def box_xyxy_to_cxcywh(boxes_xyxy: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh, same units."""
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_cxcywh_to_xyxy(boxes_cxcywh: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy, same units."""
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def box_iou_batched(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """IoU of every pair within each batch element.

    boxes1_xyxy: (B, N, 4), boxes2_xyxy: (B, M, 4), same units. Returns (B, N, M).
    torchvision's box_iou is 2-D only; this is its batched twin for the loss's ignore mask.
    """
    x1a, y1a, x2a, y2a = (t[:, :, None] for t in boxes1_xyxy.unbind(-1))  # each (B, N, 1)
    x1b, y1b, x2b, y2b = (t[:, None, :] for t in boxes2_xyxy.unbind(-1))  # each (B, 1, M)
    # Width and height of the overlaps as separate (B, N, M) tensors, updated in place: this is the
    # loss's hottest line (every cell against every ground truth), so no (B, N, M, 2) temporaries.
    inter = torch.min(x2a, x2b).sub_(torch.max(x1a, x1b)).clamp_(min=0)
    inter.mul_(torch.min(y2a, y2b).sub_(torch.max(y1a, y1b)).clamp_(min=0))  # (B, N, M)
    union = ((x2a - x1a) * (y2a - y1a)) + ((x2b - x1b) * (y2b - y1b)) - inter
    return inter.div_(union.clamp_(min=1e-9))


def wh_iou(wh1: Tensor, wh2: Tensor) -> Tensor:
    """IoU of boxes that share a centre (shape IoU), used to match ground truths to anchors.

    wh1: (N, 2), wh2: (M, 2), same units. Returns (N, M).
    """
    inter = torch.min(wh1[:, None, :], wh2[None, :, :]).prod(-1)  # (N, M)
    union = wh1.prod(-1)[:, None] + wh2.prod(-1)[None, :] - inter
    return inter / union.clamp(min=1e-9)
