"""The VOC and YOLO-txt readers and writers: a tiny YOLO dataset whose boxes are worked out by hand, the bundled BCCD
devkit against the lines voc_annotation.py writes, round trips between the two formats, a VOC devkit's difficult
objects, and every kind of bad YOLO input, each named at its file and line."""
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import (CLASSES, REPO, TINY_YOLO, TINY_YOLO_NAMES, TINY_YOLO_YAML, write_shapes_voc, write_tiny_yolo,
                      write_truncated_jpeg)

import voc_annotation
from utils.core import textfile
from utils.core.config import UserError
from utils.data.dataset import detect_format
from utils.data.voc_dataset import read_voc_dataset, write_voc_dataset
from utils.data.yolo_txt import read_yolo_dataset, write_yolo_dataset

BCCD_CLASSES = str(REPO / "model_data" / "bccd_classes.txt")


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    monkeypatch.setattr(textfile, "_noted", set())


def quiet(*_args, **_kwargs):
    return None


def boxes_by_name(records) -> dict[str, list[tuple]]:
    """Image file name -> its boxes as (x1, y1, x2, y2, class) tuples, in the order the annotation gives them."""
    return {Path(r.image_path).name: [tuple(float(v) for v in box) + (int(c),)
                                      for box, c in zip(r.boxes_xyxy, r.class_ids)] for r in records}


def assert_boxes(records, expected: dict[str, list[tuple]], *, tolerance_px: float = 1e-9) -> None:
    """The records hold the images named in ``expected`` (by stem, in order), each with its boxes (x1, y1, x2, y2,
    class) within ``tolerance_px``."""
    got = boxes_by_name(records)
    assert [Path(name).stem for name in got] == [Path(name).stem for name in expected]
    for (name, boxes), other in zip(got.items(), expected.values()):
        assert len(boxes) == len(other), name
        if boxes:
            np.testing.assert_allclose(np.array(boxes), np.array(other), atol=tolerance_px, err_msg=name)


def hand_boxes(split: str) -> dict[str, list[tuple]]:
    return {name: boxes for name, (_, _, boxes) in TINY_YOLO[split].items()}


def assert_same_boxes(records, expected_records, *, tolerance_px: float) -> None:
    """Split records hold the same images (by name), and per image the same boxes within ``tolerance_px``."""
    got, expected = boxes_by_name(records), boxes_by_name(expected_records)
    assert [Path(name).stem for name in got] == [Path(name).stem for name in expected]
    for (name, boxes), other in zip(got.items(), expected.values()):
        assert len(boxes) == len(other), name
        if boxes:
            np.testing.assert_allclose(np.array(boxes), np.array(other), atol=tolerance_px, err_msg=name)


def test_tiny_yolo_boxes_are_the_pixels_worked_out_by_hand(tmp_path):
    root = write_tiny_yolo(tmp_path / "tiny")
    assert detect_format(root) == "yolo" and detect_format(root / "data.yaml") == "yolo"
    log = []
    dataset = read_yolo_dataset(root, classes_path=None, log=log.append)
    assert dataset.class_names == TINY_YOLO_NAMES and list(dataset.splits) == ["train", "val"]
    for split, images in TINY_YOLO.items():
        assert_boxes(dataset.records(split), hand_boxes(split))
        assert {Path(r.image_path).name: r.size for r in dataset.records(split)} == {
            name: size for name, (size, _, _) in images.items()}
    record = dataset.records("train")[0]
    assert os.path.isabs(record.image_path) and record.boxes_xyxy.dtype == np.float64
    assert not any(r.difficult.any() for r in dataset.records("train"))
    assert dataset.tallies["train"].background == 1 and dataset.tallies["train"].kept.tolist() == [2, 2]
    assert "empty label files (background): 1" in "\n".join(log)
    line = dataset.annotation_file("val").lines[0]
    assert line == f"{root / 'images' / 'val' / 'd.jpg'} 0,0,60,40,0 54,36,66,44,1"


@pytest.mark.parametrize("names_file", ["classes.txt", "obj.names"])
def test_folders_without_yaml_take_the_names_file(tmp_path, names_file):
    root = write_tiny_yolo(tmp_path / "tiny", yaml_text=None)
    (root / names_file).write_text("circle\nsquare\n")
    assert detect_format(root) == "yolo"
    dataset = read_yolo_dataset(root, classes_path=None, log=quiet)
    assert dataset.class_names == TINY_YOLO_NAMES
    assert_boxes(dataset.records("val"), hand_boxes("val"))


def test_folders_without_any_names_is_an_error_saying_where_names_go(tmp_path):
    root = write_tiny_yolo(tmp_path / "tiny", yaml_text=None)
    with pytest.raises(UserError, match=r"no class names: no data.yaml, and no classes.txt or obj.names"):
        read_yolo_dataset(root, classes_path=None, log=quiet)
    classes = tmp_path / "names.txt"
    classes.write_text("circle\nsquare\n")
    assert read_yolo_dataset(root, classes_path=str(classes), log=quiet).class_names == TINY_YOLO_NAMES


def test_split_lists_and_roboflow_paths(tmp_path):
    root = write_tiny_yolo(tmp_path / "tiny", yaml_text="train: lists/train.txt\nval: ../images/val\nnames: "
                                                        "[circle, square]\n")
    (root / "lists").mkdir()
    (root / "lists" / "train.txt").write_text("./../images/train/a.jpg\n\n../images/train/b.png\n")
    dataset = read_yolo_dataset(root, classes_path=None, log=quiet)
    assert list(boxes_by_name(dataset.records("train"))) == ["a.jpg", "b.png"]
    assert [Path(r.image_path).name for r in dataset.records("val")] == ["d.jpg"]


def test_bccd_voc_reader_gives_the_boxes_voc_annotation_writes(tmp_path):
    voc_annotation.main(["--annotation_mode=2", f"--VOCdevkit_path={REPO / 'VOCdevkit'}",
                         f"--classes_path={BCCD_CLASSES}", f"--out_dir={tmp_path}"])
    dataset = read_voc_dataset(REPO / "VOCdevkit", classes_path=BCCD_CLASSES, log=quiet)
    assert dataset.class_names == CLASSES and dataset.format == "voc"
    box = re.compile(r"^-?[\d.]+,-?[\d.]+,-?[\d.]+,-?[\d.]+,\d+$")
    for split in ("train", "val", "test"):
        expected = {}
        for line in (tmp_path / f"2007_{split}.txt").read_text().splitlines()[1:]:
            words = line.split(" ")
            count = next(i for i in range(len(words)) if all(box.match(w) for w in words[i:]))
            expected[" ".join(words[:count])] = sorted(tuple(map(float, w.split(","))) for w in words[count:])
        got = {r.image_path: sorted(tuple(map(float, b)) + (float(c),) for b, c in zip(r.boxes_xyxy, r.class_ids))
               for r in dataset.records(split)}
        assert got == expected, split
    assert [len(dataset.records(s)) for s in ("train", "val", "test")] == [205, 87, 72]
    assert dataset.tallies["train"].why_dropped() == "1 zero width or height"


def test_bccd_voc_to_yolo_and_back(tmp_path):
    voc = read_voc_dataset(REPO / "VOCdevkit", classes_path=BCCD_CLASSES, log=quiet)
    out = write_yolo_dataset(voc, tmp_path / "bccd_yolo", link_images=True)
    assert (out / "data.yaml").read_text() == ("train: images/train\nval: images/val\ntest: images/test\nnc: 3\n"
                                               "names: [RBC, WBC, Platelets]\n")
    label = (out / "labels" / "train" / "BloodImage_00001.txt").read_text().splitlines()[0]
    assert label == "1 0.276562 0.828125 0.340625 0.343750"  # WBC 68,315,286,480 of 640 x 480, by hand
    yolo = read_yolo_dataset(out, classes_path=None, log=quiet)
    assert yolo.class_names == voc.class_names
    for split in ("train", "val", "test"):
        assert_same_boxes(yolo.records(split), voc.records(split), tolerance_px=0.5)
    assert [p.name for p in tmp_path.iterdir()] == ["bccd_yolo"]


def test_tiny_yolo_to_voc_and_back(tmp_path):
    yolo = read_yolo_dataset(write_tiny_yolo(tmp_path / "tiny"), classes_path=None, log=quiet)
    out = write_voc_dataset(yolo, tmp_path / "voc", link_images=False)
    year = out / "VOC2007"
    assert detect_format(out) == "voc" and (out / "classes.txt").read_text() == "circle\nsquare\n"
    assert (year / "ImageSets" / "Main" / "train.txt").read_text() == "a\nb\nc\ne\n"
    assert (year / "ImageSets" / "Main" / "trainval.txt").read_text() == "a\nb\nc\ne\nd\n"
    assert not (year / "JPEGImages" / "a.jpg").samefile(tmp_path / "tiny" / "images" / "train" / "a.jpg")
    xml = (year / "Annotations" / "e.xml").read_text()
    assert "<width>50</width>" in xml and "<height>100</height>" in xml and "<difficult>0</difficult>" in xml
    voc = read_voc_dataset(out, classes_path=None, log=quiet)
    assert voc.class_names == TINY_YOLO_NAMES
    for split in TINY_YOLO:
        assert_boxes(voc.records(split), hand_boxes(split), tolerance_px=0.005)  # two decimals in the XML
    again = write_yolo_dataset(voc, tmp_path / "yolo_again", link_images=True)
    assert (again / "images" / "val" / "d.jpg").samefile(year / "JPEGImages" / "d.jpg")
    assert (again / "labels" / "train" / "c.txt").read_text() == ""
    assert (again / "labels" / "val" / "d.txt").read_text() == ("0 0.250000 0.250000 0.500000 0.500000\n"
                                                                "1 0.500000 0.500000 0.100000 0.100000\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny", "voc", "yolo_again"]


def test_writers_refuse_a_non_empty_folder_and_leave_nothing(tmp_path):
    yolo = read_yolo_dataset(write_tiny_yolo(tmp_path / "tiny"), classes_path=None, log=quiet)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x.txt").write_text("mine")
    for write in (write_voc_dataset, write_yolo_dataset):
        with pytest.raises(UserError, match="exists and is not empty"):
            write(yolo, tmp_path / "taken", link_images=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken", "tiny"]


def test_same_stem_in_two_splits_gets_its_split_in_the_voc_name(tmp_path):
    root = write_tiny_yolo(tmp_path / "tiny")
    os.rename(root / "images" / "val" / "d.jpg", root / "images" / "val" / "a.jpg")
    os.rename(root / "labels" / "val" / "d.txt", root / "labels" / "val" / "a.txt")
    yolo = read_yolo_dataset(root, classes_path=None, log=quiet)
    voc = read_voc_dataset(write_voc_dataset(yolo, tmp_path / "voc", link_images=True), classes_path=None, log=quiet)
    assert [Path(r.image_path).name for r in voc.records("val")] == ["a_val.jpg"]
    assert_boxes(voc.records("val"), {"a_val.jpg": TINY_YOLO["val"]["d.jpg"][2]})


def test_voc_difficult_objects_are_kept_flagged(tmp_path):
    devkit = write_shapes_voc(tmp_path, images=6)
    year = devkit / "VOC2007"
    xml = year / "Annotations" / "shape_000.xml"
    objects = xml.read_text().count("<object>")
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    (year / "ImageSets" / "Main").mkdir(parents=True)
    (year / "ImageSets" / "Main" / "train.txt").write_text("".join(f"shape_{i:03d}\n" for i in range(6)))
    dataset = read_voc_dataset(devkit, classes_path=str(tmp_path / "shapes_classes.txt"), log=quiet)
    record = dataset.records("train")[0]
    assert record.difficult.tolist() == [True] + [False] * (objects - 1)
    line = dataset.annotation_file("train").lines[0]
    assert len(line.split(" ")) - 1 == objects - 1  # difficult objects are not trained on
    again = read_voc_dataset(write_voc_dataset(dataset, tmp_path / "voc", link_images=True), classes_path=None,
                             log=quiet)
    assert again.records("train")[0].difficult.tolist() == record.difficult.tolist()
    np.testing.assert_allclose(again.records("train")[0].boxes_xyxy, record.boxes_xyxy)


def test_voc_without_lists_or_classes_file_says_what_to_do(tmp_path, capsys):
    devkit = write_shapes_voc(tmp_path, images=3)
    with pytest.raises(UserError, match=r"no image list .*voc_annotation.py --annotation_mode=1"):
        read_voc_dataset(devkit, classes_path=None, log=quiet)
    (devkit / "VOC2007" / "ImageSets" / "Main").mkdir(parents=True)
    (devkit / "VOC2007" / "ImageSets" / "Main" / "test.txt").write_text("shape_000\nshape_001\nshape_002\n")
    log = []
    dataset = read_voc_dataset(devkit / "VOC2007", classes_path=None, log=log.append)
    assert dataset.class_names == ["circle", "square"] and list(dataset.splits) == ["test"]
    assert any("class names from the XML files, sorted" in line for line in log)


def yolo_error(root: Path, *, classes_path: str | None = None) -> str:
    with pytest.raises(UserError) as err:
        read_yolo_dataset(root, classes_path=classes_path, log=quiet)
    return str(err.value)


def set_label(root: Path, split: str, stem: str, lines: list[str]) -> Path:
    path = root / "labels" / split / f"{stem}.txt"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_yaml_with_bom_and_crlf_works_and_is_noted(tmp_path):
    root = write_tiny_yolo(tmp_path / "tiny")
    (root / "data.yaml").write_bytes(b"\xef\xbb\xbf" + TINY_YOLO_YAML.replace("\n", "\r\n").encode())
    log = []
    dataset = read_yolo_dataset(root, classes_path=None, log=log.append)
    assert dataset.class_names == TINY_YOLO_NAMES
    assert f"note: data.yaml {root / 'data.yaml'}: a UTF-8 byte-order mark (removed) and Windows line ends" in log[0]


def test_label_files_with_crlf_are_counted_in_one_note(tmp_path):
    root = write_tiny_yolo(tmp_path / "tiny")
    edited = 0
    for path in (root / "labels").rglob("*.txt"):  # as a labelling tool on Windows saves them
        if b"\n" in path.read_bytes():
            path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
            edited += 1
    log = []
    dataset = read_yolo_dataset(root, classes_path=None, log=log.append)
    assert edited >= 2 and not any("note: label file" in line for line in log)  # not one line per file
    assert (f"label files with a byte-order mark or Windows / old Mac line ends (removed, read as plain line ends): "
            f"{edited}") in "\n".join(log)
    assert sum(len(r.boxes_xyxy) for records in dataset.splits.values() for r in records) > 0


def test_names_as_a_dict_and_nc(tmp_path):
    root = write_tiny_yolo(tmp_path / "tiny", yaml_text="train: images/train\nval: images/val\nnc: 2\n"
                                                        "names: {1: square, 0: circle}\n")
    assert read_yolo_dataset(root, classes_path=None, log=quiet).class_names == TINY_YOLO_NAMES
    (root / "data.yaml").write_text("train: images/train\nnames: {1: circle, 2: square}\n")
    assert "names: the ids [1, 2] are not 0..1" in yolo_error(root)
    (root / "data.yaml").write_text("train: images/train\nnc: 3\nnames: [circle, square]\n")
    assert yolo_error(root) == f"{root / 'data.yaml'}: nc: 3 but names lists 2 classes; make them agree (or drop nc)"
    (root / "data.yaml").write_text("train: images/train\nnames: [circle, no]\n")
    assert "class 1 reads as False in YAML" in yolo_error(root)


def test_yaml_that_does_not_parse_names_file_and_line(tmp_path):
    root = write_tiny_yolo(tmp_path / "tiny", yaml_text="train: images/train\nnames: [circle, square\nval: x\n")
    assert yolo_error(root) == (f"{root / 'data.yaml'} line 3: not valid YAML (expected ',' or ']', but got ':', "
                                f"while parsing a flow sequence opened on line 2)")


def test_every_bad_label_line_and_image_is_named_at_once(tmp_path):
    root = write_tiny_yolo(tmp_path / "tiny")
    a = set_label(root, "train", "a", ["0 0.2 0.3 0.2", "5 0.5 0.5 0.1 0.1", "0 x 0.5 0.1 0.1", "0.5 0.5 0.5 0.1 0.1"])
    b = set_label(root, "train", "b", ["1 0.5 0.5 0.1 0.1 0.9"])
    (root / "labels" / "val" / "d.txt").write_bytes(b"0 0.5 0.5 0.1 0.1\ncaf\xe9\n")
    write_truncated_jpeg(root / "images" / "train" / "c.jpg")
    message = yolo_error(root)
    lines = message.splitlines()
    assert lines[0] == f"7 problems in dataset {root} (yolo):"
    assert f"{a} line 1: has 4 numbers; a box is 'class cx cy w h'" in message
    assert f"{a} line 2: class id 5 is not one of the 2 names (0-1)" in lines
    assert f"{a} line 3: '0 x 0.5 0.1 0.1' is not numbers" in message
    assert f"{a} line 4: class id 0.5 is not one of the 2 names (0-1)" in lines
    assert f"{b} line 1: has 6 numbers" in message
    assert f"label file {root / 'labels' / 'val' / 'd.txt'} line 2: not UTF-8 text: b'caf\\xe9'" in message
    assert f"image {root / 'images' / 'train' / 'c.jpg'}: cannot be decoded" in message


def test_polygon_line_is_read_as_its_bounding_box(tmp_path):
    root = write_tiny_yolo(tmp_path / "tiny")
    set_label(root, "train", "a", ["1 0.5 0.2 0.1 0.6 0.3 0.2", "0 0.2 0.3 0.2 0.4"])
    log = []
    dataset = read_yolo_dataset(root, classes_path=None, log=log.append)
    assert_boxes(dataset.records("train")[:1], {"a.jpg": [(10, 10, 50, 30, 1), (10, 5, 30, 25, 0)]})  # of 100 x 50
    assert "polygon lines read as their bounding boxes: 1" in "\n".join(log)


def test_missing_label_file_is_a_background_image_counted(tmp_path):
    root = write_tiny_yolo(tmp_path / "tiny")
    (root / "labels" / "train" / "b.txt").unlink()
    log = []
    dataset = read_yolo_dataset(root, classes_path=None, log=log.append)
    assert boxes_by_name(dataset.records("train"))["b.png"] == []
    assert dataset.tallies["train"].background == 2  # b without label, c with an empty one
    assert "images without a label file (background): 1; empty label files (background): 1" in "\n".join(log)


def test_inverted_zero_area_and_outside_boxes_are_dropped_and_counted_per_class(tmp_path):
    root = write_tiny_yolo(tmp_path / "tiny")
    set_label(root, "train", "a", ["0 0.2 0.3 -0.2 0.4", "1 0.75 0.5 0 0.2", "0 3 0.5 0.1 0.1", "1 0.95 0.5 0.2 0.2"])
    log = []
    dataset = read_yolo_dataset(root, classes_path=None, log=log.append)
    tally = dataset.tallies["train"]
    assert {reason: counts.tolist() for reason, counts in tally.dropped.items()} == {
        "inverted": [1, 0], "zero_area": [0, 1], "outside": [1, 0]}
    assert_boxes(dataset.records("train")[:1], {"a.jpg": [(85, 20, 100, 30, 1)]})  # 85..105 clipped to the 100 px
    assert "  circle: 1 kept, 2 dropped: 1 inverted (x2 < x1 or y2 < y1), 1 entirely outside the image" in log


def test_a_class_that_loses_every_box_stops_naming_it(tmp_path):
    root = write_tiny_yolo(tmp_path / "tiny")
    set_label(root, "train", "a", ["0 0.2 0.3 0.2 0.4", "1 0.75 0.5 -0.1 0.2"])
    set_label(root, "train", "b", ["1 0.5 0.5 -0.25 0.5"])
    message = yolo_error(root)
    assert message.startswith(f"{root} (yolo) train: class 'square' has no box to train on (2 inverted")
    assert "normalised to 0-1 by the image's width and height" in message


def test_two_images_with_one_stem_are_both_named(tmp_path):
    root = write_tiny_yolo(tmp_path / "tiny")
    (root / "images" / "train" / "a.png").write_bytes((root / "images" / "train" / "b.png").read_bytes())
    train = root / "images" / "train"
    assert yolo_error(root) == (f"{root} (yolo) train: 2 images are named 'a' (the evaluation keys images by name): "
                                f"{train / 'a.jpg'}, {train / 'a.png'}; rename all but one")


def test_classes_file_disagreeing_with_data_yaml(tmp_path):
    root = write_tiny_yolo(tmp_path / "tiny")
    classes = tmp_path / "classes.txt"
    classes.write_text("square\ncircle\n")
    assert f"classes file {classes} lists ['square', 'circle'], but" in yolo_error(root, classes_path=str(classes))
    classes.write_text("circle\nsquare\n")
    assert read_yolo_dataset(root, classes_path=str(classes), log=quiet).class_names == TINY_YOLO_NAMES


def test_image_name_that_is_not_utf8_is_named_by_its_bytes(tmp_path):
    root = write_tiny_yolo(tmp_path / "tiny")
    folder = os.fsencode(root / "images" / "train")
    try:
        os.rename(os.fsencode(root / "images" / "train" / "b.png"), folder + b"/caf\xe9.png")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    assert "file name b'caf\\xe9.png' is not UTF-8" in yolo_error(root)


def test_split_naming_nothing_is_an_error(tmp_path):
    root = write_tiny_yolo(tmp_path / "tiny", yaml_text="train: images/train\nval: images/nope\nnames: [a, b]\n")
    assert yolo_error(root) == (f"{root / 'data.yaml'}: val: images/nope -> {root / 'images' / 'nope'}: no such "
                                f"folder or list")


def test_voc_list_problems_are_named_together(tmp_path):
    devkit = write_shapes_voc(tmp_path, images=3)
    main = devkit / "VOC2007" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("shape_000\nshape_009\n")
    (main / "val.txt").write_bytes(b"shape_001\ncaf\xe9\n")
    with pytest.raises(UserError) as err:
        read_voc_dataset(devkit, classes_path=str(tmp_path / "shapes_classes.txt"), log=quiet)
    assert str(err.value).splitlines() == [
        f"2 problems in dataset {devkit} (voc):",
        f"{main / 'train.txt'}: listed id 'shape_009' has no image in {devkit / 'VOC2007' / 'JPEGImages'} (any of "
        f".jpg/.jpeg/.png/.bmp)",
        f"image list {main / 'val.txt'} line 2: not UTF-8 text: b'caf\\xe9'; save the file as UTF-8; if it names a "
        f"file whose name is not UTF-8, rename that file (such a name cannot be written in UTF-8)"]
