"""PASCAL VOC devkits: the per-image annotation voc_annotation.py writes its files from, the dataset reader built on
it, and the writer of the converter.

A devkit is a folder holding VOC<year>/ folders (VOCdevkit/VOC2007, ...) or one VOC<year> folder itself, each with
Annotations/<id>.xml, JPEGImages/<id>.<ext> and ImageSets/Main/{train,val,test}.txt (a split is there when a list
is; the lists of several years are joined). Boxes are read as utils/data/voc.py reads them, put in the upright frame
of the image (utils/data/datacheck.py's orientation rule) and checked by utils/data/boxcheck.py.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from utils.core.config import UserError
from utils.core.model_files import get_classes
from utils.core.textfile import display_path
from utils.data.boxcheck import BoxTally
from utils.data.datacheck import align_boxes_with_image
from utils.data.images import image_info, read_image_rgb
from utils.data.new_folder import place_image, staged_folder
from utils.data.records import (SPLITS, Dataset, ImageRecord, check_class_names, finish_dataset, raise_problems,
                                same_stem_problems)
from utils.data.voc import IMAGE_EXTENSIONS, index_images, load_voc_objects, read_voc_xml
from utils.data.voc_devkit import devkit_problems, read_image_list

CLASSES_FILE = "classes.txt"  # beside the VOC<year> folders: the class names in id order (the writer makes it)
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
SKIPPED = ("skipped_no_image", "skipped_unreadable_image", "skipped_malformed_xml")


@dataclass
class AnnotatedImage:
    """One image's objects. boxes_xyxy_cls: (n, 5) [x1, y1, x2, y2, class_id] kept, upright-image pixels, clipped;
    difficult: (n,) their <difficult> flags; class_ids / verdicts: every object of a listed class, kept ones first,
    with its utils/data/boxcheck.py verdict (for a BoxTally); size: upright (width, height)."""
    boxes_xyxy_cls: np.ndarray
    difficult: np.ndarray
    class_ids: np.ndarray
    verdicts: np.ndarray
    size: tuple[int, int]


def annotate_image(*, image_path: Path, xml_path: Path, class_names: list[str], include_difficult: bool,
                   summary: Counter, names_seen: Counter, log=print, problems: list[str] | None = None,
                   note_background: bool = True) -> AnnotatedImage | None:
    """The objects of one image in its upright frame (none for a background image), or None when the image or its
    XML cannot be read and the image is skipped. Every image is decoded. Problems are logged and counted in
    ``summary``; with a ``problems`` list, an unreadable image or XML goes there instead of being logged.
    ``note_background``: log each image kept as background (else they are only counted)."""
    try:
        info = image_info(image_path, decode=True)
    except UserError as exc:
        _skip(str(exc), log=log, problems=problems)
        summary["skipped_unreadable_image"] += 1
        return None
    empty = AnnotatedImage(np.zeros((0, 5)), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64),
                           np.zeros(0, dtype=object), info.upright_size)
    if not xml_path.exists():
        if note_background:
            log(f"warning: {image_path}: no XML {xml_path.name}; kept as a background image (no boxes)")
        summary["background_no_xml"] += 1
        return empty
    try:
        record = read_voc_xml(xml_path=xml_path, class_names=class_names, include_difficult=include_difficult,
                              image_path=image_path)
    except ValueError as exc:
        _skip(str(exc), log=log, problems=problems)
        summary["skipped_malformed_xml"] += 1
        return None
    names_seen.update(record.object_names)
    for message in record.warnings:
        log(f"warning: {message}")
    summary.update(record.counts)
    boxes_xyxy_cls, notes, rotated, keep = align_boxes_with_image(
        record.boxes_xyxy_cls, xml_size=record.image_size, info=info, xml_path=xml_path)
    for message in notes:
        log(f"warning: {message}")
    summary["rotated_from_raw_frame"] += int(rotated)
    summary["size_mismatch"] += int(not rotated and record.image_size not in (None, info.upright_size))
    if record.filename is not None and record.filename != image_path.name:
        log(f"note: {xml_path}: <filename> says {record.filename!r}; using {image_path.name!r} found by stem")
        summary["image_name_fixed"] += 1
    if len(boxes_xyxy_cls) == 0:
        if note_background:
            log(f"note: {xml_path}: no usable objects; kept as a background image")
        summary["background_no_objects"] += 1
    outside_ids = record.boxes_xyxy_cls[~keep, 4]
    dropped_ids = [class_id for class_id, _ in record.dropped] + list(outside_ids)
    verdicts = [""] * len(boxes_xyxy_cls) + [reason for _, reason in record.dropped] + ["outside"] * len(outside_ids)
    class_ids = np.concatenate([boxes_xyxy_cls[:, 4], dropped_ids]).astype(np.int64)
    return AnnotatedImage(boxes_xyxy_cls, record.difficult[keep], class_ids, np.array(verdicts, dtype=object),
                          info.upright_size)


def _skip(message: str, *, log, problems: list[str] | None) -> None:
    if problems is None:
        log(f"error: {message}; image skipped")
    else:
        problems.append(message)


def annotated_images(*, year_dir: Path, list_path: Path, ids: list[str], images_by_stem: dict[str, Path],
                     problems: list[str] | None = None, log=print, **annotate) -> Iterator[tuple[Path, AnnotatedImage]]:
    """(image, its objects) for each id of one image list (``ids`` of ``list_path``) that has a readable image;
    ``annotate``: the keyword arguments of annotate_image but the paths (summary, names_seen, ...). An id without an
    image is logged and skipped, or with a ``problems`` list a problem there."""
    summary = annotate["summary"]
    for image_id in ids:
        xml_path = year_dir / "Annotations" / f"{image_id}.xml"
        image_path = images_by_stem.get(image_id)
        if image_path is None:
            what = "XML" if xml_path.exists() else "listed id"
            message = (f"{xml_path if xml_path.exists() else list_path}: {what} {image_id!r} has no image in "
                       f"{year_dir / 'JPEGImages'} (any of .jpg/.jpeg/.png/.bmp)")
            if problems is None:
                log(f"warning: {message}; skipped")
            else:
                problems.append(message)
            summary["skipped_no_image"] += 1
            continue
        annotated = annotate_image(image_path=image_path, xml_path=xml_path, log=log, problems=problems, **annotate)
        if annotated is not None:
            yield image_path, annotated


def looks_like(root: Path) -> bool:
    """A VOC<year> folder, or a folder holding one (Annotations/ beside JPEGImages/)."""
    return bool(year_dirs_of(root))


def year_dirs_of(root: Path) -> list[Path]:
    """The VOC<year> folders of a devkit root, or [root] when it is one."""
    if not root.is_dir():
        return []
    if (root / "Annotations").is_dir() and (root / "JPEGImages").is_dir():
        return [root]
    return sorted(path for path in root.glob("VOC*") if (path / "Annotations").is_dir())


def read_voc_dataset(root: Path, *, classes_path: str | None, log=print) -> Dataset:
    """The devkit at ``root`` as records (see the module docstring): difficult objects kept with difficult=True.
    Class names from ``classes_path``, else from a classes.txt beside the VOC<year> folders, else the names met in
    the XML files, sorted (said in a note). Raises UserError listing every problem: names that are not UTF-8, an
    empty or missing image folder, no image list, listed ids without image, unreadable images or XML, one image
    listed twice or two images of one name in a split, and a training split without boxes or a class without any."""
    root = Path(root)
    year_dirs = year_dirs_of(root)
    if not year_dirs:
        raise UserError(f"dataset {display_path(root)}: not a VOC devkit (no VOC<year>/Annotations, nor Annotations/ "
                        f"beside JPEGImages/)")
    source = f"dataset {display_path(root)} (voc)"
    raise_problems([problem for year_dir in year_dirs for problem in devkit_problems(year_dir)], source=source)
    class_names = _class_names(root=root, year_dirs=year_dirs, classes_path=classes_path, log=log)
    problems: list[str] = []
    images_by_year = {year_dir: index_images(year_dir / "JPEGImages") for year_dir in year_dirs}
    lists = {split: [(year_dir, year_dir / "ImageSets" / "Main" / f"{split}.txt") for year_dir in year_dirs
                     if (year_dir / "ImageSets" / "Main" / f"{split}.txt").is_file()] for split in SPLITS}
    if not any(lists.values()):
        raise UserError(f"{source}: no image list (ImageSets/Main/train.txt, val.txt or test.txt) in "
                        f"{', '.join(map(str, year_dirs))}; make a split with `python voc_annotation.py "
                        f"--annotation_mode=1 --VOCdevkit_path=...`, or write the lists (one image id a line)")
    summary, names_seen = Counter(), Counter()
    splits, tallies = {}, {}
    for split, split_lists in lists.items():
        if not split_lists:
            continue
        records, tally = [], BoxTally(class_names)
        for year_dir, list_path in split_lists:
            known = set(images_by_year[year_dir]) | {p.stem for p in (year_dir / "Annotations").glob("*.xml")}
            try:
                ids, found = read_image_list(list_path, known_stems=known)
            except UserError as exc:  # not UTF-8: said with the other problems
                ids, found = [], [str(exc)]
            problems += found
            for image_path, annotated in annotated_images(
                    year_dir=year_dir, list_path=list_path, ids=ids, images_by_stem=images_by_year[year_dir],
                    problems=problems, log=log, class_names=class_names, include_difficult=True, summary=summary,
                    names_seen=names_seen, note_background=False):
                tally.add_image(annotated.class_ids, annotated.verdicts,
                                where=str(year_dir / "Annotations" / f"{image_path.stem}.xml"),
                                box_texts=[class_names[class_id] for class_id in annotated.class_ids])
                boxes_xyxy_cls = annotated.boxes_xyxy_cls
                records.append(ImageRecord(image_path=os.path.abspath(image_path), size=annotated.size,
                                           boxes_xyxy=boxes_xyxy_cls[:, :4], class_ids=boxes_xyxy_cls[:, 4].astype(
                                               np.int64), difficult=annotated.difficult))
        splits[split], tallies[split] = records, tally
    dataset = Dataset(root=str(root), format="voc", class_names=class_names, splits=splits, tallies=tallies)
    problems += [p for split, records in splits.items() for p in same_stem_problems(
        records, where=dataset.split_name(split))]
    met = "; ".join(f"{text}: {summary[key]}" for key, text in SUMMARY_LABELS.items() if summary[key])
    if met and not problems:
        log(f"{source}: {met}")
    return finish_dataset(dataset, problems=problems, log=log)


def _class_names(*, root: Path, year_dirs: list[Path], classes_path: str | None, log) -> list[str]:
    """The class names (see read_voc_dataset); a classes.txt beside the VOC<year> folders must agree with
    ``classes_path`` when both are there."""
    folders = [root, root.parent] if year_dirs == [root] else [root]
    beside = next((folder / CLASSES_FILE for folder in folders if (folder / CLASSES_FILE).is_file()), None)
    if classes_path is not None:
        names = get_classes(classes_path, log=log)
        if beside is not None:
            check_class_names(get_classes(beside, log=log), source=str(beside), classes_path=classes_path)
        return names
    if beside is not None:
        log(f"note: dataset {display_path(root)}: class names from {beside}")
        return check_class_names(get_classes(beside, log=log), source=str(beside), classes_path=None)
    seen = set()
    for year_dir in year_dirs:
        for xml_path in sorted((year_dir / "Annotations").glob("*.xml")):
            try:
                seen.update(obj["name"] for obj in load_voc_objects(xml_path))
            except ValueError:
                continue  # reported where the image's objects are read
    if not seen:
        raise UserError(f"dataset {display_path(root)} (voc): the XML files name no object; annotate the images "
                        f"(one <object> per box in Annotations/<id>.xml)")
    names = sorted(seen)
    log(f"note: dataset {display_path(root)}: no classes file given; class names from the XML files, sorted: "
        f"{names} (pass classes_path= to set their order)")
    return names


def write_voc_dataset(dataset: Dataset, out: Path, *, link_images: bool, log=print) -> Path:
    """Writes ``out``/VOC2007 (Annotations/<id>.xml with <size> and <difficult>, JPEGImages/, ImageSets/Main/
    <split>.txt, and trainval.txt when train and val are there) and ``out``/classes.txt, all or nothing (see
    utils/data/new_folder.py). Images are copied, or linked with ``link_images``; an image format VOC readers do not
    take (.tif, .webp, ...) is written as PNG of its upright pixels. The same image in two splits is written once;
    two images of one name in different splits get the split added to the later one's name. Returns ``out``."""
    names = _voc_file_names(dataset)
    converted = 0
    with staged_folder(out) as folder:
        year = folder / "VOC2007"
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (year / sub).mkdir(parents=True)
        written = set()
        for records in dataset.splits.values():
            for record in records:
                name = names[os.path.realpath(record.image_path)]
                if name in written:
                    continue
                written.add(name)
                target = year / "JPEGImages" / name
                if Path(record.image_path).suffix.lower() in IMAGE_EXTENSIONS:
                    place_image(source=record.image_path, target=target, link=link_images)
                else:
                    Image.fromarray(read_image_rgb(record.image_path)).save(target)
                    converted += 1
                (year / "Annotations" / f"{Path(name).stem}.xml").write_bytes(
                    _voc_xml(record=record, filename=name, class_names=dataset.class_names))
        ids = {split: [Path(names[os.path.realpath(r.image_path)]).stem for r in records]
               for split, records in dataset.splits.items()}
        if "train" in ids and "val" in ids:
            ids["trainval"] = ids["train"] + ids["val"]
        for split, split_ids in ids.items():
            (year / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids),
                                                                     encoding="utf-8")
        (folder / CLASSES_FILE).write_text("".join(f"{name}\n" for name in dataset.class_names), encoding="utf-8")
    if converted:
        log(f"note: {out}: {converted} images in formats VOC tools do not read were written as PNG")
    return Path(out)


def _voc_file_names(dataset: Dataset) -> dict[str, str]:
    """Image file (real path) -> its name in JPEGImages/: its own name, the split added before the extension when
    another image of another split has the same stem, .png for formats written as PNG."""
    names, stems = {}, set()
    for split, records in dataset.splits.items():
        for record in records:
            key = os.path.realpath(record.image_path)
            if key in names:
                continue
            path = Path(record.image_path)
            suffix = path.suffix if path.suffix.lower() in IMAGE_EXTENSIONS else ".png"
            stem, number = path.stem, 1
            while stem in stems:
                stem, number = f"{path.stem}_{split}" + (f"{number}" if number > 1 else ""), number + 1
            stems.add(stem)
            names[key] = stem + suffix
    return names


def _voc_xml(*, record: ImageRecord, filename: str, class_names: list[str]) -> bytes:
    """The VOC XML of one record: <size> upright, boxes in upright pixels (two decimals at most)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2007"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for key, value in zip(("width", "height", "depth"), (*record.size, 3)):
        ET.SubElement(size, key).text = str(value)
    for box, class_id, hard in zip(record.boxes_xyxy, record.class_ids, record.difficult):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[int(class_id)]
        ET.SubElement(obj, "difficult").text = str(int(hard))
        bndbox = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, key).text = f"{float(value):.2f}".rstrip("0").rstrip(".")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
