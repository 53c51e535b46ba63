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


def wh_iou(wh1: Tensor, wh2: Tensor) -> Tensor:
    """IoU of boxes that share a centre (shape IoU), used to match ground truths to anchors.

    wh1: (N, 2), wh2: (M, 2), same units. Returns (N, M).
    """
    inter = torch.min(wh1[:, None, :], wh2[None, :, :]).prod(-1)  # (N, M)
    union = wh1.prod(-1)[:, None] + wh2.prod(-1)[None, :] - inter
    return inter / union.clamp(min=1e-9)
