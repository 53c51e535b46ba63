"""Image + box transforms for training and validation (numpy / OpenCV, no global random state).

Images are uint8 RGB (H, W, 3). Boxes are ``boxes_xyxy_cls``: float (n, 5) [x1, y1, x2, y2, class_id] in the
pixels of the image they travel with. Every random draw comes from the ``rng`` (np.random.Generator) passed in.
"""
from __future__ import annotations

import cv2
import numpy as np

GRAY = 128  # canvas fill for letterbox and random placement
HSV_GAINS = (0.1, 0.7, 0.4)  # hue, saturation, value jitter amplitudes


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """low + (high - low) * U[0, 1): also valid when high < low (an image larger than the canvas)."""
    return low + (high - low) * rng.random()


def resize(image: np.ndarray, *, width: int, height: int) -> np.ndarray:
    """Bilinear resize; area averaging (about 10x slower) only when shrinking below half size, where
    bilinear would alias."""
    strong_shrink = 2 * width < image.shape[1] or 2 * height < image.shape[0]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if strong_shrink else cv2.INTER_LINEAR)


def paste(canvas: np.ndarray, image: np.ndarray, *, dx: int, dy: int,
          region: tuple[int, int, int, int] | None = None) -> None:
    """Copy ``image`` into ``canvas`` with its top-left corner at (dx, dy), keeping only the part inside
    ``region`` = (x1, y1, x2, y2) (default: the whole canvas). Offsets may be negative."""
    x1, y1, x2, y2 = region if region is not None else (0, 0, canvas.shape[1], canvas.shape[0])
    left, top = max(dx, x1), max(dy, y1)
    right, bottom = min(dx + image.shape[1], x2), min(dy + image.shape[0], y2)
    if right > left and bottom > top:
        canvas[top:bottom, left:right] = image[top - dy:bottom - dy, left - dx:right - dx]


def scale_boxes(boxes_xyxy_cls: np.ndarray, *, sx: float, sy: float, dx: float, dy: float) -> np.ndarray:
    """x -> x * sx + dx, y -> y * sy + dy on a copy; class ids untouched."""
    boxes_out = boxes_xyxy_cls.astype(np.float32, copy=True)
    boxes_out[:, [0, 2]] = boxes_out[:, [0, 2]] * sx + dx
    boxes_out[:, [1, 3]] = boxes_out[:, [1, 3]] * sy + dy
    return boxes_out


def flip_boxes_horizontal(boxes_xyxy_cls: np.ndarray, *, width: float) -> np.ndarray:
    """Mirror boxes of an image ``width`` pixels wide: x1' = width - x2, x2' = width - x1."""
    boxes_out = boxes_xyxy_cls.copy()
    boxes_out[:, [0, 2]] = width - boxes_xyxy_cls[:, [2, 0]]
    return boxes_out


def clip_boxes(boxes_xyxy_cls: np.ndarray, *, region: tuple[float, float, float, float],
               min_size: float = 1.0) -> np.ndarray:
    """Clip boxes to region (x1, y1, x2, y2) and drop those narrower or shorter than ``min_size`` pixels."""
    boxes_out = boxes_xyxy_cls.copy()
    boxes_out[:, [0, 2]] = boxes_out[:, [0, 2]].clip(region[0], region[2])
    boxes_out[:, [1, 3]] = boxes_out[:, [1, 3]].clip(region[1], region[3])
    keep = (boxes_out[:, 2] - boxes_out[:, 0] >= min_size) & (boxes_out[:, 3] - boxes_out[:, 1] >= min_size)
    return boxes_out[keep]


def letterbox_geometry(*, image_hw: tuple[int, int], input_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(new_w, new_h, dx, dy): size of the aspect-kept resize and its centred offset on the (h, w) input."""
    ih, iw = image_hw
    h, w = input_shape
    if w * ih <= h * iw:  # width-limited; integer arithmetic avoids off-by-one sizes from float scales
        new_w, new_h = w, max(1, ih * w // iw)
    else:
        new_w, new_h = max(1, iw * h // ih), h
    return new_w, new_h, (w - new_w) // 2, (h - new_h) // 2


def letterbox(image: np.ndarray, boxes_xyxy_cls: np.ndarray, *, input_shape: tuple[int, int]
              ) -> tuple[np.ndarray, np.ndarray]:
    """Resize keeping the aspect ratio, centre on a gray canvas of input_shape (h, w); boxes follow and are
    clipped. Returns (canvas uint8 (h, w, 3), boxes in canvas pixels)."""
    h, w = input_shape
    new_w, new_h, dx, dy = letterbox_geometry(image_hw=image.shape[:2], input_shape=input_shape)
    canvas = np.full((h, w, 3), GRAY, dtype=np.uint8)
    paste(canvas, resize(image, width=new_w, height=new_h), dx=dx, dy=dy)
    boxes_canvas = scale_boxes(boxes_xyxy_cls, sx=new_w / image.shape[1], sy=new_h / image.shape[0], dx=dx, dy=dy)
    return canvas, clip_boxes(boxes_canvas, region=(0, 0, w, h))


def hsv_jitter(image: np.ndarray, *, rng: np.random.Generator, gains: tuple[float, float, float] = HSV_GAINS
               ) -> np.ndarray:
    """Multiply hue, saturation and value by 1 + U(-1, 1) * gain through one lookup table (hue wraps at 180)."""
    ratios = rng.uniform(-1, 1, 3) * np.asarray(gains) + 1  # drawn even when gains are 0: stable streams
    if not any(gains):
        return image
    levels = np.arange(256, dtype=np.float32)
    lut = np.stack([(levels * ratios[0]) % 180,
                    np.clip(levels * ratios[1], 0, 255),
                    np.clip(levels * ratios[2], 0, 255)], axis=-1).astype(np.uint8)  # (256, 3)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv = cv2.LUT(hsv, lut.reshape(256, 1, 3))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _jittered_size(rng: np.random.Generator, *, image_hw: tuple[int, int], base_hw: tuple[int, int],
                   jitter: float, scale: float) -> tuple[int, int]:
    """(new_w, new_h): aspect ratio jittered by U(1-j, 1+j) / U(1-j, 1+j); the longer side is ``scale`` times
    the matching side of base_hw."""
    ih, iw = image_hw
    new_ar = iw / ih * _uniform(rng, 1 - jitter, 1 + jitter) / _uniform(rng, 1 - jitter, 1 + jitter)
    if new_ar < 1:
        new_h = int(scale * base_hw[0])
        new_w = int(new_h * new_ar)
    else:
        new_w = int(scale * base_hw[1])
        new_h = int(new_w / new_ar)
    return max(new_w, 1), max(new_h, 1)


def random_place(image: np.ndarray, boxes_xyxy_cls: np.ndarray, *, input_shape: tuple[int, int],
                 rng: np.random.Generator, jitter: float = 0.3, scale_range: tuple[float, float] = (0.25, 2.0),
                 flip_prob: float = 0.5, hsv_gains: tuple[float, float, float] = HSV_GAINS
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Single-image training augmentation: jittered aspect, random scale, random offset on a gray canvas
    of input_shape (h, w), horizontal flip, HSV jitter. Boxes follow, are clipped and tiny ones dropped."""
    h, w = input_shape
    new_w, new_h = _jittered_size(rng, image_hw=image.shape[:2], base_hw=(h, w), jitter=jitter,
                                  scale=_uniform(rng, *scale_range))
    dx = int(_uniform(rng, 0, w - new_w))
    dy = int(_uniform(rng, 0, h - new_h))
    flip = rng.random() < flip_prob
    canvas = np.full((h, w, 3), GRAY, dtype=np.uint8)
    paste(canvas, resize(image, width=new_w, height=new_h), dx=dx, dy=dy)
    boxes_canvas = scale_boxes(boxes_xyxy_cls, sx=new_w / image.shape[1], sy=new_h / image.shape[0], dx=dx, dy=dy)
    if flip:
        canvas = np.ascontiguousarray(canvas[:, ::-1])
        boxes_canvas = flip_boxes_horizontal(boxes_canvas, width=w)
    canvas = hsv_jitter(canvas, rng=rng, gains=hsv_gains)
    return canvas, clip_boxes(boxes_canvas, region=(0, 0, w, h))


def mosaic(images: list[np.ndarray], boxes_list: list[np.ndarray], *, input_shape: tuple[int, int],
           rng: np.random.Generator, jitter: float = 0.3, scale_range: tuple[float, float] = (0.4, 1.0),
           flip_prob: float = 0.5, hsv_gains: tuple[float, float, float] = HSV_GAINS
           ) -> tuple[np.ndarray, np.ndarray]:
    """Four images around a random cut point (30-70% of each side): top-left, bottom-left, bottom-right,
    top-right. Each is flipped/jittered/scaled and shows only inside its quadrant; its boxes are clipped to
    that quadrant. HSV jitter is applied once to the result."""
    h, w = input_shape
    cut_x = int(w * _uniform(rng, 0.3, 0.7))
    cut_y = int(h * _uniform(rng, 0.3, 0.7))
    quadrants = [(0, 0, cut_x, cut_y), (0, cut_y, cut_x, h), (cut_x, cut_y, w, h), (cut_x, 0, w, cut_y)]
    canvas = np.full((h, w, 3), GRAY, dtype=np.uint8)
    placed_boxes = []
    for quadrant_idx, (image, boxes_xyxy_cls) in enumerate(zip(images, boxes_list)):
        flip = rng.random() < flip_prob
        new_w, new_h = _jittered_size(rng, image_hw=image.shape[:2], base_hw=(h, w), jitter=jitter,
                                      scale=_uniform(rng, *scale_range))
        resized = resize(image, width=new_w, height=new_h)
        boxes_resized = scale_boxes(boxes_xyxy_cls, sx=new_w / image.shape[1], sy=new_h / image.shape[0], dx=0, dy=0)
        if flip:
            resized = resized[:, ::-1]
            boxes_resized = flip_boxes_horizontal(boxes_resized, width=new_w)
        # Each image touches the cut point with the corner that faces it.
        dx = cut_x - new_w if quadrant_idx in (0, 1) else cut_x
        dy = cut_y - new_h if quadrant_idx in (0, 3) else cut_y
        region = quadrants[quadrant_idx]
        paste(canvas, resized, dx=dx, dy=dy, region=region)
        placed_boxes.append(clip_boxes(scale_boxes(boxes_resized, sx=1, sy=1, dx=dx, dy=dy), region=region))
    canvas = hsv_jitter(canvas, rng=rng, gains=hsv_gains)
    return canvas, np.concatenate(placed_boxes, axis=0)


def mixup(image_a: np.ndarray, boxes_a: np.ndarray, image_b: np.ndarray, boxes_b: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-size images 0.5 / 0.5 and keep the boxes of both."""
    blended = cv2.addWeighted(image_a, 0.5, image_b, 0.5, 0.0)
    return blended, np.concatenate([boxes_a, boxes_b], axis=0)
