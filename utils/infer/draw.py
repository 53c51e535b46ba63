"""Drawing detections, saving crops and overlaying heat maps. Boxes are pred_xyxy in the drawn image's pixels."""
from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """One RGB colour per class, hues evenly spaced so neighbouring class ids differ clearly."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(num_classes, 1), 1.0, 1.0))
            for i in range(num_classes)]


def draw_detections(image: Image.Image, *, boxes_xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray,
                    class_names: list[str]) -> Image.Image:
    """A copy of ``image`` (RGB) with one rectangle and a ``name score`` label per detection."""
    canvas = image.convert("RGB")
    width, height = canvas.size
    colors = class_colors(len(class_names))
    thickness = max(1, (width + height) // 600)
    font = ImageFont.load_default(size=max(10, int(0.03 * height + 0.5)))
    draw = ImageDraw.Draw(canvas)
    for box, score, class_id in zip(np.asarray(boxes_xyxy).tolist(), np.asarray(scores).tolist(),
                                    np.asarray(class_ids).tolist()):
        x1, y1, x2, y2 = (round(v) for v in box)
        color = colors[class_id]
        draw.rectangle((x1, y1, x2, y2), outline=color, width=thickness)
        label = f"{class_names[class_id]} {score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        text_w, text_h = right - left, bottom - top
        # Label above the box when it fits, otherwise just inside its top edge.
        text_y = y1 - text_h - 2 if y1 - text_h - 2 >= 0 else y1 + 1
        draw.rectangle((x1, text_y, x1 + text_w + 4, text_y + text_h + 2), fill=color)
        draw.text((x1 + 2 - left, text_y + 1 - top), label, fill=(0, 0, 0), font=font)
    return canvas


def save_crops(image: Image.Image, *, boxes_xyxy: np.ndarray, crop_dir: str | Path) -> list[Path]:
    """Saves each detection's region as crop_<i>.png in crop_dir; returns the written paths."""
    crop_dir = Path(crop_dir)
    crop_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, box in enumerate(np.asarray(boxes_xyxy).tolist()):
        x1, y1, x2, y2 = int(np.floor(box[0])), int(np.floor(box[1])), int(np.ceil(box[2])), int(np.ceil(box[3]))
        if x2 <= x1 or y2 <= y1:
            continue
        path = crop_dir / f"crop_{index}.png"
        image.crop((x1, y1, x2, y2)).save(path)
        written.append(path)
    return written


def overlay_heatmap(image: Image.Image, heat: np.ndarray, *, alpha: float = 0.5) -> Image.Image:
    """Blend a JET-coloured heat map (H, W) in [0, 1] of the image's size over the image."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heat map {heat.shape} does not match the image {rgb.shape[:2]}")
    heat_u8 = (np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)
    colored = cv2.cvtColor(cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB).astype(np.float32)
    return Image.fromarray((rgb * (1 - alpha) + colored * alpha).round().astype(np.uint8))


def put_fps(frame_bgr: np.ndarray, fps: float) -> np.ndarray:
    """Writes ``fps= ...`` in the top-left corner of a BGR frame, in place; returns it."""
    cv2.putText(frame_bgr, f"fps= {fps:.2f}", (0, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (0, 255, 0), 2)
    return frame_bgr
