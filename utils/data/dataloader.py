"""Detection dataset over annotation lines (see voc_annotation.py) and its collate function.

Randomness: every draw for sample ``index`` in epoch ``epoch`` comes from
``np.random.default_rng([seed, epoch, index])``. Augmentation therefore does not depend on the number of
DataLoader workers or on which worker serves a sample, differs between epochs and samples, and repeats
exactly for runs that share a seed. No global random state is used, so no worker_init_fn is needed.
"""
from __future__ import annotations

import multiprocessing
import warnings
from multiprocessing.context import get_spawning_popen

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.core.config import UserError
from utils.data import augment
from utils.data.images import read_image_rgb
from utils.data.voc import parse_annotation_line

__all__ = ["YoloDataset", "yolo_collate"]


class YoloDataset(Dataset):
    """Samples for the detector: (image float32 (3, H, W) RGB in [0, 1], boxes float32 (n, 5)
    [x1, y1, x2, y2, class_id] xyxy in network-input pixels).

    train=False: letterbox only. train=True: random scale/aspect/offset, flip and HSV jitter; Mosaic with
    probability mosaic_prob and, on top of a mosaic, MixUp with probability mixup_prob, both only while
    epoch < special_aug_ratio * total_epochs. on_corrupt="skip" replaces an undecodable image by the next
    decodable sample (with a warning) instead of raising.
    """

    def __init__(self, *, annotation_lines: list[str], input_shape: tuple[int, int], train: bool,
                 mosaic: bool = True, mosaic_prob: float = 0.5, mixup: bool = True, mixup_prob: float = 0.5,
                 special_aug_ratio: float = 0.7, total_epochs: int = 100, seed: int = 0, on_corrupt: str = "error",
                 jitter: float = 0.3, flip_prob: float = 0.5,
                 hsv_gains: tuple[float, float, float] = augment.HSV_GAINS):
        if on_corrupt not in ("error", "skip"):
            raise ValueError(f"on_corrupt must be 'error' or 'skip', got {on_corrupt!r}")
        if not annotation_lines:
            raise ValueError("annotation_lines is empty: no samples")
        self.image_paths: list[str] = []
        self.boxes_list: list[np.ndarray] = []  # per image: (n, 5) float32 [x1, y1, x2, y2, class_id], image pixels
        for line_no, line in enumerate(annotation_lines, start=1):
            try:
                image_path, boxes_xyxy_cls = parse_annotation_line(line)
            except ValueError as exc:
                raise ValueError(f"annotation line {line_no}: {exc}") from exc
            self.image_paths.append(image_path)
            self.boxes_list.append(boxes_xyxy_cls)
        self.input_shape = (int(input_shape[0]), int(input_shape[1]))
        self.train = train
        self.mosaic, self.mosaic_prob = mosaic, mosaic_prob
        self.mixup, self.mixup_prob = mixup, mixup_prob
        self.special_aug_ratio, self.total_epochs = special_aug_ratio, total_epochs
        self.seed, self.on_corrupt = seed, on_corrupt
        self.jitter, self.flip_prob, self.hsv_gains = jitter, flip_prob, tuple(hsv_gains)
        # Shared memory, so set_epoch in the main process also reaches persistent DataLoader workers.
        self._epoch = multiprocessing.RawValue("q", 0)

    def __getstate__(self):
        state = self.__dict__.copy()
        if get_spawning_popen() is None:  # plain pickling/deepcopy: a shared value cannot travel, send the number
            state["_epoch"] = self._epoch.value
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if isinstance(self._epoch, int):
            epoch, self._epoch = self._epoch, multiprocessing.RawValue("q", 0)
            self._epoch.value = epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation stream __getitem__ draws from; call before iterating."""
        self._epoch.value = int(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index) -> tuple[np.ndarray, np.ndarray]:
        index = int(index) % len(self)
        if not self.train:
            image, boxes_orig = self._load(index)
            canvas, boxes_input = augment.letterbox(image, boxes_orig, input_shape=self.input_shape)
        else:
            canvas, boxes_input = self._augment(index)
        image_chw = np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32)  # (3, H, W)
        image_chw /= 255.0  # in place: a second image-sized array costs more than the division (page faults)
        return image_chw, boxes_input.astype(np.float32).reshape(-1, 5)

    def _augment(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        epoch = self.epoch
        rng = np.random.default_rng([self.seed, epoch, index])
        place_kwargs = dict(input_shape=self.input_shape, rng=rng, jitter=self.jitter, flip_prob=self.flip_prob,
                            hsv_gains=self.hsv_gains)
        special_aug = epoch < self.special_aug_ratio * self.total_epochs
        if not (self.mosaic and special_aug and rng.random() < self.mosaic_prob):
            return augment.random_place(*self._load(index), **place_kwargs)
        mosaic_indices = rng.permutation(np.append(rng.integers(0, len(self), size=3), index))
        samples = [self._load(int(i)) for i in mosaic_indices]
        canvas, boxes_input = augment.mosaic([s[0] for s in samples], [s[1] for s in samples], **place_kwargs)
        if self.mixup and rng.random() < self.mixup_prob:
            partner = self._load(int(rng.integers(0, len(self))))
            canvas_b, boxes_b = augment.random_place(*partner, **place_kwargs)
            canvas, boxes_input = augment.mixup(canvas, boxes_input, canvas_b, boxes_b)
        return canvas, boxes_input

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 RGB (H, W, 3), boxes (n, 5) in its pixels); with on_corrupt="skip" an undecodable or
        missing image is replaced by the next decodable one in line order."""
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            try:
                image = read_image_rgb(self.image_paths[candidate], fix="fix or remove it, or set --on_corrupt=skip")
                return image, self.boxes_list[candidate]
            except (ValueError, FileNotFoundError) as exc:
                if self.on_corrupt == "error":
                    raise
                warnings.warn(f"{exc}; skipped, using the next sample instead", stacklevel=2)
        raise UserError("no image of the dataset can be decoded")


def yolo_collate(batch: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples: images (B, 3, H, W) float32 and targets (N, 6) float32 [img_idx, class_id, x1, y1, x2, y2]
    with boxes xyxy in network-input pixels (N = all boxes of the batch)."""
    images = torch.from_numpy(np.stack([image_chw for image_chw, _ in batch]))  # (B, 3, H, W)
    boxes_xyxy_cls = np.concatenate([boxes for _, boxes in batch], axis=0).reshape(-1, 5)  # (N, 5)
    img_idx = np.repeat(np.arange(len(batch), dtype=np.float32), [len(boxes) for _, boxes in batch])  # (N,)
    targets = np.concatenate([img_idx[:, None], boxes_xyxy_cls[:, 4:5], boxes_xyxy_cls[:, :4]], axis=1)  # (N, 6)
    return images, torch.from_numpy(targets.astype(np.float32))
