"""The detection pipeline both detectors share: preprocess -> the runtime's forward and decode -> class-aware NMS
-> boxes mapped back to the original image -> ``Detections``; plus timing and drawing.

``YOLO`` (utils/infer/detector.py) runs it with PyTorch, ``OnnxYOLO`` (utils/infer/onnx_detector.py) with
onnxruntime, ``OpenVinoYOLO`` (utils/infer/openvino_detector.py) with OpenVINO; each provides ``_forward`` and
``_finish_decode``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from utils.core.config import UserError
from utils.core.model_files import get_classes
from utils.infer.draw import draw_detections, save_crops
from utils.infer.postprocess import PostprocessSettings, non_max_suppression
from utils.infer.preprocess import LetterboxInfo, boxes_to_original, preprocess_image


@dataclass
class Detections:
    """Detections of one image, best score first."""
    boxes_xyxy: np.ndarray  # (n, 4) float32 pred_xyxy_orig: x1, y1, x2, y2 in original-image pixels
    scores: np.ndarray  # (n,) float32 objectness * class probability
    class_ids: np.ndarray  # (n,) int64
    class_names: list[str]  # (n,) name of each detection's class

    def __len__(self) -> int:
        return len(self.scores)

    def to_dicts(self) -> list[dict[str, Any]]:
        """JSON-ready records: class_id, class_name, score, box_xyxy (original-image pixels)."""
        return [{"class_id": int(c), "class_name": name, "score": round(float(s), 6),
                 "box_xyxy": [round(float(v), 2) for v in box]}
                for box, s, c, name in zip(self.boxes_xyxy, self.scores, self.class_ids, self.class_names)]


def input_hw(input_shape: int | list[int] | tuple[int, ...]) -> list[int]:
    """[h, w] from an int (square) or a 2-sequence; sizes must be multiples of 32 (the coarsest stride)."""
    hw = [int(input_shape)] * 2 if isinstance(input_shape, (int, float)) else [int(v) for v in input_shape]
    if len(hw) != 2 or any(v <= 0 or v % 32 for v in hw):
        raise ValueError(f"input_shape must be [h, w] with positive multiples of 32, got {input_shape}")
    return hw


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def class_names_for(*, classes_path: str | None, stored: list[str] | None, source: str) -> list[str] | None:
    """The class names a model runs with: those stored with it (``stored``), which a given classes file must
    repeat name for name, since another file of the same length would relabel every detection; without stored
    names the classes file's, taken as given (None when there is neither)."""
    given = get_classes(classes_path) if classes_path else None
    if stored is None or given is None:
        return given if given is not None else (list(stored) if stored is not None else None)
    stored = list(stored)
    fix = "leave classes_path unset (the model's own names are used) or pass the file it was trained with"
    if len(given) != len(stored):
        raise UserError(f"classes file {classes_path} lists {len(given)} classes, but {source} was trained on "
                        f"{len(stored)} ({_listing(stored)}); {fix}")
    if given != stored:
        i = next(i for i, (a, b) in enumerate(zip(given, stored)) if a != b)
        raise UserError(f"classes file {classes_path}: class {i} is {given[i]!r}, but {source} was trained with "
                        f"{stored[i]!r} there (its classes: {_listing(stored)}); {fix}")
    return given


def check_dataset_classes(model_names: list[str], *, dataset_names: list[str], dataset: str, source: str) -> None:
    """A model runs on a dataset only when it predicts the dataset's classes, name for name in the same order (a
    class id means a name); else a UserError naming both lists. ``dataset`` and ``source`` name the two."""
    if list(model_names) == list(dataset_names):
        return
    trained_on = f"{source} was trained on the classes {_listing(list(model_names))}"
    if sorted(model_names) == sorted(dataset_names):  # e.g. a VOC devkit without classes file: its names sorted
        raise UserError(f"{trained_on}, dataset {dataset} names the same classes in another order "
                        f"({_listing(list(dataset_names))}); pass --classes_path with a classes file listing them in "
                        f"the model's order")
    raise UserError(f"{trained_on}, but dataset {dataset} names {_listing(list(dataset_names))}; use a model trained "
                    f"on this dataset (its class ids would relabel the dataset's objects)")


def check_class_count(class_names: list[str], *, classes_source: str, model_classes: int | None,
                      source: str) -> None:
    """A model that stores no class names (a published state_dict, a darknet file, a foreign ONNX file) takes the
    classes file as given; its head still fixes how many classes there are."""
    if model_classes is not None and model_classes != len(class_names):
        raise UserError(f"{classes_source} lists {len(class_names)} classes, but {source} predicts "
                        f"{model_classes}; pass the classes file it was trained with (--classes_path)")


class BaseDetector:
    """Shared preprocessing, NMS, box mapping and drawing; subclasses provide ``_forward`` and ``_finish_decode``
    and set the attributes below."""

    engine: str  # the runtime that runs the network: PyTorch, ONNX Runtime, OpenVINO
    precision: str  # what the network computes in: fp32, bf16, fp16
    class_names: list[str]
    input_shape: list[int]
    letterbox_image: bool  # keep the aspect ratio with gray padding (as in validation); False stretches
    postprocess_settings: PostprocessSettings
    batch_size: int = 8  # images per detect_batch call when evaluating a list (get_map.py, dir_predict)

    def _forward(self, images_bchw: np.ndarray):
        """images (B, 3, H, W) float32 in [0, 1] -> the runtime's outputs (whatever ``_finish_decode`` takes)."""
        raise NotImplementedError

    def _finish_decode(self, outputs) -> Tensor:
        """The runtime's outputs -> decoded (B, N, 5 + C) float32."""
        raise NotImplementedError

    def _sync(self) -> None:
        """Waits for queued device work, so that timings include it."""

    def _decoded(self, images_bchw: np.ndarray) -> Tensor:
        return self._finish_decode(self._forward(images_bchw))

    def get_fps(self, image: Image.Image, n: int = 100) -> dict[str, float]:
        """Mean milliseconds per image of preprocessing, forward (the network; with onnxruntime also the decode
        inside the graph) and postprocessing (decode, NMS, box mapping) over ``n`` batch-1 runs after one warm-up,
        and the resulting frames per second."""
        self.detect(image)
        totals = np.zeros(3)
        for _ in range(max(1, n)):
            start = time.perf_counter()
            image_chw, info = self._preprocess(image)
            prepared = time.perf_counter()
            outputs = self._forward(image_chw[None])
            self._sync()
            forwarded = time.perf_counter()
            self.postprocess(self._finish_decode(outputs), [info])
            totals += (prepared - start, forwarded - prepared, time.perf_counter() - forwarded)
        preprocess_ms, forward_ms, postprocess_ms = (float(t) for t in totals * 1000 / max(1, n))
        total_ms = preprocess_ms + forward_ms + postprocess_ms
        return {"preprocess_ms": preprocess_ms, "forward_ms": forward_ms, "postprocess_ms": postprocess_ms,
                "total_ms": total_ms, "fps": 1000.0 / total_ms}

    def _preprocess(self, image: Image.Image | np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        return preprocess_image(image, self.input_shape, self.letterbox_image)

    def postprocess(self, decoded: Tensor, infos: list[LetterboxInfo]) -> list[Detections]:
        """decoded (B, N, 5 + C) from the network or the ONNX model -> Detections per image in original pixels,
        clipped to the image; boxes wholly outside the image (in the letterbox padding) are dropped."""
        results = non_max_suppression(decoded, settings=self.postprocess_settings)
        detections = []
        for result, info in zip(results, infos):
            pred_xyxy_orig = boxes_to_original(result["boxes_xyxy"].cpu().numpy(), info).astype(np.float32)
            # A box lying wholly in the letterbox padding clips to zero size: it cannot match anything, so drop it.
            inside = (pred_xyxy_orig[:, 2] > pred_xyxy_orig[:, 0]) & (pred_xyxy_orig[:, 3] > pred_xyxy_orig[:, 1])
            class_ids = result["class_ids"].cpu().numpy().astype(np.int64)[inside]
            detections.append(Detections(boxes_xyxy=pred_xyxy_orig[inside],
                                         scores=result["scores"].cpu().numpy().astype(np.float32)[inside],
                                         class_ids=class_ids, class_names=[self.class_names[c] for c in class_ids]))
        return detections

    def detect_batch(self, images: list[Image.Image | np.ndarray]) -> list[Detections]:
        """Several images in one forward pass, each letterboxed to the input size and mapped back with its own
        letterbox; the same detections as ``detect`` on each image (up to float summation order)."""
        prepared = [self._preprocess(image) for image in images]
        images_bchw = np.stack([image_chw for image_chw, _ in prepared])  # (B, 3, H, W)
        return self.postprocess(self._decoded(images_bchw), [info for _, info in prepared])

    def detect(self, image: Image.Image | np.ndarray) -> Detections:
        return self.detect_batch([image])[0]

    def render(self, image: Image.Image, detections: Detections, *, crop: bool = False, count: bool = False,
               crop_dir: str | Path = "img_crop") -> Image.Image:
        """Draws detections on a copy of ``image``; optionally prints per-class counts and saves crops."""
        if count:
            counts = np.bincount(detections.class_ids, minlength=len(self.class_names))
            print(f"{len(detections)} detections: "
                  + ", ".join(f"{name} {n}" for name, n in zip(self.class_names, counts) if n))
        if crop:
            save_crops(image.convert("RGB"), boxes_xyxy=detections.boxes_xyxy, crop_dir=crop_dir)
        return draw_detections(image, boxes_xyxy=detections.boxes_xyxy, scores=detections.scores,
                               class_ids=detections.class_ids, class_names=self.class_names)

    def detect_image(self, image: Image.Image, crop: bool = False, count: bool = False,
                     crop_dir: str | Path = "img_crop") -> Image.Image:
        """The image with boxes and ``name score`` labels drawn."""
        return self.render(image, self.detect(image), crop=crop, count=count, crop_dir=crop_dir)
