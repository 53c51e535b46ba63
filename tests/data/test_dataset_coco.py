"""COCO-json datasets in and out: a tiny instances json written by hand (category ids 1, 3, 7 listed out of order,
crowd boxes, a background image, a file_name in a sub-folder) read into records checked against boxes computed by
hand; every bad input named in one error; the json our writer makes loads in pycocotools and reads back the same."""
import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from pycocotools.coco import COCO

from utils.core.config import UserError
from utils.data import coco_json
from utils.data.coco_json import looks_like, read_coco_dataset, split_of_name, write_coco_dataset

CATEGORIES = [{"id": 7, "name": "zebra"}, {"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]
IMAGES = {"train": [{"id": 10, "file_name": "a.jpg", "width": 64, "height": 48},
                    {"id": 20, "file_name": "sub/b.png", "width": 80, "height": 60},
                    {"id": 30, "file_name": "c.jpg", "width": 32, "height": 32}],
          "val": [{"id": "d-1", "file_name": "d.jpg", "width": 64, "height": 48}]}
ANNOTATIONS = {"train": [{"id": 1, "image_id": 10, "category_id": 1, "bbox": [4, 6, 10, 12], "iscrowd": 0},
                         {"id": 2, "image_id": 10, "category_id": 7, "bbox": [20.5, 10, 30, 20.25]},
                         {"id": 3, "image_id": 20, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1},
                         {"id": 4, "image_id": 20, "category_id": 3, "bbox": [50, 20, 25, 35], "iscrowd": 0},
                         {"id": 5, "image_id": 20, "category_id": 1, "bbox": [70, 50, 20, 20], "iscrowd": 0}],
               "val": [{"id": 1, "image_id": "d-1", "category_id": 7, "bbox": [1, 2, 3, 4], "iscrowd": 0}]}
# By hand: classes sorted by category id -> cat 0, dog 1, zebra 2; xyxy = [x, y, x + w, y + h], clipped to the image.
EXPECTED = {"train": {"a": ([[4, 6, 14, 18], [20.5, 10, 50.5, 30.25]], [0, 2], [False, False]),
                      "b": ([[0, 0, 40, 30], [50, 20, 75, 55], [70, 50, 80, 60]], [1, 1, 0], [True, False, False]),
                      "c": ([], [], [])},
            "val": {"d": ([[1, 2, 4, 6]], [2], [False])}}


def docs() -> dict:
    return {split: {"images": copy.deepcopy(IMAGES[split]), "annotations": copy.deepcopy(ANNOTATIONS[split]),
                    "categories": copy.deepcopy(CATEGORIES)} for split in IMAGES}


def write_coco(root: Path, documents: dict | None = None, *, names=None) -> Path:
    """root/annotations/instances_<split>2017.json and root/<split>2017/<file_name> images of the listed sizes."""
    documents = docs() if documents is None else documents
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, doc in documents.items():
        for entry in doc["images"]:
            path = root / f"{split}2017" / entry["file_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (entry.get("width", 64), entry.get("height", 48)), (90, 120, 30)).save(path)
        name = (names or {}).get(split, f"instances_{split}2017.json")
        (root / "annotations" / name).write_text(json.dumps(doc), encoding="utf-8")
    return root


def boxes_of(dataset) -> dict:
    """split -> stem -> (boxes_xyxy, class ids, difficult) as plain lists."""
    return {split: {Path(r.image_path).stem: (r.boxes_xyxy.tolist(), r.class_ids.tolist(), r.difficult.tolist())
                    for r in records} for split, records in dataset.splits.items()}


def read(root, **kwargs):
    return read_coco_dataset(root, classes_path=kwargs.pop("classes_path", None), log=kwargs.pop("log", print))


def test_records_match_boxes_computed_by_hand(tmp_path, capsys):
    root = write_coco(tmp_path / "coco")
    dataset = read(root)
    assert dataset.format == "coco"
    assert dataset.class_names == ["cat", "dog", "zebra"]
    assert dataset.category_ids == [1, 3, 7]
    assert dataset.coco_json == {split: str(root / "annotations" / f"instances_{split}2017.json")
                                 for split in ("train", "val")}
    assert boxes_of(dataset) == EXPECTED
    b = dataset.splits["train"][1]
    assert b.image_path == str(root / "train2017" / "sub" / "b.png") and b.size == (80, 60) and b.source_id == 20
    assert dataset.splits["val"][0].source_id == "d-1"
    out = capsys.readouterr().out
    assert "train: 3 images, 1 background" in out


def test_annotation_file_leaves_crowd_boxes_out(tmp_path):
    dataset = read(write_coco(tmp_path / "coco"))
    lines = dataset.annotation_file("train").lines
    assert lines[1].endswith("b.png 50,20,75,55,1 70,50,80,60,0")
    assert "0,0,40,30,1" in dataset.annotation_file("train", include_difficult=True).lines[1]


def test_format_detection_and_split_names(tmp_path):
    root = write_coco(tmp_path / "coco")
    assert looks_like(root) and looks_like(root / "annotations" / "instances_val2017.json")
    assert not looks_like(tmp_path) and not looks_like(root / "train2017")
    assert [split_of_name(n) for n in ("instances_train2017.json", "instances_val2014.json", "valid", "test.json",
                                       "instances_default.json", "_annotations.coco.json")] == [
        "train", "val", "val", "test", None, None]


def test_one_json_file_is_the_dataset(tmp_path):
    root = write_coco(tmp_path / "coco")
    dataset = read(root / "annotations" / "instances_val2017.json")
    assert list(dataset.splits) == ["val"] and boxes_of(dataset)["val"] == EXPECTED["val"]


def test_roboflow_export_layout(tmp_path, capsys):
    for folder, split in (("train", "train"), ("valid", "val")):
        doc = docs()[split]
        (tmp_path / "rf" / folder).mkdir(parents=True)
        for entry in doc["images"]:  # images beside the json
            entry["file_name"] = Path(entry["file_name"]).name
            Image.new("RGB", (entry["width"], entry["height"])).save(tmp_path / "rf" / folder / entry["file_name"])
        (tmp_path / "rf" / folder / "_annotations.coco.json").write_text(json.dumps(doc))
    dataset = read(tmp_path / "rf")
    assert list(dataset.splits) == ["train", "val"]
    assert boxes_of(dataset)["train"]["b"] == EXPECTED["train"]["b"]


def test_classes_file_checked_against_the_categories(tmp_path):
    root = write_coco(tmp_path / "coco")
    (tmp_path / "ok.txt").write_bytes(b"\xef\xbb\xbfcat\r\ndog\r\nzebra\r\n")
    assert read(root, classes_path=str(tmp_path / "ok.txt")).class_names == ["cat", "dog", "zebra"]
    (tmp_path / "other.txt").write_text("dog\ncat\nzebra\n")
    with pytest.raises(UserError, match="other.txt lists"):
        read(root, classes_path=str(tmp_path / "other.txt"))


def test_json_with_a_byte_order_mark_is_read_with_a_note(tmp_path, capsys):
    root = write_coco(tmp_path / "coco")
    path = root / "annotations" / "instances_train2017.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert boxes_of(read(root)) == EXPECTED
    assert f"note: json {path}: a UTF-8 byte-order mark (removed)" in capsys.readouterr().out


def bad(root: Path, *expected: str) -> str:
    with pytest.raises(UserError) as info:
        read(root)
    message = str(info.value)
    for text in expected:
        assert text in message, message
    return message


def test_json_that_does_not_parse_names_file_line_and_column(tmp_path):
    root = write_coco(tmp_path / "coco")
    path = root / "annotations" / "instances_val2017.json"
    path.write_text('{\n  "images": [,\n')  # the comma is line 2, column 14
    bad(root, f"{path} line 2 column 14: not valid JSON (Expecting value)")


def test_json_that_is_not_utf8_names_file_line_and_bytes(tmp_path):
    root = write_coco(tmp_path / "coco")
    path = root / "annotations" / "instances_val2017.json"
    path.write_bytes(b'{"images": [],\n "x": "caf\xe9"}')
    bad(root, f"{path} line 2 column 11: not UTF-8 text", "caf\\xe9", "save the file as UTF-8")


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["annotations"].append({"id": 9, "image_id": 99, "category_id": 1, "bbox": [1, 1, 2, 2]}),
     ["names an image id that 'images' does not list", "image_id 99"]),
    (lambda d: d["annotations"].append({"id": 9, "image_id": 10, "category_id": 2, "bbox": [1, 1, 2, 2]}),
     ["names a category id that 'categories' does not list (ids [1, 3, 7])", "category_id 2"]),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), ["bbox is not 4 numbers", "bbox [1, 2, 3]"]),
    (lambda d: d["annotations"][0].update(bbox=["1", 2, 3, 4]), ["bbox is not 4 numbers"]),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, float("nan"), 4]), ["bbox is not 4 numbers"]),
    (lambda d: d["annotations"][0].update(iscrowd=2), ["iscrowd is not 0 or 1"]),
    (lambda d: d["images"].append({"id": 10, "file_name": "c.jpg"}), ["image id listed twice", "a.jpg and c.jpg"]),
    (lambda d: d["categories"].append({"id": 3, "name": "cow"}), ["category id 3 is listed more than once"]),
    (lambda d: d["categories"].append({"id": 4, "name": "cat"}), ["'cat' repeats class 0"]),
    (lambda d: d.update(categories=[]), ["'categories' is not a non-empty list"]),
    (lambda d: d.update(images={}), ["not a COCO instances json"]),
])
def test_bad_annotations_are_named(tmp_path, change, expected):
    documents = docs()
    change(documents["train"])
    root = write_coco(tmp_path / "coco", {"train": documents["train"]})
    bad(root, *expected)


def test_missing_image_is_named_with_the_folders_looked_in(tmp_path):
    root = write_coco(tmp_path / "coco")
    (root / "train2017" / "sub" / "b.png").unlink()
    bad(root, "instances_train2017.json: images not found under any of", str(root / "train2017"), "sub/b.png")


def test_every_problem_is_listed_at_once(tmp_path):
    documents = docs()
    documents["train"]["annotations"][0]["image_id"] = 99
    documents["val"]["annotations"][0]["bbox"] = [1, 2]
    root = write_coco(tmp_path / "coco", documents)
    (root / "train2017" / "c.jpg").unlink()
    message = bad(root, "image_id 99", "bbox [1, 2]", "c.jpg")
    assert message.startswith(f"3 problems in dataset {root} (coco):")


def test_two_images_of_a_split_with_one_name_are_refused(tmp_path):
    documents = docs()
    documents["train"]["images"].append({"id": 40, "file_name": "sub/a.jpg", "width": 64, "height": 48})
    root = write_coco(tmp_path / "coco", documents)
    bad(root, "instances_train2017.json (train): 2 images are named 'a'", f"{root / 'train2017' / 'a.jpg'}, "
        f"{root / 'train2017' / 'sub' / 'a.jpg'}")


def test_two_jsons_of_one_split_are_refused(tmp_path):
    root = write_coco(tmp_path / "coco")
    (root / "annotations" / "instances_train2014.json").write_text("{}")
    bad(root, "instances_train2014.json and", "instances_train2017.json are both the train split")


def test_categories_differing_between_splits_are_refused(tmp_path):
    documents = docs()
    documents["val"]["categories"][0]["name"] = "horse"
    bad(write_coco(tmp_path / "coco", documents), "every split needs the same categories")


def test_a_class_without_a_box_to_train_on_stops_after_the_report(tmp_path, capsys):
    documents = docs()
    documents["train"]["annotations"][3]["iscrowd"] = 1  # dog: both boxes crowd
    documents["train"]["annotations"][1]["bbox"] = [20, 10, -5, 4]  # zebra: inverted
    message = bad(write_coco(tmp_path / "coco", documents), "2 problems")
    assert "class 'dog' has no box to train on (2 marked difficult or crowd, which" in message
    assert "class 'zebra' has no box to train on (1 inverted" in message
    assert "zebra: 0 kept, 1 dropped" in capsys.readouterr().out


def orientation_6_image(path: Path, *, raw_box_xyxy: tuple[int, int, int, int]) -> None:
    """A 40 x 20 raw JPEG with a white rectangle on the raw pixels and EXIF orientation 6 (upright 20 x 40)."""
    raw = np.zeros((20, 40, 3), dtype=np.uint8)
    x1, y1, x2, y2 = raw_box_xyxy
    raw[y1:y2, x1:x2] = 255
    image = Image.fromarray(raw)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, exif=exif, quality=100)


def test_raw_frame_boxes_of_a_turned_image_are_rotated_upright(tmp_path, capsys):
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    orientation_6_image(root / "images" / "r.jpg", raw_box_xyxy=(2, 3, 12, 8))
    doc = {"images": [{"id": 1, "file_name": "r.jpg", "width": 40, "height": 20}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 5]}],
           "categories": [{"id": 1, "name": "box"}]}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    record = read(root).splits["train"][0]
    with Image.open(root / "images" / "r.jpg") as image:  # the oracle: where PIL shows the rectangle upright
        upright = np.asarray(ImageOps.exif_transpose(image).convert("L")) > 128
    ys, xs = np.nonzero(upright)
    assert record.size == (20, 40)
    np.testing.assert_allclose(record.boxes_xyxy[0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1)
    assert "width/height is the raw frame of an image with EXIF orientation" in capsys.readouterr().out


def test_width_and_height_that_disagree_with_the_image_are_reported(tmp_path, capsys):
    documents = docs()
    root = write_coco(tmp_path / "coco", documents)
    documents["train"]["images"][0]["width"] = 100
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(documents["train"]))
    assert boxes_of(read(root)) == EXPECTED
    assert "a.jpg 100x48 vs 64x48" in capsys.readouterr().out


def test_written_json_loads_in_pycocotools_and_reads_back(tmp_path):
    dataset = read(write_coco(tmp_path / "coco"))
    out = write_coco_dataset(dataset, tmp_path / "out", link_images=False)
    for split in ("train", "val"):
        coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
        assert len(coco.getAnnIds()) == sum(len(r.class_ids) for r in dataset.splits[split])
        assert len(coco.getImgIds()) == len(dataset.splits[split])
        assert sorted(coco.getCatIds()) == [1, 3, 7]
    b = COCO(str(out / "annotations" / "instances_train.json")).imgToAnns[2]
    assert [(a["bbox"], a["category_id"], a["iscrowd"], a["area"]) for a in b] == [
        ([0.0, 0.0, 40.0, 30.0], 3, 1, 1200.0), ([50.0, 20.0, 25.0, 35.0], 3, 0, 875.0),
        ([70.0, 50.0, 10.0, 10.0], 1, 0, 100.0)]
    again = read(out)
    assert boxes_of(again) == EXPECTED and again.class_names == dataset.class_names
    assert (out / "images" / "train" / "b.png").is_file() and not (out / "images" / "train" / "b.png").is_symlink()


def test_writer_refuses_a_non_empty_out_and_leaves_nothing_when_it_fails(tmp_path, monkeypatch):
    dataset = read(write_coco(tmp_path / "coco"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UserError, match="exists and is not empty"):
        write_coco_dataset(dataset, tmp_path / "full", link_images=True)
    calls = []

    def failing(**kwargs):
        calls.append(kwargs)
        if len(calls) == 3:
            raise OSError("disk full")
        os.link(kwargs["source"], kwargs["target"])

    monkeypatch.setattr(coco_json, "place_image", failing)
    with pytest.raises(OSError, match="disk full"):
        write_coco_dataset(dataset, tmp_path / "new", link_images=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco", "full"]
