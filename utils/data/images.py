"""The one image reader of every tool: training, prediction, evaluation, annotation, anchors and the dataset checks.

Every tool sees an image upright, with its EXIF orientation applied (as PIL's ImageOps.exif_transpose does), so
boxes drawn by one tool mean the same pixels in another. ``read_image_rgb`` decodes the pixels; ``image_info``
gives the stored and upright sizes and the orientation from the header (decoding only when asked).
Orientations 5-8 turn the image by 90 degrees, so its upright width and height are the stored ones swapped.
Values outside 1-8 (0, 65537, ...) change nothing.

Every mode becomes 8-bit RGB by one rule (``rgb_pixels``), what a viewer shows:
- 16-bit samples (grayscale PNG / TIFF / PGM, RGB and RGBA PNG) keep their high byte, ``v >> 8``: 0-65535 maps
  onto 0-255 as PIL already maps 16-bit colour PNGs, so 16-bit grayscale and colour agree. (PIL's plain
  conversion clips 16-bit grayscale at 255: an all-white image.)
- grayscale, 1-bit and palette images take their gray levels or palette colours; CMYK JPEGs convert as
  R = (255 - C)(255 - K) / 255 (no colour profile applied), as PIL and OpenCV do.
- transparency (RGBA, LA, a palette or colour key with transparency) is composited onto the letterbox gray (128),
  the colour the network sees where there is no image: the colour stored under a transparent pixel is not what any
  viewer shows, and editors often leave erased content there. An alpha channel that is 0 everywhere is taken as
  unused (some BMP writers leave it so, and viewers show such images opaque) and ignored.
- 32-bit integer and floating-point pixels have no standard range, so they are refused with a UserError.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from utils.core.config import UserError
from utils.data.augment import GRAY as BACKGROUND_GRAY  # transparent pixels show the letterbox gray

__all__ = ["ImageInfo", "image_info", "read_image_rgb", "rgb_pixels"]

_EXIF_ORIENTATION_TAG = 0x0112
_TURNING_ORIENTATIONS = (5, 6, 7, 8)
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_SIXTEEN_BIT_I_FORMATS = ("PNG", "PPM")  # PIL opens their 16-bit grayscale as mode "I" in some versions
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass(frozen=True)
class ImageInfo:
    raw_size: tuple[int, int]  # (width, height) as stored in the file
    orientation: int  # EXIF orientation; 1 when absent
    upright_size: tuple[int, int]  # (width, height) as read_image_rgb returns it

    @property
    def turns(self) -> bool:
        """The upright image swaps width and height (orientations 5-8)."""
        return self.orientation in _TURNING_ORIENTATIONS


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation of an open image; 1 when absent or not an integer."""
    orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    return orientation if isinstance(orientation, int) else 1


def read_image_rgb(path: str | os.PathLike, *, fix: str = "fix or remove it") -> np.ndarray:
    """Read an image as uint8 RGB (H, W, 3) in its upright (EXIF-orientation-applied) frame.

    Any mode converts by the module's rule (``rgb_pixels``). Raises FileNotFoundError for a missing file and
    UserError (a ValueError) naming the file for a truncated, undecodable or unconvertible one; ``fix`` ends that
    message, so each tool names the remedies it has (training adds its on_corrupt setting, prediction has none).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decodes now, so a truncated file fails here and not later
            if _orientation(img) != 1:
                img = ImageOps.exif_transpose(img)
            return rgb_pixels(img)
    except _DECODE_ERRORS as exc:
        raise UserError(f"cannot decode image {path}: {exc}; {fix}") from exc


def rgb_pixels(img: Image.Image) -> np.ndarray:
    """uint8 RGB (H, W, 3) of a PIL image of any mode, by the rule of the module docstring. Raises ValueError for
    pixels without a standard range (32-bit integer, floating point)."""
    mode = img.mode
    source_format = img.format or ""
    if mode.startswith("I;16") or (mode == "I" and source_format in _SIXTEEN_BIT_I_FORMATS):
        gray = np.asarray(img).astype(np.int64)
        if gray.min() < 0 or gray.max() > 0xFFFF:
            raise ValueError(f"mode {mode} pixels outside 0-65535 ({gray.min()}-{gray.max()})")
        return np.repeat((gray >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    if mode in ("I", "F"):
        raise ValueError(f"{'32-bit integer' if mode == 'I' else 'floating-point'} pixels (mode {mode}) have no "
                         f"standard 8-bit range; save the image with 8 or 16 bits per channel")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"))
        alpha = rgba[:, :, 3:].astype(np.uint32)
        if not alpha.any():  # an unused alpha channel: the colours are the image
            return np.ascontiguousarray(rgba[:, :, :3])
        # Rounded integer blend: (c * a + gray * (255 - a)) / 255, exact halves cannot occur.
        blended = (rgba[:, :, :3] * alpha + BACKGROUND_GRAY * (255 - alpha) + 127) // 255
        return blended.astype(np.uint8)
    return np.asarray(img.convert("RGB"))


def image_info(path: str | os.PathLike, *, decode: bool = False) -> ImageInfo:
    """Sizes and orientation of an image from its header; with ``decode`` every pixel is decoded and converted
    as read_image_rgb does, so a truncated or unconvertible file is caught. Raises UserError naming the file when
    it is missing or not a readable image."""
    if not os.path.isfile(path):
        raise UserError(f"image {path}: no such file")
    try:
        with Image.open(path) as img:
            if decode:
                img.load()
                rgb_pixels(img)  # an image the reader would refuse is refused here too
            raw_size = img.size
            orientation = _orientation(img)
    except _DECODE_ERRORS as exc:
        raise UserError(f"image {path}: cannot be decoded ({exc})") from exc
    upright_size = (raw_size[1], raw_size[0]) if orientation in _TURNING_ORIENTATIONS else raw_size
    return ImageInfo(raw_size=raw_size, orientation=orientation, upright_size=upright_size)
