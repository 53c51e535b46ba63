"""Turns raw head outputs into boxes. The one place that knows the head layout; the loss reuses it.

Head output per level: (B, A * (5 + C), H, W), anchor-major, channels per anchor
``tx, ty, tw, th, obj, cls_0 .. cls_{C-1}`` (all logits). Decoded boxes are ``cxcywh`` in
network-input pixels:

    cx = (sigmoid(tx) * s - (s - 1) / 2 + grid_x) * stride_x        s = scale_x_y (1 = plain YOLOv3/v4)
    w  = anchor_w * exp(tw)                                          anchor_w in input pixels
"""
import torch
from torch import Tensor

# exp(tw) beyond +10 gives boxes of 22026 anchors and, a little further, inf in fp32; below -10 a box
# shrinks under the float resolution of its centre and collapses to zero width (NaN in CIoU).
# Clamping keeps loss and gradients finite for wild logits early in training.
MAX_WH_LOGIT = 10.0


def split_levels(raw: Tensor, num_anchors: int) -> Tensor:
    """(B, A * (5 + C), H, W) -> (B, A, H, W, 5 + C), a view-friendly permute."""
    batch, channels, height, width = raw.shape
    return raw.view(batch, num_anchors, channels // num_anchors, height, width).permute(0, 1, 3, 4, 2)


def level_strides(*, feature_hw: tuple[int, int], input_shape: tuple[int, int]) -> tuple[float, float]:
    """(stride_y, stride_x) in input pixels per cell."""
    return input_shape[0] / feature_hw[0], input_shape[1] / feature_hw[1]


def decode_txywh(txywh: Tensor, *, grid_xy: Tensor, anchor_wh_px: Tensor, stride_yx: tuple[float, float],
                 scale_x_y: float = 1.0) -> Tensor:
    """Box logits (..., 4) -> pred_cxcywh_px (..., 4); grid_xy and anchor_wh_px broadcast against it."""
    stride_xy = txywh.new_tensor([stride_yx[1], stride_yx[0]])
    offset_xy = torch.sigmoid(txywh[..., :2]) * scale_x_y - (scale_x_y - 1) / 2
    center_xy = (offset_xy + grid_xy) * stride_xy
    wh = torch.exp(txywh[..., 2:4].clamp(-MAX_WH_LOGIT, MAX_WH_LOGIT)) * anchor_wh_px
    return torch.cat([center_xy, wh], dim=-1)


def cell_grid(height: int, width: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(H, W, 2) holding (x, y) cell indices."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                            torch.arange(width, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs, ys], dim=-1)


def decode_level(level: Tensor, *, anchors_px: Tensor, input_shape: tuple[int, int], scale_x_y: float = 1.0) -> Tensor:
    """Boxes of every cell of one level.

    level: (B, A, H, W, 5 + C) logits from ``split_levels``; anchors_px: (A, 2) anchor (w, h) in input pixels.
    Returns pred_cxcywh_px (B, A, H, W, 4).
    """
    height, width = level.shape[2:4]
    grid_xy = cell_grid(height, width, device=level.device, dtype=level.dtype)  # (H, W, 2)
    return decode_txywh(level[..., :4], grid_xy=grid_xy, anchor_wh_px=anchors_px.to(level)[:, None, None, :],
                        stride_yx=level_strides(feature_hw=(height, width), input_shape=input_shape),
                        scale_x_y=scale_x_y)


def decode_outputs(outputs: list[Tensor], *, anchors_px: Tensor, anchors_mask: list[list[int]],
                   input_shape: tuple[int, int], scale_x_y: list[float] | None = None) -> Tensor:
    """All levels at once -> (B, N, 5 + C): pred_cxcywh_px, objectness probability, class probabilities.

    N = sum over levels of A * H * W, levels in model order, cells anchor-major within a level.
    """
    decoded = []
    for index, (raw, mask) in enumerate(zip(outputs, anchors_mask)):
        level = split_levels(raw, len(mask))  # (B, A, H, W, 5 + C)
        boxes_cxcywh = decode_level(level, anchors_px=anchors_px[mask], input_shape=input_shape,
                                    scale_x_y=scale_x_y[index] if scale_x_y else 1.0)
        probs = torch.sigmoid(level[..., 4:])  # (B, A, H, W, 1 + C)
        decoded.append(torch.cat([boxes_cxcywh, probs], dim=-1).flatten(1, 3))  # (B, A*H*W, 5 + C)
    return torch.cat(decoded, dim=1)
