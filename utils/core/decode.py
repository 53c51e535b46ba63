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


def decode_axis(t_centre: Tensor, t_size: Tensor, *, grid: Tensor, anchor_px: Tensor, stride: Tensor | float,
                scale_x_y: float = 1.0) -> tuple[Tensor, Tensor]:
    """The decoding formula along one axis (or both, given pairs): centre and size logits -> pred centre and size
    in input pixels. grid (cell index), anchor_px and stride broadcast against the logits."""
    centre = (torch.sigmoid(t_centre) * scale_x_y - (scale_x_y - 1) / 2 + grid) * stride
    size = torch.exp(t_size.clamp(-MAX_WH_LOGIT, MAX_WH_LOGIT)) * anchor_px
    return centre, size


def decode_txywh(txywh: Tensor, *, grid_xy: Tensor, anchor_wh_px: Tensor, stride_yx: tuple[float, float],
                 scale_x_y: float = 1.0) -> Tensor:
    """Box logits (..., 4) -> pred_cxcywh_px (..., 4); grid_xy and anchor_wh_px broadcast against it."""
    center_xy, wh = decode_axis(txywh[..., :2], txywh[..., 2:4], grid=grid_xy, anchor_px=anchor_wh_px,
                                stride=txywh.new_tensor([stride_yx[1], stride_yx[0]]), scale_x_y=scale_x_y)
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


def decode_level_xyxy_planes(level: Tensor, *, anchors_px: Tensor, input_shape: tuple[int, int],
                             scale_x_y: float = 1.0) -> Tensor:
    """Boxes of every cell of one level as coordinate planes, read straight from the head's channel planes.

    level: (B, A, H, W, 5 + C) logits from ``split_levels`` (a view of the (B, A * (5 + C), H, W) output, where
    each channel is a contiguous H x W plane). Returns pred_xyxy_px as (4, B, A, H, W): x1, y1, x2, y2 planes, the
    layout of pairwise IoU tests, without the channel-last copies of ``decode_level``; equal values.
    """
    batch, num_anchors, height, width = level.shape[:4]
    planes = level.permute(4, 0, 1, 2, 3)  # (5 + C, B, A, H, W), each (H, W) contiguous
    stride_y, stride_x = level_strides(feature_hw=(height, width), input_shape=input_shape)
    anchors = anchors_px.to(level)[:, :, None, None]  # (A, 2, 1, 1)
    grid_x = torch.arange(width, device=level.device, dtype=level.dtype)  # (W,)
    grid_y = torch.arange(height, device=level.device, dtype=level.dtype)[:, None]  # (H, 1)
    cx, w = decode_axis(planes[0], planes[2], grid=grid_x, anchor_px=anchors[:, 0], stride=stride_x,
                        scale_x_y=scale_x_y)  # (B, A, H, W) each
    cy, h = decode_axis(planes[1], planes[3], grid=grid_y, anchor_px=anchors[:, 1], stride=stride_y,
                        scale_x_y=scale_x_y)
    out = level.new_empty(4, batch, num_anchors, height, width)
    half_w, half_h = w / 2, h / 2
    torch.sub(cx, half_w, out=out[0])
    torch.sub(cy, half_h, out=out[1])
    torch.add(cx, half_w, out=out[2])
    torch.add(cy, half_h, out=out[3])
    return out


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
