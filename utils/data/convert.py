"""The converter: a dataset read by any reader (utils/data/dataset.py: load_dataset) written in any of the three
formats, by that format's writer:

    voc   utils/data/voc_dataset.py  write_voc_dataset    VOC<year>/{Annotations,JPEGImages,ImageSets/Main}
    yolo  utils/data/yolo_txt.py     write_yolo_dataset   data.yaml, images/<split>/, labels/<split>/
    coco  utils/data/coco_json.py    write_coco_dataset   images/<split>/, annotations/instances_<split>.json

Every writer takes ``(dataset, out, *, link_images)``, refuses an existing non-empty ``out`` and writes whole or not
at all (utils/data/new_folder.py). Read back, the written dataset gives the same boxes (within 0.5 px: coordinates are
rounded to 2 decimals, or normalised with 6) and the same class names.
"""
from __future__ import annotations

import os
from pathlib import Path

from utils.core.config import UserError
from utils.data.records import FORMATS, Dataset


def convert_dataset(*, source: Dataset, to: str, out: str | os.PathLike, link_images: bool) -> Path:
    """Writes ``source`` as a ``to`` ('voc', 'yolo' or 'coco') dataset into the new folder ``out``; returns it.
    link_images: hard-link the images (symlink across file systems) instead of copying them."""
    from utils.data import coco_json, voc_dataset, yolo_txt

    writers = {"voc": voc_dataset.write_voc_dataset, "yolo": yolo_txt.write_yolo_dataset,
               "coco": coco_json.write_coco_dataset}
    if to not in writers:
        raise UserError(f"to={to!r}: one of {', '.join(FORMATS)}")
    return Path(writers[to](source, Path(out), link_images=link_images))


def summary_lines(dataset: Dataset) -> list[str]:
    """Per split: images, background images, boxes (of them difficult / crowd)."""
    lines = []
    for split, records in dataset.splits.items():
        boxes = sum(len(record.class_ids) for record in records)
        difficult = sum(int(record.difficult.sum()) for record in records)
        background = sum(not len(record.class_ids) for record in records)
        lines.append(f"  {split}: {len(records)} images ({background} background), {boxes} boxes"
                     + (f" ({difficult} difficult or crowd)" if difficult else ""))
    return lines
