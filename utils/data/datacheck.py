"""Dataset checks run before any work: images that open and agree with their XML, annotation files that agree
with the classes file, image paths that exist.

Orientation rule: every tool reads images through utils/data/images.py, which shows them upright, with their EXIF
orientation applied, and annotation lines hold boxes in that upright frame. An XML whose <size> is the raw (stored,
un-rotated) frame of an image with orientation 5-8 was drawn on the raw pixels, so voc_annotation.py rotates its
boxes into the upright frame. Orientations 2-4 (flips, 180 degrees) and square images keep the size, so the frame
cannot be told from it: the boxes are taken as drawn on the upright image, the one every viewer shows. Values outside
1-8 (0, 65537, ...) are ignored by the reader and here alike.
"""
from __future__ import annotations

import os

import numpy as np

from utils.core.config import UserError
from utils.data.boxcheck import BOX_FORMAT_FIX, BoxTally
from utils.data.images import ImageInfo
from utils.data.linecheck import scan_annotation_file
from utils.data.voc import AnnotationFile, parse_annotation_line


def raw_to_upright_xyxy(boxes_xyxy_cls: np.ndarray, *, orientation: int, raw_size: tuple[int, int]) -> np.ndarray:
    """Boxes (n, 5) [x1, y1, x2, y2, class_id] drawn on the raw pixels -> the same boxes on the image after PIL's
    ImageOps.exif_transpose (what the loader shows). raw_size: (width, height) of the stored image."""
    w, h = raw_size
    x1, y1, x2, y2 = (boxes_xyxy_cls[:, i] for i in range(4))
    # Corner (x, y) of the raw frame -> (x', y') of the upright frame, per orientation (exif_transpose's methods).
    maps = {2: lambda x, y: (w - x, y), 3: lambda x, y: (w - x, h - y), 4: lambda x, y: (x, h - y),
            5: lambda x, y: (y, x), 6: lambda x, y: (h - y, x), 7: lambda x, y: (h - y, w - x),
            8: lambda x, y: (y, w - x)}
    if orientation not in maps:
        return boxes_xyxy_cls.copy()
    xa, ya = maps[orientation](x1, y1)
    xb, yb = maps[orientation](x2, y2)
    out = boxes_xyxy_cls.copy()
    out[:, 0], out[:, 2] = np.minimum(xa, xb), np.maximum(xa, xb)
    out[:, 1], out[:, 3] = np.minimum(ya, yb), np.maximum(ya, yb)
    return out


def align_boxes_with_image(boxes_xyxy_cls: np.ndarray, *, xml_size: tuple[int, int] | None, info: ImageInfo,
                           xml_path: str | os.PathLike) -> tuple[np.ndarray, list[str], bool, np.ndarray]:
    """Boxes of one XML in the upright frame the loader shows, clipped to the image; (boxes, notes, rotated, keep:
    (n,) bool over the boxes given, False for those dropped for lying outside the image).

    See the module docstring for the rule. A <size> matching neither frame is reported and the boxes kept as
    written (clipped to the image)."""
    notes, rotated = [], False
    if info.turns and xml_size == info.raw_size and info.raw_size != info.upright_size:
        boxes_xyxy_cls = raw_to_upright_xyxy(boxes_xyxy_cls, orientation=info.orientation, raw_size=info.raw_size)
        rotated = True
        notes.append(f"{xml_path}: <size> {_size(xml_size)} is the raw frame of an image with EXIF orientation "
                     f"{info.orientation}; boxes rotated to the upright {_size(info.upright_size)} frame the loader "
                     f"uses")
    elif xml_size is not None and xml_size != info.upright_size:
        notes.append(f"{xml_path}: <size> says {_size(xml_size)} but the image is {_size(info.upright_size)}"
                     f" (upright); boxes kept as written and clipped to the image")
    width, height = info.upright_size
    clipped = boxes_xyxy_cls.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    if not keep.all():
        notes.append(f"{xml_path}: {int((~keep).sum())} box(es) outside the {_size(info.upright_size)} image dropped")
    return clipped[keep], notes, rotated, keep


def _size(size: tuple[int, int] | None) -> str:
    return "none" if size is None else f"{size[0]}x{size[1]}"


def check_classes(annotation: AnnotationFile, *, class_names: list[str], classes_path: str) -> list[str]:
    """Problems between an annotation file and the classes file: other names in the header, or class ids the
    classes file has no name for (file, line, id). Empty when they agree."""
    problems = []
    if annotation.class_names is not None and annotation.class_names != list(class_names):
        problems.append(f"{annotation.path} was made with the classes {annotation.class_names}, but classes_path "
                        f"{classes_path} lists {list(class_names)}; pass the classes file it was made with, or "
                        f"re-run `python voc_annotation.py --classes_path={classes_path}`")
    for line, number in zip(annotation.lines, annotation.line_numbers):
        _, boxes_xyxy_cls = parse_annotation_line(line)
        bad = sorted({int(c) for c in boxes_xyxy_cls[:, 4] if not 0 <= int(c) < len(class_names)})
        if bad:
            problems.append(f"{annotation.path} line {number}: class id {', '.join(map(str, bad))} but {classes_path}"
                            f" lists {len(class_names)} classes (ids 0-{len(class_names) - 1}); use the classes "
                            f"file the annotations were made with")
    return problems


def check_annotation_files(annotations: list[AnnotationFile], *, class_names: list[str], classes_path: str,
                           on_corrupt: str, log=print) -> list[AnnotationFile]:
    """train.py's start-up check of its annotation files, the training file first; returns them as training gets
    them: without unreadable images when on_corrupt="skip", without boxes that cannot be trained on (inverted, zero
    area, outside the image; utils/data/boxcheck.py). Prints per file the images, background images and per class
    the boxes kept and dropped and why. Stops, with every problem found in one UserError, on malformed boxes,
    unreadable images (unless skipped), a class without a box in the training file and a file whose boxes were all
    dropped. A validation file without boxes or without some class is a note."""
    problems: list[str] = []
    unheaded = [a.path for a in annotations if a.class_names is None]
    if unheaded:
        log(f"note: {', '.join(unheaded)} have no '# classes:' header (made by an older voc_annotation.py), so "
            f"their class names cannot be checked against {classes_path}; re-run voc_annotation.py to add it")
    for annotation in annotations:
        problems += check_classes(annotation, class_names=class_names, classes_path=classes_path)
    scans = [scan_annotation_file(annotation) for annotation in annotations]
    any_unreadable = any(scan.unreadable() for scan in scans)
    fix = ("; fix them or set --on_corrupt=skip to leave unreadable images out"
           if any_unreadable and on_corrupt == "error" else "")
    checked = []
    for index, scan in enumerate(scans):
        problems += scan.malformed
        unreadable = scan.unreadable()
        if unreadable and on_corrupt == "skip":
            for message in unreadable.values():
                log(f"warning: {message}; skipped (on_corrupt=skip)")
        else:
            problems += list(unreadable.values())
        tally, annotation = scan.tally(class_names, skip_unreadable=on_corrupt == "skip")
        if not annotation.lines and scan.lines:
            problems.append(f"{annotation.path}: no readable image left")
        for line in report_lines(tally, path=annotation.path, clipped=scan.clipped):
            log(line)
        problems += box_problems(tally, path=annotation.path, training=index == 0, classes_path=classes_path,
                                 log=log)
        checked.append(annotation)
    problems = list(dict.fromkeys(problems))  # one file given twice (train and val) says each problem once
    if len(problems) == 1:
        raise UserError(problems[0] + fix)
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise UserError(f"{len(problems)} problem(s) in the annotation files{fix}:\n" + "\n".join(shown))
    return checked


def report_lines(tally: BoxTally, *, path: str, clipped: int) -> list[str]:
    """What training starts on, per file: images, background images, per class kept / dropped and why."""
    emptied = f"; {tally.emptied} of them had boxes, all dropped" if tally.emptied else ""
    lines = [f"{path}: {tally.images} images, {tally.background} background (no boxes{emptied}); boxes per class:"]
    lines += [f"  {line}" for line in tally.class_lines()]
    if tally.total_dropped:
        lines.append(f"warning: {path}: {tally.total_dropped} boxes dropped ({tally.why_dropped()}), "
                     f"{tally.example_text()}; {BOX_FORMAT_FIX}")
    if clipped:
        lines.append(f"note: {path}: {clipped} boxes extend past the image edge; the loader clips them to the image")
    return lines


def box_problems(tally: BoxTally, *, path: str, training: bool, classes_path: str, log=print) -> list[str]:
    """A file whose boxes were all dropped, a training file without boxes, a class without a box in the training
    file: problems. A validation file or class without boxes: a note through ``log``."""
    use = "train on" if training else "validate on"
    if tally.total_dropped and not tally.total_kept:
        return [(f"{path}: all {tally.total_dropped} boxes were dropped, none is left to {use}: "
                 f"{tally.why_dropped()}; {tally.example_text()}; {BOX_FORMAT_FIX}")]
    if not tally.total_kept:
        if training:
            return [(f"{path}: holds no boxes ({tally.images} background images), nothing to train on; write "
                     f"the boxes of the classes in {classes_path} (voc_annotation.py does from VOC XML files)")]
        log(f"note: {path}: holds no boxes ({tally.images} background images); its loss measures background only "
            f"and its mAP is undefined")
        return []
    problems = []
    for index in tally.empty_classes():
        name = tally.class_names[index]
        why = tally.why_dropped(index)
        had = f"all its boxes were dropped: {why}" if why else f"{classes_path} lists it, the file holds none"
        if training:
            problems.append(f"{path}: class {name!r} has no box to train on ({had}); fix its boxes, or train without "
                            f"it: remove it from {classes_path} and re-run voc_annotation.py")
        else:
            log(f"note: {path}: class {name!r} has no box to validate on ({had}); its AP is not measured")
    return problems
