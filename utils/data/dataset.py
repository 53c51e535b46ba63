"""One dataset layer for every tool: a PASCAL VOC devkit, a YOLO-txt dataset or a COCO-json dataset, read into the
same records.

    dataset = load_dataset("datasets/shapes_yolo")             # format detected; or dataset_format="coco"
    dataset.class_names                                        # from data.yaml / COCO categories / classes file
    dataset.annotation_file("train")                           # in memory, what train.py reads from 2007_train.txt
    dataset.records("test")                                    # ImageRecord per image of the split

Every reader checks all its inputs before returning (images decoded, boxes checked by utils/data/boxcheck.py, class
names against a classes file when one is given) and raises one UserError listing every problem; what it keeps and
drops is reported per split and class. Boxes are ``xyxy`` in pixels of the upright image (EXIF orientation applied,
as utils/data/images.py reads it), whatever the format stores.
"""
from __future__ import annotations

import os
from pathlib import Path

from utils.core.config import UserError
from utils.data import coco_json, voc_dataset, yolo_txt
from utils.data.records import FORMATS, Dataset, DatasetFormat, ImageRecord  # noqa: F401  (the layer's types)


def detect_format(path: str | os.PathLike) -> str:
    """'voc', 'yolo' or 'coco' from what ``path`` holds; UserError saying what each format needs when none fits.

    voc: VOC<year>/Annotations or a folder with Annotations/ and JPEGImages/; yolo: a data.yaml (or the yaml file
    itself), or images/ beside labels/; coco: an annotations/ folder with instances*.json (or a json file itself).
    """
    root = Path(path)
    if not root.exists():
        raise UserError(f"dataset {path}: no such file or folder")
    found = [name for name, module in (("voc", voc_dataset), ("yolo", yolo_txt), ("coco", coco_json))
             if module.looks_like(root)]
    if len(found) == 1:
        return found[0]
    if found:
        raise UserError(f"dataset {path}: looks like {' and '.join(found)}; pass --dataset_format= one of them")
    raise UserError(f"dataset {path}: not a dataset this project reads. VOC: VOC<year>/Annotations/*.xml and "
                    f"JPEGImages/; YOLO txt: data.yaml (names, train/val/test) or images/<split>/ beside "
                    f"labels/<split>/ and a classes.txt; COCO json: annotations/instances_<split>*.json beside the "
                    f"images. Or pass --dataset_format=voc|yolo|coco")


def load_dataset(path: str | os.PathLike, *, dataset_format: str = "auto", classes_path: str | None = None,
                 log=print) -> Dataset:
    """The dataset at ``path`` read, checked and reported (see the module docstring).

    classes_path: a classes file; when the dataset names its classes (data.yaml, COCO categories) the two must agree
    (same names, same order), else the file gives the names (VOC). Raises UserError listing every problem found.
    """
    fmt = detect_format(path) if dataset_format == "auto" else dataset_format
    readers = {"voc": voc_dataset.read_voc_dataset, "yolo": yolo_txt.read_yolo_dataset,
               "coco": coco_json.read_coco_dataset}
    if fmt not in readers:
        raise UserError(f"dataset_format={fmt!r}: one of auto, {', '.join(FORMATS)}")
    return readers[fmt](Path(path), classes_path=classes_path, log=log)
