"""A VOCdevkit's folders and image lists as voc_annotation.py reads and writes them: file names checked before any
work, ImageSets/Main lists read line by line, the seeded split, and files written whole or not at all.

Annotation files and image lists are UTF-8 text, so an image or XML whose name is not UTF-8 cannot be listed in one;
such names are named by their bytes (``b'caf\\xe9.jpg'``) and the run stops before writing anything.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

from utils.core.config import UserError
from utils.core.textfile import display_path, read_text_lines
from utils.data.voc import IMAGE_EXTENSIONS, index_images

SPLIT_NAMES = ("trainval", "train", "val", "test")
_FOLDERS = ("JPEGImages", "Annotations", "ImageSets/Main")
_NUMBER_WORDS = re.compile(r"(?:\s+[-+.,\d]*\d[-+.,\d]*)+\s*$")  # words of numbers after an id


def devkit_problems(year_dir: Path) -> list[str]:
    """Problems that stop voc_annotation.py before any work: names that are not UTF-8 in the folder's path or in
    JPEGImages/, Annotations/ or ImageSets/Main/, and a JPEGImages/ holding no image."""
    if display_path(year_dir) != os.fspath(year_dir):
        return [(f"folder {display_path(year_dir)}: its path is not UTF-8, and the annotation files (UTF-8 text) "
                 f"hold absolute image paths; rename it")]
    problems = []
    for sub in _FOLDERS:
        folder = year_dir / sub
        names = sorted(os.listdir(folder)) if folder.is_dir() else []
        problems += [f"{folder}: file name {display_path(name)} is not UTF-8, so no UTF-8 list can name it; rename "
                     f"it" for name in names if display_path(name) != name]
    if not index_images(year_dir / "JPEGImages"):
        problems.append(f"{year_dir / 'JPEGImages'}: holds no images (any of {'/'.join(IMAGE_EXTENSIONS)}); put the "
                        f"images there, each named like its XML in Annotations/")
    return problems


def read_image_list(list_path: Path, *, known_stems: set[str]) -> tuple[list[str], list[str]]:
    """(image ids, problems) of an ImageSets/Main list: one id a line, blank lines skipped, a byte-order mark and
    CRLF line ends removed with a note. A line holding a known id followed by words of numbers ("img01 10,20,30",
    "img01 1" of a per-class list) is a problem at its line rather than an id without an image."""
    ids, problems = [], []
    for number, line in enumerate(read_text_lines(list_path, what="image list", names_files=True), start=1):
        image_id = line.strip()
        if not image_id:
            continue
        extra = _NUMBER_WORDS.search(image_id)
        if image_id not in known_stems and extra is not None and image_id[:extra.start()] in known_stems:
            problems.append(f"{list_path} line {number}: {image_id!r} is the id {image_id[:extra.start()]!r} followed "
                            f"by {extra.group().strip()!r}; an image list holds one image id a line (boxes belong in "
                            f"Annotations/<id>.xml; VOC's per-class lists such as cat_train.txt are not image lists)")
            continue
        ids.append(image_id)
    return ids, problems


def missing_list_problems(*, year_dirs: dict[str, Path], sets: list[tuple[str, str]]) -> list[str]:
    """The ImageSets/Main lists of ``sets`` that do not exist, with the fix that makes them: one problem per folder
    without any list, else one per missing list."""
    problems = []
    for year, year_dir in year_dirs.items():
        main_dir = year_dir / "ImageSets" / "Main"
        missing = [name for y, name in sets if y == year and not (main_dir / f"{name}.txt").exists()]
        if not missing:
            continue
        lists = sorted(p.name for p in main_dir.glob("*.txt") if p.stem in SPLIT_NAMES) if main_dir.is_dir() else []
        if not lists and all(name in SPLIT_NAMES for name in missing):
            problems.append(f"{main_dir} holds no image list ({', '.join(f'{n}.txt' for n in missing)} asked for): "
                            f"annotation_mode 0 (the default) makes a split of all images when none exists, "
                            f"annotation_mode 2 only reads lists; or write the lists yourself, one image id a line")
            continue
        for name in missing:
            made = name in SPLIT_NAMES
            where = f"{main_dir} has {', '.join(lists)} but no {name}.txt" if lists else f"{main_dir / name}.txt"
            problems.append(f"{where}: write {name}.txt yourself (one image id a line)"
                            + (f", or make a new split of all images with --overwrite_split=True (annotation_mode 0 "
                               f"or 1; it rewrites {', '.join(lists)})" if made and lists else "")
                            + f", or leave ['{year}', '{name}'] out of VOCdevkit_sets")
    return problems


def make_split(*, year_dir: Path, trainval_percent: float, train_percent: float, seed: int, overwrite: bool,
               log=print) -> None:
    """Write ImageSets/Main/{trainval,train,val,test}.txt from a seeded shuffle, unless lists already exist (or
    ``overwrite``). A first split that fails leaves no list behind; see write_text_files."""
    main_dir = year_dir / "ImageSets" / "Main"
    existing = [name for name in SPLIT_NAMES if (main_dir / f"{name}.txt").exists()]
    if existing and not overwrite:
        log(f"{main_dir}: using the existing lists ({', '.join(existing)}); nothing rewritten")
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
    lists = {main_dir / f"{name}.txt": [i for i in ids if i in members[name]] for name in SPLIT_NAMES}
    try:
        write_text_files(lists)
    except BaseException:
        if not existing:  # a first split fails whole: no part of it stays, so the next run makes it again
            for path in lists:
                path.unlink(missing_ok=True)
        raise
    log(f"{main_dir}: split {len(ids)} images into train {len(train)}, val {len(trainval - train)},"
        f" test {len(ids) - len(trainval)}")


def write_text_files(files: dict[Path, list[str]]) -> None:
    """Write each file's lines (UTF-8, one a line) through a temporary file beside it: every text is encoded
    before any file is made and every file written in full before any replaces its earlier version; on any failure
    (or Ctrl-C) no temporary file stays behind. A write the system refuses is a UserError naming the file."""
    encoded = {path: "".join(line + "\n" for line in lines).encode("utf-8") for path, lines in files.items()}
    temporary = {path: path.with_name(path.name + ".tmp") for path in encoded}
    try:
        for path, data in encoded.items():
            temporary[path].write_bytes(data)
        for path, tmp_path in temporary.items():
            os.replace(tmp_path, path)
    except OSError as exc:
        raise UserError(f"cannot write {exc.filename}: {exc.strerror or exc}") from exc
    finally:
        for tmp_path in temporary.values():
            tmp_path.unlink(missing_ok=True)
