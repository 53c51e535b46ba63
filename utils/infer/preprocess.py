"""Inference-side image preprocessing: any image -> the network input (letterboxed or stretched), and the
inverse mapping of boxes from network-input pixels back to the original image.

Box names follow utils/core/boxes.py: ``pred_xyxy`` is in network-input pixels, ``pred_xyxy_orig`` in
original-image pixels. The letterbox geometry and resampling are the validation dataset's own
(utils/data/augment.py), so a model sees the same pixels in get_map.py / predict.py as during validation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from utils.data import augment
from utils.data.images import rgb_pixels


@dataclass(frozen=True)
class LetterboxInfo:
    """Where the original image lies inside the network input.

    image_hw: original (h, w); input_hw: network input (h, w); resized_hw: (h, w) of the resized image on the
    canvas; offset_xy: (dx, dy) of its top-left corner, input pixels. Plain resize: resized_hw == input_hw, offset 0.
    """
    image_hw: tuple[int, int]
    input_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    offset_xy: tuple[int, int]


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) from a PIL image of any mode (gray, RGBA, palette, ...) or an RGB/gray array."""
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB array (H, W, 3), got {image.dtype} {image.shape}")
        return np.ascontiguousarray(image[:, :, :3])
    return rgb_pixels(image)  # the image reader's rule for every mode (16-bit, transparency, CMYK, ...)


def preprocess_image(image: Image.Image | np.ndarray, input_shape: tuple[int, int] | list[int],
                     letterbox: bool = True) -> tuple[np.ndarray, LetterboxInfo]:
    """Image -> (image_chw float32 (3, H, W) RGB in [0, 1], LetterboxInfo) for input_shape (H, W).

    letterbox=True keeps the aspect ratio and centres the image on a gray (128) canvas, exactly like the
    validation dataset; letterbox=False stretches the image to the input size.
    """
    rgb = to_rgb_array(image)  # (ih, iw, 3) uint8
    image_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
    input_hw = (int(input_shape[0]), int(input_shape[1]))
    if letterbox:
        canvas, _ = augment.letterbox(rgb, np.zeros((0, 5), np.float32), input_shape=input_hw)
        new_w, new_h, dx, dy = augment.letterbox_geometry(image_hw=image_hw, input_shape=input_hw)
        info = LetterboxInfo(image_hw=image_hw, input_hw=input_hw, resized_hw=(new_h, new_w), offset_xy=(dx, dy))
    else:
        canvas = augment.resize(rgb, width=input_hw[1], height=input_hw[0])
        info = LetterboxInfo(image_hw=image_hw, input_hw=input_hw, resized_hw=input_hw, offset_xy=(0, 0))
    # Transposed while still uint8 (a quarter of the bytes), then scaled straight into one contiguous float32 array:
    # the same values as converting first, without an image-sized float temporary (a third of the time at 480x640).
    image_chw_uint8 = np.ascontiguousarray(canvas.transpose(2, 0, 1))  # (3, H, W)
    return np.multiply(image_chw_uint8, np.float32(1 / 255), dtype=np.float32), info


def boxes_to_original(pred_xyxy_input_px: np.ndarray | Tensor, info: LetterboxInfo) -> np.ndarray | Tensor:
    """pred_xyxy (..., 4) in network-input pixels -> pred_xyxy_orig (..., 4) in original-image pixels,
    clipped to [0, w] x [0, h] of the original image. Same array type as the input."""
    ih, iw = info.image_hw
    nh, nw = info.resized_hw
    dx, dy = info.offset_xy
    offset = [dx, dy, dx, dy]
    scale = [iw / nw, ih / nh, iw / nw, ih / nh]  # original pixels per input pixel
    upper = [iw, ih, iw, ih]
    if isinstance(pred_xyxy_input_px, Tensor):
        like = {"device": pred_xyxy_input_px.device, "dtype": pred_xyxy_input_px.dtype}
        pred_xyxy_orig = (pred_xyxy_input_px - torch.tensor(offset, **like)) * torch.tensor(scale, **like)
        return torch.minimum(pred_xyxy_orig.clamp(min=0), torch.tensor(upper, **like))
    pred_xyxy_orig = (np.asarray(pred_xyxy_input_px) - np.asarray(offset)) * np.asarray(scale)
    return np.clip(pred_xyxy_orig, 0, np.asarray(upper)).astype(np.asarray(pred_xyxy_input_px).dtype, copy=False)
