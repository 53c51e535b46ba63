"""Small readers for model_data files and the defaults tied to each model variant."""
from dataclasses import dataclass
from pathlib import Path

from utils.core.config import UserError
from utils.core.textfile import read_text_lines

MODEL_DATA = Path(__file__).resolve().parents[2] / "model_data"
DEFAULT_ANCHORS_PATH = {"yolov4": MODEL_DATA / "yolo_anchors.txt", "yolov4-tiny": MODEL_DATA / "yolo_tiny_anchors.txt"}
DEFAULT_ANCHORS_MASK = {"yolov4": [[6, 7, 8], [3, 4, 5], [0, 1, 2]], "yolov4-tiny": [[3, 4, 5], [1, 2, 3]]}


@dataclass(frozen=True)
class ModelSpec:
    """What a training run resolves from its settings' paths; stored in every checkpoint beside them."""
    class_names: list[str]
    anchors: list[list[float]]  # (w, h) in input pixels
    anchors_mask: list[list[int]]  # anchor indices per level, coarsest first
    anchors_path: str


def get_classes(classes_path: str, *, log=print) -> list[str]:
    """Class names, one per line, in class-id order; surrounding spaces, a byte-order mark and CRLF line ends are
    removed (utils/core/textfile.py), blank lines after the last name ignored. A blank line between names (it would
    be a class without a name) and a name listed twice are UserErrors naming the file and the lines."""
    lines = [line.strip() for line in read_text_lines(classes_path, what="classes file", log=log)]
    numbered = [(number, name) for number, name in enumerate(lines, start=1) if name]
    if not numbered:
        raise UserError(f"classes file {classes_path}: holds no class names; write one name a line")
    problems = [f"line {number} is empty: a class needs a name; delete the line (the class ids follow the lines)"
                for number, name in enumerate(lines[:numbered[-1][0]], start=1) if not name]
    first_line: dict[str, int] = {}
    for number, name in numbered:
        if name in first_line:
            problems.append(f"line {number}: {name!r} is listed on line {first_line[name]} already; a name is one "
                            f"class, list it once")
        first_line.setdefault(name, number)
    if len(problems) == 1:
        raise UserError(f"classes file {classes_path} {problems[0]}")
    if problems:
        raise UserError(f"classes file {classes_path}: {len(problems)} problems:\n" + "\n".join(problems))
    return [name for _, name in numbered]


def get_anchors(anchors_path: str, *, log=print) -> list[list[float]]:
    """Anchors (w, h) in input pixels from a file of comma-separated numbers: ``w1,h1, w2,h2, ...`` (any lines)."""
    text = ",".join(read_text_lines(anchors_path, what="anchors file", log=log))
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise UserError(f"anchors file {anchors_path}: not a list of numbers ({err})") from err
    if not values or len(values) % 2:
        raise UserError(f"anchors file {anchors_path}: needs an even, non-zero count of numbers, has {len(values)}")
    return [values[i:i + 2] for i in range(0, len(values), 2)]


def anchor_settings(*, model: str, anchors_path: str | None,
                    anchors_mask: list[list[int]] | None) -> tuple[str, list[list[int]]]:
    """(anchors_path, anchors_mask) of training settings, the model variant's defaults where unset; an anchors_path
    of "auto" (k-means at the start of training) stays, making ``auto_anchor_count`` anchors."""
    return anchors_path or str(DEFAULT_ANCHORS_PATH[model]), anchors_mask or DEFAULT_ANCHORS_MASK[model]


def auto_anchor_count(anchors_mask: list[list[int]]) -> int:
    """How many k-means anchors "auto" makes: one per anchor index the mask uses."""
    return 1 + max((a for level in anchors_mask for a in level), default=-1)


def check_anchors_mask(anchors_mask: list[list[int]], *, num_anchors: int, num_levels: int, source: str) -> None:
    if len(anchors_mask) != num_levels:
        raise UserError(f"{source}: anchors_mask has {len(anchors_mask)} levels, the model has {num_levels}")
    if len({len(m) for m in anchors_mask}) != 1:
        raise UserError(f"{source}: every level of anchors_mask needs the same number of anchors")
    bad = [a for m in anchors_mask for a in m if not 0 <= a < num_anchors]
    if bad:
        raise UserError(f"{source}: anchors_mask refers to anchors {bad}, but only {num_anchors} anchors exist")
