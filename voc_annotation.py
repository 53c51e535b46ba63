"""Turn a VOCdevkit into the annotation files train.py reads.

Writes ``<year>_<set>.txt`` per (year, set): a ``# classes: [...]`` header naming the classes the ids refer to, then
one line per image, ``<absolute image path> x1,y1,x2,y2,class_id ...`` (boxes xyxy in the pixels of the upright
image). Every image is opened and decoded first; nothing is written when no object of a listed class exists.
Settings below; override them with ``--config=FILE`` or ``--key=value``:

    python voc_annotation.py --annotation_mode=2 --include_difficult=true
"""

import os
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np

from utils.core.config import ConfigError, UserError, resolve_config, run_cli, settings_of
from utils.core.model_files import get_classes
from utils.data.datacheck import align_boxes_with_image
from utils.data.images import image_info
from utils.data.voc import format_annotation_line, format_classes_header, index_images, read_voc_xml

annotation_mode: Literal[0, 1, 2] = 0  # 0: split (if no lists yet) + annotation files; 1: split only; 2: files only
classes_path: str = "model_data/bccd_classes.txt"  # class names, one per line; the line order gives the class ids
trainval_percent: float = 0.9  # share of all images that goes to trainval (the rest is test) when a split is made
train_percent: float = 0.9  # share of trainval that goes to train (the rest is val)
VOCdevkit_path: str = "VOCdevkit"  # folder holding VOC<year>/{Annotations,JPEGImages,ImageSets/Main}
VOCdevkit_sets: list[list[str]] = [["2007", "train"], ["2007", "val"], ["2007", "test"]]  # [year, set] pairs to write
include_difficult: bool = False  # keep objects marked <difficult>1</difficult>
seed: int = 0  # seed of the split shuffle
out_dir: str = "."  # folder for the <year>_<set>.txt files
overwrite_split: bool = False  # annotation_mode 1: rewrite ImageSets/Main lists that already exist

SPLIT_NAMES = ("trainval", "train", "val", "test")
SUMMARY_LABELS = {"skipped_no_image": "XML/list entries without an image (skipped)",
                  "skipped_unreadable_image": "images that cannot be decoded (skipped)",
                  "rotated_from_raw_frame": "XML boxes in the raw frame of an EXIF-rotated image (rotated upright)",
                  "size_mismatch": "XML <size> differs from the image",
                  "skipped_malformed_xml": "malformed XML files (skipped)",
                  "background_no_xml": "images without XML (kept as background)",
                  "background_no_objects": "XML without usable objects (kept as background)",
                  "image_name_fixed": "image found by stem under another name/extension",
                  "unknown_class": "objects of unknown class (skipped)",
                  "difficult_excluded": "difficult objects (excluded)",
                  "dropped_degenerate": "boxes with zero or negative area (dropped)",
                  "dropped_outside": "boxes entirely outside the image (dropped)",
                  "clipped": "boxes clipped to the image"}


def ensure_split(*, year_dir: Path, trainval_percent: float, train_percent: float, seed: int, overwrite: bool) -> None:
    """Write ImageSets/Main/{trainval,train,val,test}.txt from a seeded shuffle, unless lists already exist."""
    main_dir = year_dir / "ImageSets" / "Main"
    existing = [name for name in SPLIT_NAMES if (main_dir / f"{name}.txt").exists()]
    if existing and not overwrite:
        print(f"{main_dir}: using the existing lists ({', '.join(existing)}); nothing rewritten")
        return
    xml_stems = {p.stem for p in (year_dir / "Annotations").glob("*.xml")}
    ids = sorted(xml_stems | set(index_images(year_dir / "JPEGImages")))
    if not ids:
        raise FileNotFoundError(f"{year_dir}: no XML files in Annotations/ and no images in JPEGImages/")
    rng = random.Random(seed)
    trainval = set(rng.sample(ids, int(len(ids) * trainval_percent)))
    train = set(rng.sample(sorted(trainval), int(len(trainval) * train_percent)))
    members = {"trainval": trainval, "train": train, "val": trainval - train, "test": set(ids) - trainval}
    main_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_NAMES:
        _write_lines(main_dir / f"{name}.txt", [i for i in ids if i in members[name]])
    print(f"{main_dir}: split {len(ids)} images into train {len(train)}, val {len(trainval - train)},"
          f" test {len(ids) - len(trainval)}")


def _write_lines(path: Path, lines: list[str]) -> None:
    """Write through a temporary file so an interrupted run never leaves half a file."""
    tmp_path = path.with_name(path.name + ".tmp")
    tmp_path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp_path, path)


def annotate_set(*, year_dir: Path, set_name: str, class_names: list[str], include_difficult: bool,
                 images_by_stem: dict[str, Path], summary: Counter, names_seen: Counter) -> tuple[list[str], Counter]:
    """Annotation lines of one ImageSets/Main list and its per-class object counts; problems go to ``summary``,
    every object name met in the XML files to ``names_seen``. Every image is decoded; boxes are put in the
    upright frame the loader shows (see utils/data/datacheck.py for the orientation rule)."""
    list_path = year_dir / "ImageSets" / "Main" / f"{set_name}.txt"
    ids = [line.strip() for line in list_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines: list[str] = []
    class_counts: Counter = Counter({name: 0 for name in class_names})
    for image_id in ids:
        xml_path = year_dir / "Annotations" / f"{image_id}.xml"
        image_path = images_by_stem.get(image_id)
        if image_path is None:
            what = "XML" if xml_path.exists() else "listed id"
            print(f"warning: {xml_path if xml_path.exists() else list_path}: {what} {image_id!r} has no image"
                  f" in {year_dir / 'JPEGImages'} (any of .jpg/.jpeg/.png/.bmp); skipped")
            summary["skipped_no_image"] += 1
            continue
        boxes_xyxy_cls = annotate_image(image_path=image_path, xml_path=xml_path, class_names=class_names,
                                        include_difficult=include_difficult, summary=summary, names_seen=names_seen)
        if boxes_xyxy_cls is None:
            continue
        class_counts.update(class_names[int(c)] for c in boxes_xyxy_cls[:, 4])
        lines.append(format_annotation_line(image_path=os.path.abspath(image_path), boxes_xyxy_cls=boxes_xyxy_cls))
    return lines, class_counts


def annotate_image(*, image_path: Path, xml_path: Path, class_names: list[str], include_difficult: bool,
                   summary: Counter, names_seen: Counter) -> np.ndarray | None:
    """The boxes (n, 5) of one image in its upright frame (none for a background image), or None when the image
    or its XML cannot be read and the image is skipped. Problems are printed and counted in ``summary``."""
    try:
        info = image_info(image_path, decode=True)
    except UserError as exc:
        print(f"error: {exc}; image skipped")
        summary["skipped_unreadable_image"] += 1
        return None
    if not xml_path.exists():
        print(f"warning: {image_path}: no XML {xml_path.name}; kept as a background image (no boxes)")
        summary["background_no_xml"] += 1
        return np.zeros((0, 5))
    try:
        record = read_voc_xml(xml_path=xml_path, class_names=class_names, include_difficult=include_difficult,
                              image_path=image_path)
    except ValueError as exc:
        print(f"error: {exc}; image skipped")
        summary["skipped_malformed_xml"] += 1
        return None
    names_seen.update(record.object_names)
    for message in record.warnings:
        print(f"warning: {message}")
    summary.update(record.counts)
    boxes_xyxy_cls, notes, rotated = align_boxes_with_image(record.boxes_xyxy_cls, xml_size=record.image_size,
                                                            info=info, xml_path=xml_path)
    for message in notes:
        print(f"warning: {message}")
    summary["rotated_from_raw_frame"] += int(rotated)
    summary["size_mismatch"] += int(not rotated and record.image_size not in (None, info.upright_size))
    if record.filename is not None and record.filename != image_path.name:
        print(f"note: {xml_path}: <filename> says {record.filename!r}; using {image_path.name!r} found by stem")
        summary["image_name_fixed"] += 1
    if len(boxes_xyxy_cls) == 0:
        print(f"note: {xml_path}: no usable objects; kept as a background image")
        summary["background_no_objects"] += 1
    return boxes_xyxy_cls


def check_classes_found(*, class_counts: dict, names_seen: Counter, classes_path: str, voc_path: str) -> None:
    """Stops (UserError) when no object of any listed class exists: the classes file matches none of the XML
    names, which would otherwise train on zero objects."""
    if sum(sum(counts.values()) for counts in class_counts.values()) or not names_seen:
        return
    found = ", ".join(f"{name} ({count})" for name, count in names_seen.most_common())
    raise UserError(f"classes file {classes_path}: none of its classes occurs in the XML files of {voc_path}; "
                    f"they name: {found}. Put those names (one per line) in the classes file")


def check_settings(*, annotation_mode: int, trainval_percent: float, train_percent: float,
                   VOCdevkit_sets: list[list[str] | tuple[str, str]]) -> list[tuple[str, str]]:
    """The (year, set) pairs as strings; ConfigError for a bad mode, share or pair."""
    if annotation_mode not in (0, 1, 2):
        raise ConfigError(f"annotation_mode must be 0, 1 or 2, got {annotation_mode}")
    for name, value in (("trainval_percent", trainval_percent), ("train_percent", train_percent)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be between 0 and 1, got {value}")
    if any(len(pair) != 2 for pair in VOCdevkit_sets):
        raise ConfigError(f"VOCdevkit_sets must hold [year, set] pairs, got {VOCdevkit_sets!r}")
    return [(str(year), str(name)) for year, name in VOCdevkit_sets]


def voc_year_dirs(*, VOCdevkit_path: str, years: list[str]) -> dict[str, Path]:
    """year -> VOC<year> folder; FileNotFoundError when one has neither Annotations/ nor JPEGImages/."""
    year_dirs = {year: Path(VOCdevkit_path) / f"VOC{year}" for year in dict.fromkeys(years)}
    for year_dir in year_dirs.values():
        if not (year_dir / "Annotations").is_dir() and not (year_dir / "JPEGImages").is_dir():
            raise FileNotFoundError(f"{year_dir}: not a VOC folder (no Annotations/ or JPEGImages/); "
                                    f"check VOCdevkit_path and VOCdevkit_sets")
    return year_dirs


def read_class_names(classes_path: str) -> list[str]:
    """The classes file's names; ConfigError naming the setting when it is unusable."""
    try:
        return get_classes(classes_path)
    except ValueError as exc:
        raise ConfigError(f"classes_path: {exc}") from exc


def check_image_lists(*, year_dirs: dict[str, Path], sets: list[tuple[str, str]]) -> None:
    """FileNotFoundError naming every ImageSets/Main list of ``sets`` that does not exist."""
    missing = [str(year_dirs[y] / "ImageSets" / "Main" / f"{s}.txt") for y, s in sets
               if not (year_dirs[y] / "ImageSets" / "Main" / f"{s}.txt").exists()]
    if missing:
        raise FileNotFoundError(f"missing image lists: {', '.join(missing)} (annotation_mode 0 or 1 makes a split)")


def annotate_sets(*, year_dirs: dict[str, Path], sets: list[tuple[str, str]], class_names: list[str],
                  include_difficult: bool, summary: Counter) -> tuple[dict, Counter]:
    """(year, set) -> (annotation lines, per-class counts) for every set, and every object name met in the XML
    files. Everything is read and checked before any annotation file is written."""
    images_by_year = {year: index_images(year_dir / "JPEGImages") for year, year_dir in year_dirs.items()}
    names_seen: Counter = Counter()
    made = {}
    for year, set_name in sets:
        made[(year, set_name)] = annotate_set(year_dir=year_dirs[year], set_name=set_name, class_names=class_names,
                                              include_difficult=include_difficult,
                                              images_by_stem=images_by_year[year], summary=summary,
                                              names_seen=names_seen)
    return made, names_seen


def write_annotation_files(*, made: dict, class_names: list[str], out_dir: str) -> dict[tuple[str, str], Path]:
    """Write ``<year>_<set>.txt`` per set of ``made`` into ``out_dir``; (year, set) -> the file written."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    files = {}
    for (year, set_name), (lines, class_counts) in made.items():
        files[(year, set_name)] = out_path = Path(out_dir) / f"{year}_{set_name}.txt"
        _write_lines(out_path, [format_classes_header(class_names), *lines])
        per_class = ", ".join(f"{name} {count}" for name, count in class_counts.items())
        print(f"{out_path}: {len(lines)} images; objects: {per_class}")
    return files


def warn_empty_files(*, line_counts: dict, out_dir: str, trainval_percent: float, train_percent: float) -> None:
    """Warn (stderr) about every written file without images; train.py would refuse it as train or val file."""
    for (year, set_name), count in line_counts.items():
        if count == 0:
            print(f"WARNING: {Path(out_dir) / f'{year}_{set_name}.txt'} holds 0 images: train.py refuses an empty "
                  f"train or val file. On a small dataset lower train_percent (now {train_percent}) or "
                  f"trainval_percent (now {trainval_percent}) and re-run with annotation_mode=1 "
                  f"--overwrite_split=True, then annotation_mode=2", file=sys.stderr)


def print_summary(summary: Counter) -> None:
    """One line counting every kind of problem met, or saying there was none."""
    print("summary: " + ("; ".join(f"{text}: {summary[key]}" for key, text in SUMMARY_LABELS.items() if summary[key])
                         or "no problems found"))


def run(*, annotation_mode: int, classes_path: str, trainval_percent: float, train_percent: float,
        VOCdevkit_path: str, VOCdevkit_sets: list[list[str] | tuple[str, str]], include_difficult: bool, seed: int,
        out_dir: str, overwrite_split: bool) -> dict:
    """Make the split and/or the annotation files. Returns {"files", "lines", "class_counts", "summary"}.

    VOCdevkit_sets holds (year, set) pairs as lists or tuples. Bad settings raise ConfigError (checked before the
    split is made); missing VOC folders or image lists raise FileNotFoundError.
    """
    sets = check_settings(annotation_mode=annotation_mode, trainval_percent=trainval_percent,
                          train_percent=train_percent, VOCdevkit_sets=VOCdevkit_sets)
    year_dirs = voc_year_dirs(VOCdevkit_path=VOCdevkit_path, years=[year for year, _ in sets])
    # Read before the split is made, so a bad classes file stops the run up front.
    class_names = read_class_names(classes_path) if annotation_mode != 1 else []
    if annotation_mode in (0, 1):
        for year_dir in year_dirs.values():
            ensure_split(year_dir=year_dir, trainval_percent=trainval_percent, train_percent=train_percent,
                         seed=seed, overwrite=overwrite_split and annotation_mode == 1)
    summary = Counter()
    if annotation_mode == 1:
        return {"files": {}, "lines": {}, "class_counts": {}, "summary": summary}
    check_image_lists(year_dirs=year_dirs, sets=sets)
    made, names_seen = annotate_sets(year_dirs=year_dirs, sets=sets, class_names=class_names,
                                     include_difficult=include_difficult, summary=summary)
    class_counts = {key: counts for key, (_, counts) in made.items()}
    check_classes_found(class_counts=class_counts, names_seen=names_seen, classes_path=classes_path,
                        voc_path=VOCdevkit_path)
    files = write_annotation_files(made=made, class_names=class_names, out_dir=out_dir)
    line_counts = {key: len(lines) for key, (lines, _) in made.items()}
    warn_empty_files(line_counts=line_counts, out_dir=out_dir, trainval_percent=trainval_percent,
                     train_percent=train_percent)
    print_summary(summary)
    return {"files": files, "lines": line_counts, "class_counts": class_counts, "summary": summary}


def main(argv: list[str] | None = None) -> dict:
    config = resolve_config(settings_of(globals()), argv)
    return run(**config)


if __name__ == "__main__":
    run_cli(main)
