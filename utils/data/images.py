"""The one image reader of every tool: training, prediction, evaluation, annotation, anchors and the dataset checks.

Every tool sees an image upright, with its EXIF orientation applied (as PIL's ImageOps.exif_transpose does), so
boxes drawn by one tool mean the same pixels in another. ``read_image_rgb`` decodes the pixels; ``image_info``
gives the stored and upright sizes and the orientation from the header (decoding only when asked).
Orientations 5-8 turn the image by 90 degrees, so its upright width and height are the stored ones swapped.
Values outside 1-8 (0, 65537, ...) change nothing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from utils.core.config import UserError

__all__ = ["ImageInfo", "image_info", "read_image_rgb"]

_EXIF_ORIENTATION_TAG = 0x0112
_TURNING_ORIENTATIONS = (5, 6, 7, 8)
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


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

    Grayscale becomes 3 channels and alpha is dropped. Raises FileNotFoundError for a missing file and
    UserError (a ValueError) naming the file for a truncated or undecodable one; ``fix`` ends that message, so
    each tool names the remedies it has (training adds its on_corrupt setting, prediction has none).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decodes now, so a truncated file fails here and not later
            if _orientation(img) != 1:
                img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
            return np.asarray(img.convert("RGB"))
    except _DECODE_ERRORS as exc:
        raise UserError(f"cannot decode image {path}: {exc}; {fix}") from exc


def image_info(path: str | os.PathLike, *, decode: bool = False) -> ImageInfo:
    """Sizes and orientation of an image from its header; with ``decode`` every pixel is decoded too, so a
    truncated file is caught. Raises UserError naming the file when it is missing or not a readable image."""
    if not os.path.isfile(path):
        raise UserError(f"image {path}: no such file")
    try:
        with Image.open(path) as img:
            if decode:
                img.load()
            raw_size = img.size
            orientation = _orientation(img)
    except _DECODE_ERRORS as exc:
        raise UserError(f"image {path}: cannot be decoded ({exc})") from exc
    upright_size = (raw_size[1], raw_size[0]) if orientation in _TURNING_ORIENTATIONS else raw_size
    return ImageInfo(raw_size=raw_size, orientation=orientation, upright_size=upright_size)
