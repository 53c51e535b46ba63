"""The records every dataset reader yields (ImageRecord, Dataset) and what the readers share: the class-name check,
the per-image box check, the per-class report and the stops after it. The readers are utils/data/voc_dataset.py,
yolo_txt.py and coco_json.py; utils/data/dataset.py picks one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from utils.core.config import UserError
from utils.core.textfile import display_path
from utils.data.boxcheck import BoxTally
from utils.data.voc import AnnotationFile, format_annotation_line, format_classes_header

FORMATS = ("voc", "yolo", "coco")
DatasetFormat = Literal["auto", "voc", "yolo", "coco"]
SPLITS = ("train", "val", "test")


@dataclass
class ImageRecord:
    """One image of a split and its objects.

    image_path: the image file (absolute). size: (width, height) of the upright image in pixels.
    boxes_xyxy: (n, 4) float64, upright-image pixels, x1 < x2 and y1 < y2, inside the image.
    class_ids: (n,) int64 in 0..C-1 (indices into Dataset.class_names).
    difficult: (n,) bool; VOC <difficult>1</difficult> or COCO iscrowd=1: not trained on, ignored by the evaluation.
    source_id: the image's id in its source (COCO image id), None for formats without one.
    """
    image_path: str
    size: tuple[int, int]
    boxes_xyxy: np.ndarray
    class_ids: np.ndarray
    difficult: np.ndarray
    source_id: int | str | None = None

    @property
    def image_id(self) -> str:
        """The id the evaluation keys this image by: its file name without extension (as get_map.py's text files)."""
        return Path(self.image_path).stem


@dataclass
class Dataset:
    """A dataset as read: its format and root, class names, and the records of each split it has.

    category_ids: COCO only, the category id of each class index (ids need not be 0..C-1).
    coco_json: COCO only, split -> its instances json, for get_map.py's exact COCO AP against that file.
    tallies: split -> what was kept and dropped per class (utils/data/boxcheck.py).
    """
    root: str
    format: str
    class_names: list[str]
    splits: dict[str, list[ImageRecord]]
    category_ids: list[int] | None = None
    coco_json: dict[str, str] = field(default_factory=dict)
    tallies: dict[str, BoxTally] = field(default_factory=dict)

    def records(self, split: str) -> list[ImageRecord]:
        """The records of one split; UserError naming the dataset and the splits it has when it lacks it."""
        if split not in self.splits:
            have = ", ".join(self.splits) or "none"
            raise UserError(f"dataset {self.root} ({self.format}): has no {split!r} split (it has: {have})")
        return self.splits[split]

    def annotation_file(self, split: str, *, include_difficult: bool = False) -> AnnotationFile:
        """The split as the annotation lines train.py reads (``path x1,y1,x2,y2,class_id ...``), in memory; difficult
        objects are left out unless asked for, as voc_annotation.py does."""
        lines = []
        for record in self.records(split):
            keep = np.ones(len(record.class_ids), dtype=bool) if include_difficult else ~record.difficult
            boxes_xyxy_cls = np.concatenate([record.boxes_xyxy[keep], record.class_ids[keep, None]], axis=1)
            lines.append(format_annotation_line(image_path=record.image_path, boxes_xyxy_cls=boxes_xyxy_cls))
        return AnnotationFile(path=self.split_name(split), lines=lines, line_numbers=list(range(1, len(lines) + 1)),
                              class_names=list(self.class_names))

    def split_name(self, split: str) -> str:
        """How messages name a split: 'datasets/shapes (yolo) train'."""
        return f"{self.root} ({self.format}) {split}"

    def header(self) -> str:
        return format_classes_header(self.class_names)


def check_class_names(names: list[str], *, source: str, classes_path: str | None) -> list[str]:
    """The dataset's class names (``source`` says where they came from), checked: no empty or duplicate name, and
    equal to the classes file's when one is given. UserError listing every problem."""
    from utils.core.model_files import get_classes

    problems = [f"class {i} has an empty name" for i, name in enumerate(names) if not str(name).strip()]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            problems.append(f"class {i} {name!r} repeats class {seen[name]}")
        seen.setdefault(name, i)
    if classes_path is not None:
        listed = get_classes(classes_path)
        if listed != list(names):
            problems.append(f"classes file {classes_path} lists {listed}, but {source} names {list(names)} (ids "
                            f"follow the order); leave classes_path unset to use the dataset's names, or make them "
                            f"agree")
    if problems:
        raise UserError(f"{source}: " + ("; ".join(problems)))
    return list(names)


def checked_record(*, image_path: str | os.PathLike, size: tuple[int, int], boxes_xyxy_cls: np.ndarray,
                   difficult: np.ndarray | None = None, tally: BoxTally, where: str,
                   source_id: int | str | None = None) -> ImageRecord:
    """The record of one image from the boxes its annotation gives (n, 5) [x1, y1, x2, y2, class_id] in upright
    pixels: inverted, zero-area and outside boxes dropped (counted in ``tally`` per class and reason, with ``where``
    naming the file in the examples), the rest clipped to the image. size: upright (width, height)."""
    from utils.data.boxcheck import KEPT, box_verdicts

    boxes_xyxy_cls = np.asarray(boxes_xyxy_cls, dtype=np.float64).reshape(-1, 5)
    difficult = np.zeros(len(boxes_xyxy_cls), dtype=bool) if difficult is None else np.asarray(difficult, bool)
    verdicts = box_verdicts(boxes_xyxy_cls, image_size=size)
    texts = [",".join(f"{v:g}" for v in box[:4]) + f",{int(box[4])}" for box in boxes_xyxy_cls]
    tally.add_image(boxes_xyxy_cls[:, 4].astype(np.int64), verdicts, where=where, box_texts=texts)
    keep = verdicts == KEPT
    width, height = size
    kept_xyxy = boxes_xyxy_cls[keep, :4].copy()
    kept_xyxy[:, [0, 2]] = kept_xyxy[:, [0, 2]].clip(0, width)
    kept_xyxy[:, [1, 3]] = kept_xyxy[:, [1, 3]].clip(0, height)
    return ImageRecord(image_path=os.path.abspath(image_path), size=tuple(size), boxes_xyxy=kept_xyxy,
                       class_ids=boxes_xyxy_cls[keep, 4].astype(np.int64), difficult=difficult[keep],
                       source_id=source_id)


def report_dataset(dataset: Dataset, *, log=print) -> None:
    """Per split: images, background images, and per class the objects kept and dropped and why."""
    for split, tally in dataset.tallies.items():
        emptied = f", {tally.emptied} of them because every box was dropped" if tally.emptied else ""
        log(f"{dataset.split_name(split)}: {tally.images} images, {tally.background} background (no boxes){emptied}")
        for line in tally.class_lines():
            log(f"  {line}")
        example = tally.example_text()
        if example:
            log(f"  {example}")


def dataset_box_problems(dataset: Dataset) -> list[str]:
    """What stops a reader after its report: a split whose boxes were all dropped, a training split without a box
    to train on, a class without one in the training split (difficult / COCO crowd boxes are not trained on)."""
    problems = []
    for split, tally in dataset.tallies.items():
        if tally.total_dropped and not tally.total_kept:
            problems.append(f"{dataset.split_name(split)}: all {tally.total_dropped} boxes were dropped "
                            f"({tally.why_dropped()}); {tally.example_text()}")
    if "train" not in dataset.splits or problems:
        return problems
    records = dataset.splits["train"]
    counts = len(dataset.class_names)
    trainable = np.bincount(np.concatenate([r.class_ids[~r.difficult] for r in records] + [np.zeros(0, np.int64)]),
                            minlength=counts)
    marked = np.bincount(np.concatenate([r.class_ids[r.difficult] for r in records] + [np.zeros(0, np.int64)]),
                         minlength=counts)
    name = dataset.split_name("train")
    if not trainable.any():
        return [f"{name}: holds no box to train on ({len(records)} images, {int(marked.sum())} difficult or crowd "
                f"boxes); annotate the objects of {dataset.class_names}"]
    tally = dataset.tallies.get("train")
    for index in np.flatnonzero(trainable == 0):
        why = [tally.why_dropped(int(index))] if tally is not None else []
        why += [f"{int(marked[index])} marked difficult or crowd, which are not trained on"] if marked[index] else []
        problems.append(f"{name}: class {dataset.class_names[index]!r} has no box to train on ("
                        + ("; ".join(w for w in why if w) or "no object of it in the split")
                        + "); annotate some, or leave the class out of the class names")
    return problems


def finish_dataset(dataset: Dataset, *, problems: list[str], fix: str = "", log=print) -> Dataset:
    """The end of a reader: the problems found while reading (file, line, what is wrong) raised as one UserError;
    else the report (report_dataset), then the stops of dataset_box_problems, each ending with ``fix`` (the
    format's likely cause of dropped boxes) when boxes were dropped. Returns the dataset."""
    source = f"dataset {dataset.root} ({dataset.format})"
    raise_problems(problems, source=source)
    report_dataset(dataset, log=log)
    stops = dataset_box_problems(dataset)
    if fix and any(tally.total_dropped for tally in dataset.tallies.values()):
        stops = [f"{stop}; {fix}" for stop in stops]
    raise_problems(stops, source=source)
    return dataset


def raise_problems(problems: list[str], *, source: str, shown: int = 50) -> None:
    """One UserError for a list of problems: the problem itself when alone, else a first line counting them and
    one problem a line (the first ``shown``)."""
    if len(problems) == 1:
        raise UserError(problems[0])
    if problems:
        more = [f"... and {len(problems) - shown} more"] if len(problems) > shown else []
        raise UserError(f"{len(problems)} problems in {source}:\n" + "\n".join(problems[:shown] + more))


def same_stem_problems(records: list[ImageRecord], *, where: str) -> list[str]:
    """One problem per file stem that several records of one split share (the evaluation keys images by stem): the
    same image listed twice, or two images of one name; ``where`` names the split."""
    by_stem: dict[str, list[str]] = {}
    for record in records:
        by_stem.setdefault(record.image_id, []).append(record.image_path)
    problems = []
    for stem, paths in by_stem.items():
        if len(set(paths)) == 1 and len(paths) > 1:
            problems.append(f"{where}: image {display_path(paths[0])} is listed {len(paths)} times; list it once")
        elif len(paths) > 1:
            problems.append(f"{where}: {len(paths)} images are named {display_path(stem)!r} (the evaluation keys "
                            f"images by name): {', '.join(map(display_path, dict.fromkeys(paths)))}; rename all "
                            f"but one")
    return problems
