"""Every line of an annotation file checked before training: the image opens (header), the words after the path
are boxes, and each box can be trained on (utils/data/boxcheck.py). What the loader then receives is exactly what
the report counts: lines of unusable boxes lose those boxes (the other lines stay as written, byte for byte).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from utils.core.config import UserError
from utils.core.textfile import display_path
from utils.data.boxcheck import BOX_FORMAT_FIX, KEPT, BoxTally, box_verdicts
from utils.data.images import image_info
from utils.data.voc import AnnotationFile, box_like_tail, describe_bad_box, split_annotation_line


@dataclass
class LineScan:
    """One annotation line as checked: its boxes (as written), their class ids and verdicts, and the problem of
    its image (None when the header reads)."""
    number: int
    line: str
    image_path: str
    box_tokens: list[str]
    class_ids: np.ndarray
    verdicts: np.ndarray
    clipped: int = 0  # boxes kept that extend past the image edge (the loader clips them)
    image_problem: str | None = None

    def kept_line(self) -> str:
        """The line without its dropped boxes; the line as written when none is dropped."""
        keep = self.verdicts == KEPT
        if keep.all():
            return self.line
        return self.image_path + "".join(f" {t}" for t, k in zip(self.box_tokens, keep) if k)


@dataclass
class FileScan:
    annotation: AnnotationFile
    lines: list[LineScan] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)  # problems no setting skips: the line is not understood

    def unreadable(self) -> dict[str, str]:
        """{image path: problem} of the images that do not open, the first line naming each."""
        found: dict[str, str] = {}
        for scan in self.lines:
            if scan.image_problem is not None:
                found.setdefault(scan.image_path, scan.image_problem)
        return found

    def tally(self, class_names: list[str], *, skip_unreadable: bool) -> tuple[BoxTally, AnnotationFile]:
        """The per-class account and the file as training gets it. Unreadable images are left out when
        ``skip_unreadable`` (their boxes are counted as dropped for it), otherwise kept (the caller stops)."""
        tally = BoxTally(class_names)
        kept_lines, kept_numbers = [], []
        for scan in self.lines:
            verdicts = scan.verdicts
            if scan.image_problem is not None and skip_unreadable:
                verdicts = np.full(len(verdicts), "unreadable_image", dtype=object)
            tally.add_image(scan.class_ids, verdicts, where=f"line {scan.number}", box_texts=scan.box_tokens)
            if scan.image_problem is None or not skip_unreadable:
                kept_lines.append(scan.kept_line())
                kept_numbers.append(scan.number)
        return tally, AnnotationFile(path=self.annotation.path, lines=kept_lines, line_numbers=kept_numbers,
                                     class_names=self.annotation.class_names)

    @property
    def clipped(self) -> int:
        return sum(scan.clipped for scan in self.lines)


def scan_annotation_file(annotation: AnnotationFile) -> FileScan:
    """Check every line: image header, box words, box verdicts in the upright image frame. Reads headers only."""
    result = FileScan(annotation=annotation)
    sizes: dict[str, tuple[int, int] | str] = {}  # image path -> upright (w, h), or its problem
    for line, number in zip(annotation.lines, annotation.line_numbers):
        where = f"{annotation.path} line {number}"
        image_path, tokens = split_annotation_line(line)
        if not os.path.isfile(image_path):
            malformed = _malformed_boxes(image_path, where=where)
            if malformed:
                result.malformed.append(malformed)
                continue
        boxes = np.array([t.split(",") for t in tokens], dtype=np.float64).reshape(-1, 5)
        if image_path not in sizes:
            try:
                sizes[image_path] = image_info(image_path).upright_size
            except UserError as exc:
                sizes[image_path] = f"{where}: {exc}"
        size = sizes[image_path]
        readable = not isinstance(size, str)
        verdicts = box_verdicts(boxes, image_size=size if readable else None)
        clipped = 0
        if readable:
            past_edge = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > size[0]) | (boxes[:, 3] > size[1])
            clipped = int((past_edge & (verdicts == KEPT)).sum())
        result.lines.append(LineScan(number=number, line=line, image_path=image_path, box_tokens=tokens,
                                     class_ids=boxes[:, 4].astype(np.int64), verdicts=verdicts, clipped=clipped,
                                     image_problem=None if readable else size))
    return result


def _malformed_boxes(path_text: str, *, where: str) -> str | None:
    """The problem of a line whose image is missing because malformed boxes were taken into its path: the path
    before the words of numbers is a file. None when it is not (a missing image is reported as such)."""
    tail = box_like_tail(path_text)
    if tail is None or not os.path.isfile(tail[0]):
        return None
    image_path, words = tail
    bad = [f"{word!r} {describe_bad_box(word)}" for word in words if describe_bad_box(word)]
    return (f"{where}: malformed box after {display_path(image_path)}: {', '.join(bad)}; {BOX_FORMAT_FIX}, "
            f"boxes separated by spaces")
