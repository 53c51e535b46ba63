"""COCO-json datasets: an instances json per split beside its images, read into the records of utils/data/dataset.py
and written back.

Layouts read (the split comes from the json's name: instances_train2017.json is train, *val* / *valid* val, *test*
test; a name without one is the test split):
- a folder with annotations/instances_<split>*.json (or annotations/<split>*.json when there is no instances file);
- a folder with <split>/_annotations.coco.json (Roboflow's export; the folder names the split);
- one json file given as the dataset.
Images: file_name (it may hold sub-folders) under the first of images/<split>/, images/<name>/ (train2017),
<name>/, <split>/, images/, the json's folder, the root that holds it.

bbox is [x, y, w, h] in pixels -> ``boxes_xyxy`` [x, y, x + w, y + h]; iscrowd=1 -> difficult=True (not trained on,
ignored by the evaluation). Category ids may be any integers (1, 3, 7, ...): class index = position among the
categories sorted by id, ``Dataset.category_ids`` keeps the map. A json width/height that is the raw frame of an
image with EXIF orientation 5-8 has its boxes rotated into the upright frame (utils/data/datacheck.py's rule);
another that disagrees with the image is reported and the boxes kept.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from utils.core.config import UserError
from utils.core.textfile import display_path
from utils.data.boxcheck import BoxTally
from utils.data.datacheck import raw_to_upright_xyxy
from utils.data.images import image_info
from utils.data.new_folder import place_image, staged_folder
from utils.data.records import SPLITS, Dataset, check_class_names, checked_record, finish_dataset, same_stem_problems

_UTF8_BOM = b"\xef\xbb\xbf"
_ROBOFLOW_JSON = "_annotations.coco.json"
_EXAMPLES = 3


def looks_like(root: Path) -> bool:
    """A json file, or a folder holding the instances json of a split (see the module docstring)."""
    root = Path(root)
    if root.is_file():
        return root.suffix.lower() == ".json"
    return root.is_dir() and bool(find_jsons(root))


def split_of_name(name: str) -> str | None:
    """'train', 'val' or 'test' from a json or folder name (instances_val2017.json, valid), None when it names none."""
    stem = name.lower().removesuffix(".json").removesuffix(".coco").removeprefix("instances").lstrip("_-")
    return next((split for split in SPLITS if stem.startswith(split)), None)


def find_jsons(root: Path) -> list[Path]:
    """The instances jsons of a dataset folder (see the module docstring), sorted."""
    folder = root / "annotations"
    found = sorted(folder.glob("instances*.json")) if folder.is_dir() else []
    if not found and folder.is_dir():  # captions_*.json / person_keypoints_*.json never name a split first
        found = [path for path in sorted(folder.glob("*.json")) if split_of_name(path.name)]
    return found + sorted(root.glob(f"*/{_ROBOFLOW_JSON}"))


def _split_jsons(root: Path, *, log) -> dict[str, Path]:
    """split -> its json; UserError when there is none or two name one split."""
    paths = [root] if root.is_file() else find_jsons(root)
    if not paths:
        raise UserError(f"COCO dataset {display_path(root)}: no annotations/instances_<split>*.json (nor "
                        f"<split>/{_ROBOFLOW_JSON}); give the folder holding annotations/, or the json file")
    splits: dict[str, Path] = {}
    problems = []
    for path in paths:
        split = split_of_name(path.name) or split_of_name(path.parent.name)
        if split is None:
            split = "test"
            log(f"note: {display_path(path)}: its name names no split (train, val, test); read as the test split")
        if split in splits:
            problems.append(f"{display_path(splits[split])} and {display_path(path)} are both the {split} split; "
                            f"move one away")
        splits.setdefault(split, path)
    if problems:
        raise UserError(f"COCO dataset {display_path(root)}: " + "; ".join(problems))
    return dict(sorted(splits.items(), key=lambda item: SPLITS.index(item[0])))


def read_json(path: Path, *, log=print) -> tuple[object, str]:
    """(the parsed json, '') or (None, the problem naming the file, line and column). A UTF-8 byte-order mark is
    removed with a note; bytes that are not UTF-8 are a problem showing them."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"{display_path(path)}: cannot be read ({exc.strerror})"
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM):]
        log(f"note: json {display_path(path)}: a UTF-8 byte-order mark (removed)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        shown = data[max(line_start, exc.start - 30):exc.start + 30]
        return None, (f"{display_path(path)} line {line} column {exc.start - line_start + 1}: not UTF-8 text: "
                      f"{shown!r}; save the file as UTF-8")
    try:
        return json.loads(text), ""
    except json.JSONDecodeError as exc:
        return None, f"{display_path(path)} line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})"


class _Problems:
    """Problems grouped by what is wrong: one line per kind, with how often and the first few examples."""

    def __init__(self):
        self.groups: dict[str, list[str]] = {}

    def add(self, what: str, example: str = "") -> None:
        self.groups.setdefault(what, []).append(example)

    def lines(self) -> list[str]:
        lines = []
        for what, examples in self.groups.items():
            shown = [example for example in examples if example][:_EXAMPLES]
            if len(examples) == 1:
                lines.append(what + (f": {shown[0]}" if shown else ""))
            else:
                lines.append(f"{what}: {len(examples)} times" + (f", e.g. {'; '.join(shown)}" if shown else ""))
        return lines


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _categories(docs: dict[str, dict], jsons: dict[str, Path], problems: _Problems) -> list[tuple[int, str]]:
    """[(category id, name)] sorted by id, the same in every json (problems otherwise)."""
    found: dict[str, list[tuple[int, str]]] = {}
    for split, doc in docs.items():
        where = display_path(jsons[split])
        entries = doc.get("categories")
        if not isinstance(entries, list) or not entries:
            problems.add(f"{where}: 'categories' is not a non-empty list of {{id, name}}")
            continue
        pairs = []
        for number, entry in enumerate(entries, start=1):
            if isinstance(entry, dict) and _is_int(entry.get("id")) and isinstance(entry.get("name"), str):
                pairs.append((entry["id"], entry["name"]))
            else:
                problems.add(f"{where}: a category without an integer id and a name", f"category #{number} {entry}")
        ids = [category_id for category_id, _ in pairs]
        for category_id in sorted({i for i in ids if ids.count(i) > 1}):
            problems.add(f"{where}: category id {category_id} is listed more than once")
        found[split] = sorted(set(pairs))
    first = next(iter(found), None)
    for split in found:
        if found[split] != found[first]:
            problems.add(f"{display_path(jsons[split])} has the categories {found[split]}, but "
                         f"{display_path(jsons[first])} has {found[first]}; every split needs the same categories")
    return found.get(first, [])


def _image_folders(json_path: Path, *, root: Path, split: str) -> list[Path]:
    """The folders an image's file_name is looked up in, in order (see the module docstring)."""
    base = root if root.is_dir() else json_path.parent
    if not root.is_dir() and base.name == "annotations":
        base = base.parent
    name = json_path.name.removesuffix(".json").removeprefix("instances").lstrip("_-")
    candidates = [base / "images" / split, base / "images" / name, base / name, base / split, base / "images",
                  json_path.parent, base]
    return [folder for folder in dict.fromkeys(candidates) if folder.is_dir()]


def _find_image(file_name: str, folders: list[Path]) -> Path | None:
    """The first folder's file named file_name (backslashes of a Windows export read as folders), or None."""
    for name in dict.fromkeys((file_name, file_name.replace("\\", "/"))):
        for folder in folders:
            if (folder / name).is_file():
                return folder / name
    return None


def _bbox_xyxy(bbox) -> list[float] | None:
    """[x, y, x + w, y + h] from a COCO bbox [x, y, w, h]; None when it is not 4 finite numbers."""
    if not isinstance(bbox, list) or len(bbox) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        return None
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def _annotations_by_image(doc: dict, *, where: str, image_ids: set, category_index: dict[int, int] | None,
                          problems: _Problems) -> dict:
    """image id -> [(x1, y1, x2, y2, class index), crowd] of the annotations that are well formed."""
    entries = doc.get("annotations", [])
    by_image: dict = {}
    if not isinstance(entries, list):
        problems.add(f"{where}: 'annotations' is not a list")
        return by_image
    for number, entry in enumerate(entries, start=1):
        name = f"annotation #{number}" + (f" (id {entry.get('id')})" if isinstance(entry, dict) else "")
        if not isinstance(entry, dict):
            problems.add(f"{where}: an annotation that is not an object", name)
            continue
        image_id, category_id, crowd = entry.get("image_id"), entry.get("category_id"), entry.get("iscrowd", 0)
        box = _bbox_xyxy(entry.get("bbox"))
        ok = True
        if not isinstance(image_id, (int, str)) or image_id not in image_ids:
            problems.add(f"{where}: an annotation names an image id that 'images' does not list",
                         f"{name}: image_id {image_id!r}")
            ok = False
        if category_index is not None and (not _is_int(category_id) or category_id not in category_index):
            problems.add(f"{where}: an annotation names a category id that 'categories' does not list (ids "
                         f"{sorted(category_index)})", f"{name}: category_id {category_id!r}")
            ok = False
        if box is None:
            problems.add(f"{where}: an annotation's bbox is not 4 numbers [x, y, width, height] in pixels",
                         f"{name}: bbox {entry.get('bbox')!r}")
            ok = False
        if crowd not in (0, 1):  # True and False compare equal to 1 and 0
            problems.add(f"{where}: an annotation's iscrowd is not 0 or 1", f"{name}: iscrowd {crowd!r}")
            ok = False
        if ok and category_index is not None:
            by_image.setdefault(image_id, []).append(([*box, category_index[category_id]], bool(crowd)))
    return by_image


def _read_split(split: str, *, doc, json_path: Path, root: Path, class_names: list[str],
                category_index: dict[int, int] | None, problems: _Problems, log) -> tuple[list, BoxTally]:
    """The records of one split's json and their tally; every problem found goes to ``problems``."""
    where = display_path(json_path)
    tally = BoxTally(class_names)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        problems.add(f"{where}: not a COCO instances json (an object with an 'images' list, 'annotations' and "
                     f"'categories')")
        return [], tally
    images: dict = {}
    for number, entry in enumerate(doc["images"], start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), (int, str)) or isinstance(
                entry.get("id"), bool) or not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
            problems.add(f"{where}: an image without an id and a file_name", f"image #{number} {entry!r}"[:120])
        elif entry["id"] in images:
            problems.add(f"{where}: image id listed twice", f"id {entry['id']!r}: {images[entry['id']]['file_name']}"
                         f" and {entry['file_name']}")
        else:
            images[entry["id"]] = entry
    by_image = _annotations_by_image(doc, where=where, image_ids=set(images), category_index=category_index,
                                     problems=problems)
    folders = _image_folders(json_path, root=root, split=split)
    records, notes = [], _Problems()
    for image_id, entry in images.items():
        path = _find_image(entry["file_name"], folders)
        if path is None:
            problems.add(f"{where}: images not found under any of {[display_path(f) for f in folders] or root}",
                         entry["file_name"])
            continue
        try:
            info = image_info(path, decode=True)
        except UserError as exc:
            problems.add(f"{where}: images that cannot be read", str(exc))
            continue
        boxes = by_image.get(image_id, [])
        boxes_xyxy_cls = np.array([box for box, _ in boxes], dtype=np.float64).reshape(-1, 5)
        json_size = (entry.get("width"), entry.get("height"))
        if info.turns and json_size == info.raw_size and info.raw_size != info.upright_size:
            boxes_xyxy_cls = raw_to_upright_xyxy(boxes_xyxy_cls, orientation=info.orientation, raw_size=info.raw_size)
            notes.add(f"note: {where}: width/height is the raw frame of an image with EXIF orientation 5-8; boxes "
                      f"rotated to the upright frame the loader uses", entry["file_name"])
        elif all(_is_int(v) for v in json_size) and json_size != info.upright_size:
            notes.add(f"note: {where}: width/height disagrees with the image (upright); boxes kept as written and "
                      f"clipped to the image", f"{entry['file_name']} {json_size[0]}x{json_size[1]} vs "
                      f"{info.upright_size[0]}x{info.upright_size[1]}")
        records.append(checked_record(image_path=path, size=info.upright_size, boxes_xyxy_cls=boxes_xyxy_cls,
                                      difficult=np.array([crowd for _, crowd in boxes], dtype=bool), tally=tally,
                                      where=f"{json_path.name} {entry['file_name']}", source_id=image_id))
    for line in notes.lines():
        log(line)
    for problem in same_stem_problems(records, where=f"{where} ({split})"):
        problems.add(problem)
    return records, tally


def read_coco_dataset(root: Path, *, classes_path: str | None, log=print) -> Dataset:
    """The COCO-json dataset at ``root`` (a folder or a json file; see the module docstring), read and checked: every
    json parsed, every image decoded, every annotation's image, category and bbox checked. Raises one UserError
    listing every problem; prints per split and class what was kept and dropped; stops when the training split has
    nothing to train on (utils/data/dataset.py: finish_dataset)."""
    root = Path(root)
    jsons = _split_jsons(root, log=log)
    problems = _Problems()
    docs = {}
    for split, path in jsons.items():
        doc, problem = read_json(path, log=log)
        if problem:
            problems.add(problem)
        elif not isinstance(doc, dict):
            problems.add(f"{display_path(path)}: not a COCO instances json (an object with 'images', 'annotations' "
                         f"and 'categories')")
        else:
            docs[split] = doc
    categories = _categories(docs, jsons, problems)
    class_names = [name for _, name in categories]
    try:
        check_class_names(class_names, source=f"the categories of {display_path(next(iter(jsons.values())))}",
                          classes_path=classes_path)
    except UserError as exc:
        problems.add(str(exc))
    category_index = {category_id: index for index, (category_id, _) in enumerate(categories)} if categories else None
    splits, tallies = {}, {}
    for split, doc in docs.items():
        splits[split], tallies[split] = _read_split(split, doc=doc, json_path=jsons[split], root=root,
                                                    class_names=class_names, category_index=category_index,
                                                    problems=problems, log=log)
    dataset = Dataset(root=str(root), format="coco", class_names=class_names, splits=splits,
                      category_ids=[category_id for category_id, _ in categories],
                      coco_json={split: str(path) for split, path in jsons.items()}, tallies=tallies)
    return finish_dataset(dataset, problems=problems.lines(), log=log)


def write_coco_dataset(dataset: Dataset, out: Path, *, link_images: bool) -> Path:
    """``out``/images/<split>/ (the images, copied or linked) and ``out``/annotations/instances_<split>.json per
    split: bbox [x, y, w, h] in upright pixels rounded to 2 decimals, area w * h, iscrowd from difficult, width and
    height the upright size, image ids 1..N, category ids the source's (1..C when it has none). Written whole or not
    at all (utils/data/new_folder.py); returns ``out``."""
    category_ids = dataset.category_ids or list(range(1, len(dataset.class_names) + 1))
    categories = [{"id": int(category_id), "name": name, "supercategory": ""}
                  for category_id, name in zip(category_ids, dataset.class_names)]
    with staged_folder(out) as folder:
        (folder / "annotations").mkdir()
        for split, records in dataset.splits.items():
            image_folder = folder / "images" / split
            image_folder.mkdir(parents=True)
            images, annotations = [], []
            for image_id, record in enumerate(records, start=1):
                name = Path(record.image_path).name
                place_image(source=record.image_path, target=image_folder / name, link=link_images)
                images.append({"id": image_id, "file_name": name, "width": int(record.size[0]),
                               "height": int(record.size[1])})
                for box_xyxy, class_id, difficult in zip(record.boxes_xyxy, record.class_ids, record.difficult):
                    x, y = round(float(box_xyxy[0]), 2), round(float(box_xyxy[1]), 2)
                    w = round(float(box_xyxy[2] - box_xyxy[0]), 2)
                    h = round(float(box_xyxy[3] - box_xyxy[1]), 2)
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                        "category_id": int(category_ids[class_id]), "bbox": [x, y, w, h],
                                        "area": round(w * h, 2), "iscrowd": int(difficult)})
            doc = {"info": {"description": f"{dataset.format} dataset {display_path(dataset.root)}, {split} split"},
                   "licenses": [], "images": images, "annotations": annotations, "categories": categories}
            text = json.dumps(doc, ensure_ascii=False)
            (folder / "annotations" / f"instances_{split}.json").write_text(text + "\n", encoding="utf-8")
    return Path(out)
