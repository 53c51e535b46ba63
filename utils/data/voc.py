"""Pascal VOC files: the XML reader shared by voc_annotation.py and get_map.py, and the annotation-line format.

Annotation line: ``<image path> x1,y1,x2,y2,class_id x1,y1,x2,y2,class_id ...``. Boxes are xyxy in
original-image pixels of the upright image (EXIF orientation applied, as utils/data/images.py reads it). The path is
written as is (it may hold spaces or '#'); the parser takes box tokens from the end of the line, so everything before
them is the path. An annotation file starts with ``# classes: ["name0", "name1", ...]``, the class names its ids
refer to; lines starting with '#' are not image lines (voc_annotation.py writes absolute paths, which never do).
"""
from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.core.config import UserError
from utils.core.textfile import read_text_lines
from utils.data.boxcheck import DROP_REASONS, KEPT, box_verdicts
from utils.data.images import image_info

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")  # preference order when one stem has several images

_NUM = r"-?\d+(?:\.\d*)?"
_BOX_TOKEN = rf"{_NUM},{_NUM},{_NUM},{_NUM},\d+"
# Lazy path + greedy run of box tokens anchored at the end: the path keeps its own spaces.
_LINE_RE = re.compile(rf"^(?P<path>.+?)(?P<boxes>(?:\s+{_BOX_TOKEN})*)\s*$")
# Words of digits, dots, signs and commas at the end of a path: a malformed box rather than part of a file name.
_TAIL_RE = re.compile(r"^(?P<path>\S.*?)(?P<tail>(?:\s+[-+.,\d]*\d[-+.,\d]*)+)\s*$")
CLASSES_HEADER = "# classes: "


def load_voc_objects(xml_path: str | os.PathLike) -> list[dict]:
    """All objects of one VOC XML, unfiltered: dicts with name, xmin, ymin, xmax, ymax (float, image pixels)
    and difficult (bool).

    Raises ValueError naming the file when the XML is malformed or an object lacks a name or a numeric box.
    """
    return _parse_voc_xml(xml_path)[2]


def _parse_voc_xml(xml_path: str | os.PathLike) -> tuple[str | None, tuple[int, int] | None, list[dict]]:
    """(filename from <filename>, (width, height) from <size> or None when missing/zero, objects)."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise ValueError(f"{xml_path}: malformed XML ({exc})") from exc
    filename = (root.findtext("filename") or "").strip() or None
    size = None
    size_node = root.find("size")
    if size_node is not None:
        try:
            width = int(float(size_node.findtext("width") or 0))
            height = int(float(size_node.findtext("height") or 0))
        except ValueError as exc:
            raise ValueError(f"{xml_path}: <size> is not numeric ({exc})") from exc
        if width > 0 and height > 0:
            size = (width, height)
    objects = []
    for obj_number, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        box_node = obj.find("bndbox")
        if not name or box_node is None:
            raise ValueError(f"{xml_path}: object #{obj_number} has no <name> or no <bndbox>")
        try:
            coords = {key: float(box_node.findtext(key)) for key in ("xmin", "ymin", "xmax", "ymax")}
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{xml_path}: object #{obj_number} ('{name}') has a missing or non-numeric coordinate"
                             ) from exc
        difficult_text = (obj.findtext("difficult") or "0").strip().lower()
        objects.append({"name": name, **coords, "difficult": difficult_text in ("1", "true")})
    return filename, size, objects


@dataclass
class VocRecord:
    """One XML turned into training boxes.

    boxes_xyxy_cls: (n, 5) float64 [x1, y1, x2, y2, class_id], original-image pixels, clipped to the image.
    counts: unknown_class, difficult_excluded, clipped, dropped_degenerate (zero/negative area in the XML),
    dropped_outside (no area left inside the image).
    """
    filename: str | None
    image_size: tuple[int, int] | None
    boxes_xyxy_cls: np.ndarray
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    object_names: list[str] = field(default_factory=list)  # every <name> in the XML, listed classes or not
    # (class id, reason of utils/data/boxcheck.py DROP_REASONS) of every object of a listed class left out
    dropped: list[tuple[int, str]] = field(default_factory=list)
    difficult: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (n,) of boxes_xyxy_cls' rows


def read_voc_xml(*, xml_path: str | os.PathLike, class_names: list[str], include_difficult: bool,
                 image_path: str | os.PathLike | None = None) -> VocRecord:
    """Read one VOC XML for training: map names to class ids, drop difficult objects (unless asked),
    clip boxes to the image (size from <size>, or from the image file when <size> is missing or zero)
    and drop boxes that are inverted, of zero area or outside the image (utils/data/boxcheck.py). Every change is
    reported in ``warnings`` naming the file, and each dropped object of a listed class in ``dropped``.

    Raises ValueError naming the file for malformed XML.
    """
    filename, size, objects = _parse_voc_xml(xml_path)
    warnings: list[str] = []
    if size is None and image_path is not None:
        try:
            size = image_info(image_path).upright_size
        except UserError as exc:
            warnings.append(f"{xml_path}: no <size>, and none from the image: {exc}")
    counts = {"unknown_class": 0, "difficult_excluded": 0, "clipped": 0, "dropped_degenerate": 0, "dropped_outside": 0}
    class_ids = {name: idx for idx, name in enumerate(class_names)}
    names = [obj["name"] for obj in objects]
    unknown = sorted({name for name in names if name not in class_ids})
    if unknown:
        counts["unknown_class"] = sum(name not in class_ids for name in names)
        warnings.append(f"{xml_path}: skipped {counts['unknown_class']} object(s) of unknown class {unknown}"
                        f" (not in the classes file)")
    known = np.array([name in class_ids for name in names], dtype=bool)
    difficult = np.array([obj["difficult"] for obj in objects], dtype=bool)
    keep = known if include_difficult else known & ~difficult
    counts["difficult_excluded"] = int((known & difficult).sum()) if not include_difficult else 0
    all_boxes = np.array([[obj["xmin"], obj["ymin"], obj["xmax"], obj["ymax"], class_ids.get(obj["name"], -1)]
                          for obj in objects], dtype=np.float64).reshape(-1, 5)
    dropped = [(int(box[4]), "difficult") for box in all_boxes[known & ~keep]]
    boxes_xyxy_cls, kept_difficult = all_boxes[keep], difficult[keep]

    shape = box_verdicts(boxes_xyxy_cls, image_size=None)  # inverted or zero area, before any clipping
    degenerate = shape != KEPT
    warnings += [f"{xml_path}: dropped box {_fmt_box(box)}: {DROP_REASONS[reason]}"
                 for box, reason in zip(boxes_xyxy_cls[degenerate], shape[degenerate])]
    dropped += [(int(box[4]), reason) for box, reason in zip(boxes_xyxy_cls[degenerate], shape[degenerate])]
    counts["dropped_degenerate"] = int(degenerate.sum())
    boxes_xyxy_cls, kept_difficult = boxes_xyxy_cls[~degenerate], kept_difficult[~degenerate]

    if size is None:
        warnings.append(f"{xml_path}: image size unknown (no <size> and no image), boxes not clipped")
    else:
        width, height = size
        clipped_xyxy = boxes_xyxy_cls[:, :4].copy()
        clipped_xyxy[:, [0, 2]] = clipped_xyxy[:, [0, 2]].clip(0, width)
        clipped_xyxy[:, [1, 3]] = clipped_xyxy[:, [1, 3]].clip(0, height)
        changed = (clipped_xyxy != boxes_xyxy_cls[:, :4]).any(axis=1)
        empty = (clipped_xyxy[:, 2] <= clipped_xyxy[:, 0]) | (clipped_xyxy[:, 3] <= clipped_xyxy[:, 1])
        warnings += [f"{xml_path}: box {_fmt_box(box)} outside the {width}x{height} image, "
                     + ("dropped" if gone else f"clipped to {_fmt_box(new)}")
                     for box, new, gone in zip(boxes_xyxy_cls[changed], clipped_xyxy[changed], empty[changed])]
        counts["clipped"] = int((changed & ~empty).sum())
        counts["dropped_outside"] = int(empty.sum())
        dropped += [(int(class_id), "outside") for class_id in boxes_xyxy_cls[empty, 4]]
        boxes_xyxy_cls = np.concatenate([clipped_xyxy, boxes_xyxy_cls[:, 4:]], axis=1)[~empty]
        kept_difficult = kept_difficult[~empty]
    return VocRecord(filename=filename, image_size=size, boxes_xyxy_cls=boxes_xyxy_cls, warnings=warnings,
                     counts=counts, object_names=names, dropped=dropped, difficult=kept_difficult)


def _fmt_box(box) -> str:
    return "(" + ", ".join(_fmt_num(v) for v in box[:4]) + ")"


def _fmt_num(value: float) -> str:
    """Integers stay integers; other values keep one decimal."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def index_images(image_dir: str | os.PathLike) -> dict[str, Path]:
    """Map each image stem in a folder to its file, matching the extension case-insensitively.

    When one stem has several images, the first extension of IMAGE_EXTENSIONS wins.
    """
    rank = {ext: idx for idx, ext in enumerate(IMAGE_EXTENSIONS)}
    found: dict[str, Path] = {}
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        return found
    for path in sorted(image_dir.iterdir()):
        ext = path.suffix.lower()
        if ext in rank and path.is_file():
            best = found.get(path.stem)
            if best is None or rank[ext] < rank[best.suffix.lower()]:
                found[path.stem] = path
    return found


def format_annotation_line(*, image_path: str, boxes_xyxy_cls: np.ndarray) -> str:
    """One annotation line (no newline). boxes_xyxy_cls: (n, 5) [x1, y1, x2, y2, class_id], image pixels."""
    tokens = [image_path]
    tokens += [",".join([_fmt_num(v) for v in box[:4]] + [str(int(box[4]))]) for box in boxes_xyxy_cls]
    return " ".join(tokens)


def split_annotation_line(line: str) -> tuple[str, list[str]]:
    """(image path, box tokens as written) of an annotation line; see parse_annotation_line."""
    match = _LINE_RE.match(line.rstrip("\r\n"))
    if match is None or not match.group("path").strip():
        raise ValueError(f"annotation line has no image path: {line!r}")
    return match.group("path"), match.group("boxes").split()


def parse_annotation_line(line: str) -> tuple[str, np.ndarray]:
    """Split an annotation line into (image path, boxes (n, 5) float32 [x1, y1, x2, y2, class_id] in image pixels).

    Box tokens (``num,num,num,num,int``) are taken from the end of the line; everything before them is the
    path, with its spaces kept. Raises ValueError for an empty line.
    """
    path, box_tokens = split_annotation_line(line)
    boxes_xyxy_cls = np.array([token.split(",") for token in box_tokens], dtype=np.float32).reshape(-1, 5)
    return path, boxes_xyxy_cls


def box_like_tail(path_text: str) -> tuple[str, list[str]] | None:
    """What parse_annotation_line took for a path may end in words of numbers and commas ("img.jpg 10,20,30,0"): a
    box that is not ``x1,y1,x2,y2,class_id`` is no box token, so it stays in the path. Returns (the path before
    those words, the words) or None. Callers decide by the files on disk which one the user meant."""
    match = _TAIL_RE.match(path_text)
    return None if match is None else (match.group("path"), match.group("tail").split())


def describe_bad_box(token: str) -> str:
    """Why a word of numbers is not a box token: 'has 4 numbers', 'has class id '0.5', not a whole number ...';
    '' for a box token."""
    if re.fullmatch(_BOX_TOKEN, token):
        return ""
    values = token.split(",")
    if len(values) != 5:
        return f"has {len([v for v in values if v])} numbers"
    if not all(re.fullmatch(_NUM, value) for value in values[:4]):
        return "has coordinates that are not plain numbers (12 or 12.5)"
    return f"has class id {values[4]!r}, not a whole number of 0 or more"


def format_classes_header(class_names: list[str]) -> str:
    """The first line of an annotation file: the class names its ids refer to, as a JSON list (names may hold
    commas or spaces)."""
    return CLASSES_HEADER + json.dumps(list(class_names), ensure_ascii=False)


@dataclass
class AnnotationFile:
    """An annotation file as read: its image lines with their 1-based line numbers in the file, and the class
    names of its header (None for a file written before headers existed)."""
    path: str
    lines: list[str]
    line_numbers: list[int]
    class_names: list[str] | None


def read_annotation_file(path: str | os.PathLike, *, allow_empty: bool = False) -> AnnotationFile:
    """The one reader of annotation files (train.py, the comparison tool, the dataset checks).

    Blank lines and lines starting with '#' are skipped; the ``# classes:`` header gives ``class_names``. A
    byte-order mark and CRLF line ends are removed with a note (utils/core/textfile.py). Raises
    FileNotFoundError for a missing file and UserError for a malformed header, (unless allow_empty) a file
    without image lines, or one that is not UTF-8; each names the file and the fix.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"annotation file {path}: not found; run `python voc_annotation.py` first")
    lines, line_numbers, class_names = [], [], None
    for number, line in enumerate(read_text_lines(path, what="annotation file", names_files=True), start=1):
        if line.startswith(CLASSES_HEADER.rstrip()):
            try:
                class_names = json.loads(line[len(CLASSES_HEADER.rstrip()):])
            except json.JSONDecodeError as exc:
                raise UserError(f"annotation file {path} line {number}: the classes header is not a JSON list "
                                f"({exc}); re-run voc_annotation.py") from exc
            if not isinstance(class_names, list) or not all(isinstance(n, str) for n in class_names):
                raise UserError(f"annotation file {path} line {number}: the classes header is not a list of "
                                f"names; re-run voc_annotation.py")
        elif line.strip() and not line.startswith("#"):
            lines.append(line)
            line_numbers.append(number)
    if not lines and not allow_empty:
        raise UserError(f"annotation file {path}: holds no images; re-run voc_annotation.py (on a small dataset "
                        f"lower train_percent so the val split gets images) or point the setting at another file")
    return AnnotationFile(path=str(path), lines=lines, line_numbers=line_numbers, class_names=class_names)


def read_annotation_lines(path: str | os.PathLike) -> list[str]:
    """The image lines of an annotation file (header left out)."""
    return read_annotation_file(path).lines


def line_image_path(line: str) -> str:
    """The image path an annotation line starts with."""
    return parse_annotation_line(line)[0]


def shared_images(*, lines: list[str], others: list[str]) -> list[str]:
    """The images of ``lines`` that ``others`` list too, each once, in ``lines``' order: the same file however its
    path is written (resolved, symlinks followed)."""
    other_files = {os.path.realpath(line_image_path(line)) for line in others}
    files = dict.fromkeys(os.path.realpath(line_image_path(line)) for line in lines)
    return [file for file in files if file in other_files]

