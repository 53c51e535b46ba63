"""YOLO-txt datasets as ultralytics and darknet export them: the reader and the converter's writer.

One label file per image, found as ultralytics finds it: the image path with its last ``images`` folder replaced by
``labels`` and the extension by ``.txt``. A line is ``class cx cy w h``, normalised to 0-1 by the width and height
of the upright image (EXIF orientation applied), or a polygon ``class x1 y1 x2 y2 x3 y3 ...`` (segmentation
exports), read as its bounding box. A missing or empty label file makes a background image.

The splits come from a data.yaml (``path``: the root, relative to the yaml; ``train`` / ``val`` / ``test``: a
folder of images, a .txt list of image paths or a list of those; ``names``: a list or {id: name}; ``nc`` optional,
it must agree), or without one from ``images/<split>/`` beside ``labels/<split>/`` with the class names in a
classes.txt or obj.names at the root (or a classes file given).
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

from utils.core.config import UserError
from utils.core.model_files import get_classes
from utils.core.textfile import display_path, read_text_lines
from utils.data.boxcheck import BoxTally
from utils.data.images import image_info
from utils.data.new_folder import place_image, staged_folder
from utils.data.records import Dataset, check_class_names, checked_record, finish_dataset, same_stem_problems

YAML_NAMES = ("data.yaml", "data.yml")
NAMES_FILES = ("classes.txt", "obj.names")  # the class names of a dataset without data.yaml, one a line
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
FOLDER_SPLITS = {"train": "train", "val": "val", "valid": "val", "test": "test"}  # images/<folder> -> split
BOX_FIX = ("a YOLO label line is 'class cx cy w h' normalised to 0-1 by the image's width and height (pixel values "
           "land outside the image)")


def looks_like(root: Path) -> bool:
    """A .yaml / .yml file, a folder holding data.yaml, or a folder with images/ beside labels/."""
    root = Path(root)
    if root.is_file():
        return root.suffix.lower() in (".yaml", ".yml")
    return any((root / name).is_file() for name in YAML_NAMES) or (
        (root / "images").is_dir() and (root / "labels").is_dir())


def label_path(image_path: Path) -> Path:
    """The label file of an image, as ultralytics finds it (no ``images`` folder: the .txt beside the image)."""
    parts = list(image_path.parts)
    folders = [i for i, part in enumerate(parts[:-1]) if part == "images"]
    if folders:
        parts[folders[-1]] = "labels"
    return Path(*parts).with_suffix(".txt")


def read_yolo_dataset(root: Path, *, classes_path: str | None, log=print) -> Dataset:
    """The YOLO-txt dataset at ``root`` (its folder or its data.yaml) as records; see the module docstring. Raises
    UserError listing every problem: a yaml that does not parse or lacks names, nc disagreeing with names, names
    disagreeing with ``classes_path``, a split that names nothing, unreadable images, file names that are not UTF-8,
    label lines that are not numbers, have a wrong count or a class id outside the names, two images of one name
    in a split, and a training split without boxes or a class without any."""
    root = Path(root)
    problems: list[str] = []
    yaml_path = root if root.is_file() else next((root / n for n in YAML_NAMES if (root / n).is_file()), None)
    if yaml_path is not None:
        class_names, split_sources = _from_yaml(yaml_path, classes_path=classes_path, problems=problems, log=log)
    else:
        class_names, split_sources = _from_folders(root, classes_path=classes_path, problems=problems, log=log)
    splits, tallies, notes = {}, {}, Counter()
    for split, sources in split_sources.items():
        images = [image for source in sources for image in _source_images(source, problems=problems, notes=notes)]
        tally = BoxTally(class_names)
        splits[split] = [record for image in images if (record := _read_image(
            image, class_names=class_names, tally=tally, problems=problems, notes=notes)) is not None]
        tallies[split] = tally
        for folder in (source for source in sources if source.is_dir()):
            expected = {label_path(image) for image in images}
            labels = label_path(folder / "x.jpg").parent
            notes["orphan_labels"] += sum(1 for path in labels.rglob("*.txt")
                                          if path not in expected and path.name not in NAMES_FILES)
    dataset = Dataset(root=str(root), format="yolo", class_names=class_names, splits=splits, tallies=tallies)
    problems += [p for split, records in splits.items() for p in same_stem_problems(
        records, where=dataset.split_name(split))]
    texts = {"no_label": "images without a label file (background)", "empty_label": "empty label files "
             "(background)", "polygon": "polygon lines read as their bounding boxes", "not_image": "files in the "
             "image folders that are not images (ignored)", "orphan_labels": "label files without an image (ignored)",
             "label_text": "label files with a byte-order mark or Windows / old Mac line ends (removed, read as plain "
             "line ends)"}
    met = "; ".join(f"{text}: {notes[key]}" for key, text in texts.items() if notes[key])
    if met and not problems:
        log(f"note: dataset {display_path(root)} (yolo): {met}")
    return finish_dataset(dataset, problems=problems, fix=BOX_FIX, log=log)


def _from_yaml(yaml_path: Path, *, classes_path: str | None, problems: list[str], log
               ) -> tuple[list[str], dict[str, list[Path]]]:
    """(class names, split -> its sources: folders, list files or images) of a data.yaml."""
    text = "\n".join(read_text_lines(yaml_path, what="data.yaml", log=log))
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark, context = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        since = f", {exc.context} opened on line {context.line + 1}" if context is not None and exc.context else ""
        raise UserError(f"{display_path(yaml_path)}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc}"
                        f"{since})") from exc
    if not isinstance(doc, dict):
        raise UserError(f"{display_path(yaml_path)}: not a YAML mapping (keys path, train, val, test, names)")
    base = yaml_path.parent
    if doc.get("path"):
        given = Path(str(doc["path"]))
        base = given if given.is_absolute() else yaml_path.parent / given
        if not base.is_dir():
            log(f"note: {display_path(yaml_path)}: path: {given} is no folder here; the splits are taken relative "
                f"to the yaml's folder")
            base = yaml_path.parent
    names = _yaml_names(doc, yaml_path=yaml_path, classes_path=classes_path, problems=problems)
    splits = {}
    for split in ("train", "val", "test"):
        entries = doc.get(split)
        entries = [entries] if isinstance(entries, str) else entries or []
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            problems.append(f"{display_path(yaml_path)}: {split}: {entries!r} is not a path or a list of paths")
            continue
        sources = []
        for entry in entries:
            source = base / entry
            if not source.exists() and entry.startswith("../") and (base / entry[3:]).exists():
                source = base / entry[3:]  # Roboflow's exports: '../train/images' beside the yaml, as ultralytics
            if source.exists():
                sources.append(source)
            else:
                problems.append(f"{display_path(yaml_path)}: {split}: {entry} -> {display_path(source)}: no such "
                                f"folder or list")
        if sources:
            splits[split] = sources
    if not splits and not problems:
        problems.append(f"{display_path(yaml_path)}: names no split (train:, val: or test: with a folder of images "
                        f"or a .txt list of image paths)")
    return names, splits


def _yaml_names(doc: dict, *, yaml_path: Path, classes_path: str | None, problems: list[str]) -> list[str]:
    """The class names of data.yaml (a list, or a dict of ids 0..N-1), checked against nc and ``classes_path``."""
    where = display_path(yaml_path)
    raw = doc.get("names")
    if raw is None:
        if classes_path is None:
            problems.append(f"{where}: no names: (the class names, a list in class-id order); add them, or pass a "
                            f"classes file")
            return []
        raw = get_classes(classes_path)
    if isinstance(raw, dict):
        try:
            by_id = {int(key): value for key, value in raw.items()}
        except (TypeError, ValueError):
            by_id = {}
        if sorted(by_id) != list(range(len(raw))):
            problems.append(f"{where}: names: the ids {list(raw)} are not 0..{len(raw) - 1}; the class ids of the "
                            f"labels index the names")
            return [str(value) for value in raw.values()]
        raw = [by_id[i] for i in range(len(raw))]
    if not isinstance(raw, list):
        problems.append(f"{where}: names: {raw!r} is not a list of names or a {{id: name}} mapping")
        return []
    names = []
    for index, value in enumerate(raw):
        if isinstance(value, bool) or value is None:
            problems.append(f"{where}: names: class {index} reads as {value!r} in YAML (yes/no/on/off/true/null "
                            f"are not text there); quote the name")
        names.append(str(value).strip())
    nc = doc.get("nc")
    if nc is not None and nc != len(names):
        problems.append(f"{where}: nc: {nc} but names lists {len(names)} classes; make them agree (or drop nc)")
    try:
        check_class_names(names, source=f"{where} names", classes_path=classes_path)
    except UserError as exc:
        problems.append(str(exc))
    return names


def _from_folders(root: Path, *, classes_path: str | None, problems: list[str], log
                  ) -> tuple[list[str], dict[str, list[Path]]]:
    """(class names, split -> [images/<split>/]) of a dataset without data.yaml."""
    images = root / "images"
    splits: dict[str, list[Path]] = {}
    for folder, split in FOLDER_SPLITS.items():
        if (images / folder).is_dir():
            splits.setdefault(split, []).append(images / folder)
    if not splits and images.is_dir():
        log(f"note: dataset {display_path(root)}: images/ has no train/, val/ or test/ folder; all its images are the "
            f"train split")
        splits["train"] = [images]
    names_file = next((root / name for name in NAMES_FILES if (root / name).is_file()), None)
    names: list[str] = []
    try:
        if names_file is not None:
            names = check_class_names(get_classes(names_file, log=log), source=display_path(names_file),
                                      classes_path=classes_path)
        elif classes_path is not None:
            names = get_classes(classes_path, log=log)
        else:
            problems.append(f"dataset {display_path(root)}: no class names: no data.yaml, and no "
                            f"{' or '.join(NAMES_FILES)} at its root; write one (one name a line, in class-id order) "
                            f"or pass a classes file")
    except UserError as exc:
        problems.append(str(exc))
    if not splits:
        problems.append(f"dataset {display_path(root)}: no images/<split>/ folder (train, val or test)")
    return names, splits


def _source_images(source: Path, *, problems: list[str], notes: Counter) -> list[Path]:
    """The images a split entry names: every image under a folder (sorted), the paths of a .txt list (relative
    ones to the list's folder), or the image itself."""
    if source.is_dir():
        images = []
        for folder, subfolders, files in os.walk(source):
            subfolders.sort()
            for name in sorted(files):
                path = Path(folder) / name
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    notes["not_image"] += 1
                elif display_path(path) != str(path):
                    problems.append(f"{display_path(folder)}: file name {display_path(name)} is not UTF-8, so no "
                                    f"UTF-8 annotation file can name it; rename it")
                else:
                    images.append(path)
        return images
    if source.suffix.lower() != ".txt":
        return [source]
    try:
        lines = read_text_lines(source, what="image list", names_files=True)
    except UserError as exc:
        problems.append(str(exc))
        return []
    images = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry:
            continue
        path = Path(os.path.normpath(source.parent / (entry[2:] if entry.startswith("./") else entry)))
        if path.is_file():
            images.append(path)
        else:
            problems.append(f"{display_path(source)} line {number}: image {entry} not found ({display_path(path)})")
    return images


def _read_image(image: Path, *, class_names: list[str], tally: BoxTally, problems: list[str], notes: Counter):
    """The record of one image and its label file, or None (the problem noted) when either cannot be read."""
    try:
        size = image_info(image, decode=True).upright_size
    except UserError as exc:
        problems.append(str(exc))
        return None
    label = label_path(image)
    lines = []
    if not label.is_file():
        notes["no_label"] += 1
    else:
        try:
            # One label file per image: their byte-order marks and CR line ends are counted in the dataset's note,
            # not said once per file.
            lines = read_text_lines(label, what="label file", log=lambda _: notes.update(["label_text"]))
        except UserError as exc:
            problems.append(str(exc))
            return None
        notes["empty_label"] += not any(line.strip() for line in lines)
    boxes, bad = _label_boxes_xyxy_cls(lines, size=size, class_count=len(class_names), notes=notes)
    problems += [f"{display_path(label)} line {number}: {message}" for number, message in bad]
    if bad:
        return None
    return checked_record(image_path=image, size=size, boxes_xyxy_cls=boxes, tally=tally, where=display_path(label))


def _label_boxes_xyxy_cls(lines: list[str], *, size: tuple[int, int], class_count: int, notes: Counter
                          ) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """(boxes (n, 5) [x1, y1, x2, y2, class_id] in upright pixels, [(line number, what is wrong)]) of a label
    file's lines; size: upright (width, height)."""
    width, height = size
    boxes, bad = [], []
    for number, line in enumerate(lines, start=1):
        words = line.split()
        if not words:
            continue
        try:
            values = np.array([float(word) for word in words])
        except ValueError:
            bad.append((number, f"{line.strip()!r} is not numbers; a line is 'class cx cy w h' (normalised 0-1)"))
            continue
        class_id = values[0]
        coords = values[1:]
        if not np.isfinite(values).all():
            bad.append((number, f"{line.strip()!r} holds a number that is not finite"))
        elif len(values) != 5 and (len(coords) < 6 or len(coords) % 2):
            bad.append((number, f"has {len(values)} numbers; a box is 'class cx cy w h' (5 numbers, normalised 0-1), "
                                f"a polygon 'class x1 y1 x2 y2 x3 y3 ...' (an even count of coordinates, 3 points "
                                f"or more)"))
        elif not class_id.is_integer() or not 0 <= class_id < (class_count or np.inf):  # no names: said apart
            bad.append((number, f"class id {words[0]} is not one of the {class_count} names (0-{class_count - 1})"))
        elif len(values) == 5:
            cx, cy, w, h = coords
            boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height,
                          class_id])
        else:
            notes["polygon"] += 1
            xs, ys = coords[0::2] * width, coords[1::2] * height
            boxes.append([xs.min(), ys.min(), xs.max(), ys.max(), class_id])
    return np.array(boxes, dtype=np.float64).reshape(-1, 5), bad


def write_yolo_dataset(dataset: Dataset, out: Path, *, link_images: bool, log=print) -> Path:
    """Writes ``out``/images/<split>/ (copies, or links with ``link_images``), ``out``/labels/<split>/<stem>.txt
    ('class cx cy w h', 6 decimals, normalised by the upright size; an empty file for a background image) and
    ``out``/data.yaml (splits relative to it, names as a list, nc), all or nothing (utils/data/new_folder.py).
    Difficult objects are left out (YOLO txt cannot mark them; the count is said). Returns ``out``."""
    left_out = 0
    with staged_folder(out) as folder:
        for split, records in dataset.splits.items():
            (folder / "images" / split).mkdir(parents=True)
            (folder / "labels" / split).mkdir(parents=True)
            for record in records:
                name = Path(record.image_path).name
                place_image(source=record.image_path, target=folder / "images" / split / name, link=link_images)
                keep = ~record.difficult
                left_out += int((~keep).sum())
                width, height = record.size
                x1, y1, x2, y2 = record.boxes_xyxy[keep].T
                cxcywh_norm = np.stack([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width,
                                        (y2 - y1) / height], axis=1)
                lines = [f"{int(c)} " + " ".join(f"{v:.6f}" for v in row)
                         for c, row in zip(record.class_ids[keep], cxcywh_norm)]
                (folder / "labels" / split / f"{Path(name).stem}.txt").write_text(
                    "".join(f"{line}\n" for line in lines), encoding="utf-8")
        doc = {split: f"images/{split}" for split in dataset.splits}
        doc |= {"nc": len(dataset.class_names), "names": list(dataset.class_names)}
        (folder / "data.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False,
                                                         default_flow_style=None), encoding="utf-8")
    if left_out:
        log(f"note: {out}: {left_out} difficult (or crowd) objects left out; YOLO txt cannot mark them")
    return Path(out)
