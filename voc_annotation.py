"""Turn a VOCdevkit into the annotation files train.py reads.

Writes ``<year>_<set>.txt`` per (year, set): a ``# classes: [...]`` header naming the classes the ids refer to, then
one line per image, ``<absolute image path> x1,y1,x2,y2,class_id ...`` (boxes xyxy in the pixels of the upright
image). Every image is opened and decoded first. Prints per file the images, the background images and per class the
objects kept and dropped and why. Stops, writing nothing, on file names that are not UTF-8, an empty image folder,
a missing or malformed image list, and no image or no object of a listed class to write.
Settings below; override them with ``--config=FILE`` or ``--key=value``:

    python voc_annotation.py --annotation_mode=2 --include_difficult=true
"""

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np

from utils.core.config import ConfigError, UserError, resolve_config, run_cli, settings_of
from utils.core.model_files import get_classes
from utils.data.boxcheck import BoxTally
from utils.data.voc import format_annotation_line, format_classes_header, index_images
from utils.data.voc_dataset import SKIPPED, SUMMARY_LABELS, annotated_images
from utils.data.voc_devkit import devkit_problems, make_split, missing_list_problems, read_image_list, write_text_files

annotation_mode: Literal[0, 1, 2] = 0  # 0: split (if no lists yet) + annotation files; 1: split only; 2: files only
classes_path: str = "model_data/bccd_classes.txt"  # class names, one per line; the line order gives the class ids
trainval_percent: float = 0.9  # share of all images that goes to trainval (the rest is test) when a split is made
train_percent: float = 0.9  # share of trainval that goes to train (the rest is val)
VOCdevkit_path: str = "VOCdevkit"  # folder holding VOC<year>/{Annotations,JPEGImages,ImageSets/Main}
VOCdevkit_sets: list[list[str]] = [["2007", "train"], ["2007", "val"], ["2007", "test"]]  # [year, set] pairs to write
include_difficult: bool = False  # keep objects marked <difficult>1</difficult>
seed: int = 0  # seed of the split shuffle
out_dir: str = "."  # folder for the <year>_<set>.txt files
overwrite_split: bool = False  # annotation_mode 0 or 1: make a new split even if ImageSets/Main lists exist


def annotate_set(*, year_dir: Path, list_path: Path, ids: list[str], class_names: list[str], include_difficult: bool,
                 images_by_stem: dict[str, Path], summary: Counter, names_seen: Counter) -> tuple[list[str], BoxTally]:
    """Annotation lines of one image list (``ids`` of ``list_path``) and the per-class account of its objects;
    problems go to ``summary``, every object name met in the XML files to ``names_seen``. Every image is decoded;
    boxes are put in the upright frame the loader shows (see utils/data/datacheck.py for the orientation rule)."""
    lines: list[str] = []
    tally = BoxTally(class_names)
    for image_path, annotated in annotated_images(year_dir=year_dir, list_path=list_path, ids=ids,
                                                  images_by_stem=images_by_stem, class_names=class_names,
                                                  include_difficult=include_difficult, summary=summary,
                                                  names_seen=names_seen):
        tally.add_image(annotated.class_ids, annotated.verdicts)
        lines.append(format_annotation_line(image_path=os.path.abspath(image_path),
                                            boxes_xyxy_cls=annotated.boxes_xyxy_cls))
    return lines, tally


def check_classes_found(*, tallies: dict, names_seen: Counter, classes_path: str, voc_path: str,
                        summary: Counter) -> None:
    """Stops (UserError) when there is nothing to train on: no image line at all, no object in any XML file or no
    object of a listed class (the classes file matches none of the XML names). A class without any object is a
    warning on stderr, saying what was dropped and the names the classes file does not list."""
    images = sum(tally.images for tally in tallies.values())
    if not images:
        skipped = "; ".join(f"{SUMMARY_LABELS[key]}: {summary[key]}" for key in SKIPPED if summary[key])
        raise UserError(f"{voc_path}: no image to write in any of the {len(tallies)} image lists "
                        f"({skipped or 'the lists are empty'}); nothing written")
    if not names_seen:
        raise UserError(f"{voc_path}: the XML files name no object ({images} images, all background); training needs "
                        f"boxes: annotate the images (one <object> per box in Annotations/<id>.xml); nothing written")
    total = BoxTally(next(iter(tallies.values())).class_names)
    for tally in tallies.values():
        total.kept += tally.kept
        for reason, counts in tally.dropped.items():
            total.dropped.setdefault(reason, np.zeros_like(total.kept))
            total.dropped[reason] += counts
    class_names = total.class_names
    others = ", ".join(f"{name} ({count})" for name, count in names_seen.most_common() if name not in class_names)
    if not total.total_kept and not total.total_dropped:
        found = ", ".join(f"{name} ({count})" for name, count in names_seen.most_common())
        raise UserError(f"classes file {classes_path}: none of its classes occurs in the XML files of {voc_path}; "
                        f"they name: {found}. Put those names (one per line) in the classes file")
    for index in total.empty_classes():
        why = total.why_dropped(index)
        print(f"WARNING: class {class_names[index]!r} of {classes_path} has no object in any list"
              + (f": all were dropped: {why}" if why else "")
              + (f"; the XML files also name {others}, which {classes_path} does not list" if others else "")
              + "; train.py refuses a training file without it: fix the objects or remove the class from the "
                "classes file", file=sys.stderr)


def check_settings(*, annotation_mode: int, trainval_percent: float, train_percent: float,
                   VOCdevkit_sets: list[list[str] | tuple[str, str]], overwrite_split: bool = False
                   ) -> list[tuple[str, str]]:
    """The (year, set) pairs as strings; ConfigError for a bad mode, share or pair."""
    if annotation_mode not in (0, 1, 2):
        raise ConfigError(f"annotation_mode must be 0, 1 or 2, got {annotation_mode}")
    if overwrite_split and annotation_mode == 2:
        raise ConfigError("overwrite_split=True makes a new split, which annotation_mode 2 never does; use "
                          "annotation_mode 0 (split and annotation files) or 1 (split only)")
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


def stop_on(problems: list[str], *, first_line: str) -> None:
    """One UserError for a list of problems: the problem itself when alone, else a first line and one a line."""
    if len(problems) == 1:
        raise UserError(problems[0])
    if problems:
        raise UserError(f"{len(problems)} {first_line}:\n" + "\n".join(problems))


def read_image_lists(*, year_dirs: dict[str, Path], sets: list[tuple[str, str]],
                     images_by_year: dict[str, dict[str, Path]]) -> dict[tuple[str, str], list[str]]:
    """(year, set) -> the ids of its ImageSets/Main list. Missing lists and malformed lines are reported together,
    each with its fix: a FileNotFoundError when lists are all that is wrong, else a UserError."""
    missing = missing_list_problems(year_dirs=year_dirs, sets=sets)
    ids, problems = {}, []
    for year, set_name in sets:
        year_dir = year_dirs[year]
        list_path = year_dir / "ImageSets" / "Main" / f"{set_name}.txt"
        if not list_path.exists():
            continue
        known = set(images_by_year[year]) | {p.stem for p in (year_dir / "Annotations").glob("*.xml")}
        ids[(year, set_name)], found = read_image_list(list_path, known_stems=known)
        problems += found
    if missing and not problems:
        raise FileNotFoundError("missing image lists: " + missing[0] if len(missing) == 1
                                else f"missing image lists in {len(missing)} places:\n" + "\n".join(missing))
    stop_on(missing + problems, first_line="problems with the image lists (nothing written)")
    return ids


def write_annotation_files(*, made: dict, class_names: list[str], out_dir: str) -> dict[tuple[str, str], Path]:
    """Write ``<year>_<set>.txt`` per set of ``made`` into ``out_dir``, all or none, and report each: images,
    background images, per class the objects kept and dropped and why. (year, set) -> the file written."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    files = {key: Path(out_dir) / f"{key[0]}_{key[1]}.txt" for key in made}
    write_text_files({files[key]: [format_classes_header(class_names), *lines] for key, (lines, _) in made.items()})
    for key, (lines, tally) in made.items():
        per_class = ", ".join(f"{name} {int(count)}" for name, count in zip(class_names, tally.kept))
        emptied = f", {tally.emptied} of them because every box was dropped" if tally.emptied else ""
        print(f"{files[key]}: {len(lines)} images; objects: {per_class}")
        print(f"  background images (no boxes): {tally.background}{emptied}")
        for line in tally.class_lines():
            print(f"  {line}")
    return files


def warn_empty_files(*, line_counts: dict, out_dir: str, trainval_percent: float, train_percent: float) -> None:
    """Warn (stderr) about every written file without images; train.py would refuse it as train or val file."""
    for (year, set_name), count in line_counts.items():
        if count == 0:
            print(f"WARNING: {Path(out_dir) / f'{year}_{set_name}.txt'} holds 0 images: train.py refuses an empty "
                  f"train or val file. On a small dataset lower train_percent (now {train_percent}) or "
                  f"trainval_percent (now {trainval_percent}) and re-run with --overwrite_split=True", file=sys.stderr)


def print_summary(summary: Counter) -> None:
    """One line counting every kind of problem met, or saying there was none."""
    print("summary: " + ("; ".join(f"{text}: {summary[key]}" for key, text in SUMMARY_LABELS.items() if summary[key])
                         or "no problems found"))


def run(*, annotation_mode: int, classes_path: str, trainval_percent: float, train_percent: float,
        VOCdevkit_path: str, VOCdevkit_sets: list[list[str] | tuple[str, str]], include_difficult: bool, seed: int,
        out_dir: str, overwrite_split: bool) -> dict:
    """Make the split and/or the annotation files. Returns {"files", "lines", "class_counts", "tallies", "summary"}.

    VOCdevkit_sets holds (year, set) pairs as lists or tuples. Bad settings raise ConfigError (checked before the
    split is made); missing VOC folders or image lists raise FileNotFoundError; a dataset that cannot be annotated
    raises UserError listing every problem. Nothing is written in any of these cases.
    """
    sets = check_settings(annotation_mode=annotation_mode, trainval_percent=trainval_percent,
                          train_percent=train_percent, VOCdevkit_sets=VOCdevkit_sets, overwrite_split=overwrite_split)
    year_dirs = voc_year_dirs(VOCdevkit_path=VOCdevkit_path, years=[year for year, _ in sets])
    # Read before the split is made, so a bad classes file stops the run up front.
    class_names = read_class_names(classes_path) if annotation_mode != 1 else []
    stop_on([problem for year_dir in year_dirs.values() for problem in devkit_problems(year_dir)],
            first_line="problems in the VOCdevkit (nothing written)")
    if annotation_mode in (0, 1):
        for year_dir in year_dirs.values():
            make_split(year_dir=year_dir, trainval_percent=trainval_percent, train_percent=train_percent,
                       seed=seed, overwrite=overwrite_split)
    summary = Counter()
    if annotation_mode == 1:
        return {"files": {}, "lines": {}, "class_counts": {}, "tallies": {}, "summary": summary}
    images_by_year = {year: index_images(year_dir / "JPEGImages") for year, year_dir in year_dirs.items()}
    ids = read_image_lists(year_dirs=year_dirs, sets=sets, images_by_year=images_by_year)
    names_seen: Counter = Counter()
    made = {(year, set_name): annotate_set(year_dir=year_dirs[year], ids=ids[(year, set_name)],
                                           list_path=year_dirs[year] / "ImageSets" / "Main" / f"{set_name}.txt",
                                           class_names=class_names, include_difficult=include_difficult,
                                           images_by_stem=images_by_year[year], summary=summary,
                                           names_seen=names_seen)
            for year, set_name in sets}
    tallies = {key: tally for key, (_, tally) in made.items()}
    check_classes_found(tallies=tallies, names_seen=names_seen, classes_path=classes_path, voc_path=VOCdevkit_path,
                        summary=summary)
    files = write_annotation_files(made=made, class_names=class_names, out_dir=out_dir)
    line_counts = {key: len(lines) for key, (lines, _) in made.items()}
    warn_empty_files(line_counts=line_counts, out_dir=out_dir, trainval_percent=trainval_percent,
                     train_percent=train_percent)
    print_summary(summary)
    class_counts = {key: Counter(dict(zip(class_names, map(int, tally.kept)))) for key, tally in tallies.items()}
    return {"files": files, "lines": line_counts, "class_counts": class_counts, "tallies": tallies,
            "summary": summary}


def main(argv: list[str] | None = None) -> dict:
    config = resolve_config(settings_of(globals()), argv)
    return run(**config)


if __name__ == "__main__":
    run_cli(main)
