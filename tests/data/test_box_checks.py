"""Boxes checked before training: inverted, zero-area and outside boxes counted per file and class, dropped from
what the loader gets, and a class or a file left without boxes stops the run saying what was dropped and why;
malformed box words are named as such, not as a missing image. Counts are written out by hand."""
import sys

import numpy as np
import pytest
from PIL import Image

import train
from utils.core.config import UserError, run_cli
from utils.data.boxcheck import BoxTally, box_verdicts
from utils.data.datacheck import check_annotation_files
from utils.data.voc import format_classes_header, read_annotation_file

CLASSES = ["cat", "dog"]


@pytest.fixture
def images(tmp_path) -> list[str]:
    """Four 64 x 48 JPEGs."""
    paths = []
    for index in range(4):
        path = tmp_path / f"img {index}.jpg"
        Image.new("RGB", (64, 48), (30 * index, 90, 40)).save(path)
        paths.append(str(path))
    return paths


def _file(path, lines: list[str]):
    path.write_text("\n".join([format_classes_header(CLASSES), *lines]) + "\n")
    return read_annotation_file(path)


def _check(*files, log=None):
    printed = []
    checked = check_annotation_files(list(files), class_names=CLASSES, classes_path="classes.txt",
                                     on_corrupt="error", log=printed.append if log is None else log)
    return checked, printed


def test_verdicts_by_hand():
    boxes = np.array([[1, 1, 5, 5, 0],  # fine
                      [5, 1, 1, 5, 0],  # x2 < x1
                      [1, 5, 5, 1, 1],  # y2 < y1
                      [3, 1, 3, 5, 1],  # zero width
                      [70, 1, 80, 5, 0],  # right of a 64-wide image
                      [1, -9, 5, 0, 0],  # above it: touches y = 0 only
                      [-5, -5, 5, 5, 1]])  # extends past the corner: kept, the loader clips it
    assert list(box_verdicts(boxes, image_size=(64, 48))) == ["", "inverted", "inverted", "zero_area", "outside",
                                                              "outside", ""]
    assert list(box_verdicts(boxes, image_size=None))[4:] == ["", "", ""]  # size unknown: no outside test


def test_every_box_inverted_stops_training_naming_why(tmp_path, images):
    train_file = _file(tmp_path / "train.txt", [f"{images[0]} 40,30,4,4,0 50,40,20,10,1", f"{images[1]} 9,9,1,1,0"])
    val_file = _file(tmp_path / "val.txt", [f"{images[2]} 4,4,40,30,0 20,10,50,40,1"])
    with pytest.raises(UserError) as err:
        _check(train_file, val_file)
    assert str(err.value) == (
        f"{tmp_path / 'train.txt'}: all 3 boxes were dropped, none is left to train on: 3 inverted (x2 < x1 or "
        f"y2 < y1); e.g. line 2: 40,30,4,4,0 (inverted); line 2: 50,40,20,10,1 (inverted); line 3: 9,9,1,1,0 "
        f"(inverted); a box is x1,y1,x2,y2,class_id in image pixels with x1 < x2 and y1 < y2")


def test_report_per_class_and_what_the_loader_gets(tmp_path, images):
    lines = [f"{images[0]} 4,4,20,20,0 20,4,4,20,1 5,5,5,9,0",  # kept cat, inverted dog, zero-area cat
             f"{images[1]} 70,10,90,20,1 -4,2,10,10,1",  # outside dog, dog past the edge (kept, clipped later)
             f"{images[2]}",  # background, as written
             f"{images[3]} 30,30,10,10,1"]  # background after its only box is dropped
    train_file = _file(tmp_path / "train.txt", lines)
    (checked,), printed = _check(train_file)
    assert checked.lines == [f"{images[0]} 4,4,20,20,0", f"{images[1]} -4,2,10,10,1", lines[2], f"{images[3]}"]
    assert checked.line_numbers == [2, 3, 4, 5]
    path = tmp_path / "train.txt"
    assert printed[:3] == [(f"{path}: 4 images, 2 background (no boxes; 1 of them had boxes, all dropped); boxes "
                            f"per class:"),
                           "  cat: 1 kept, 1 dropped: 1 zero width or height",
                           "  dog: 1 kept, 3 dropped: 2 inverted (x2 < x1 or y2 < y1), 1 entirely outside the image"]
    assert printed[3].startswith(f"warning: {path}: 4 boxes dropped (2 inverted (x2 < x1 or y2 < y1), 1 zero width "
                                 f"or height, 1 entirely outside the image), e.g. line 2: 20,4,4,20,1")
    assert printed[4] == f"note: {path}: 1 boxes extend past the image edge; the loader clips them to the image"


def test_clean_lines_reach_the_loader_byte_for_byte(tmp_path, images):
    lines = [f"{images[0]} 4,4,20,20,0 10.5,3,30.25,40,1", f"{images[1]}   1,1,9,9,0"]
    (checked,), printed = _check(_file(tmp_path / "train.txt", lines))
    assert checked.lines == lines
    assert printed[1:] == ["  cat: 2 kept", "  dog: 1 kept"]


def test_a_class_left_without_boxes_is_named_with_why(tmp_path, images):
    train_file = _file(tmp_path / "train.txt", [f"{images[0]} 4,4,20,20,0 20,20,4,4,1 9,9,9,12,1"])
    with pytest.raises(UserError, match=r"train.txt: class 'dog' has no box to train on \(all its boxes were "
                                        r"dropped: 1 inverted \(x2 < x1 or y2 < y1\), 1 zero width or height\); "
                                        r"fix its boxes, or train without it: remove it from classes.txt"):
        _check(train_file)
    never = _file(tmp_path / "cats.txt", [f"{images[0]} 4,4,20,20,0"])
    with pytest.raises(UserError, match=r"cats.txt: class 'dog' has no box to train on \(classes.txt lists it, "
                                        r"the file holds none\)"):
        _check(never)


def test_validation_without_a_class_or_without_boxes_is_a_note(tmp_path, images):
    train_file = _file(tmp_path / "train.txt", [f"{images[0]} 4,4,20,20,0 30,20,40,30,1"])
    cats_only = _file(tmp_path / "val.txt", [f"{images[1]} 4,4,20,20,0"])
    _, printed = _check(train_file, cats_only)
    assert f"note: {tmp_path / 'val.txt'}: class 'dog' has no box to validate on" in "\n".join(printed)
    background = _file(tmp_path / "bg.txt", [images[2], images[3]])
    _, printed = _check(train_file, background)
    assert (f"note: {tmp_path / 'bg.txt'}: holds no boxes (2 background images); its loss measures background only "
            f"and its mAP is undefined") in printed
    only_background = _file(tmp_path / "bg_train.txt", [images[2]])
    with pytest.raises(UserError, match=r"bg_train.txt: holds no boxes \(1 background images\), nothing to train on"):
        _check(only_background)


def test_malformed_box_is_named_not_taken_for_a_missing_image(tmp_path, images):
    train_file = _file(tmp_path / "train.txt", [f"{images[0]} 4,4,20,20,0 30,20,40,30,1",
                                                f"{images[1]} 10,20,30,0",
                                                f"{images[2]} 1,2,3,4,0 5,6,7,8,1.0 9,9,12,12,1",
                                                f"{tmp_path / 'gone.jpg'} 1,2,3,4,0"])
    with pytest.raises(UserError) as err:
        _check(train_file)
    assert str(err.value).splitlines() == [
        "3 problem(s) in the annotation files; fix them or set --on_corrupt=skip to leave unreadable images out:",
        (f"{tmp_path / 'train.txt'} line 3: malformed box after {images[1]}: '10,20,30,0' has 4 numbers; a box is "
         f"x1,y1,x2,y2,class_id in image pixels with x1 < x2 and y1 < y2, boxes separated by spaces"),
        (f"{tmp_path / 'train.txt'} line 4: malformed box after {images[2]}: '5,6,7,8,1.0' has class id '1.0', not a "
         f"whole number of 0 or more; a box is x1,y1,x2,y2,class_id in image pixels with x1 < x2 and y1 < y2, boxes "
         f"separated by spaces"),
        f"{tmp_path / 'train.txt'} line 5: image {tmp_path / 'gone.jpg'}: no such file"]


def test_box_tally_counts_by_hand():
    tally = BoxTally(["a", "b", "c"])
    tally.add_image(np.array([0, 0, 1, 2, 7]), np.array(["", "inverted", "", "outside", ""], dtype=object),
                    where="f line 1", box_texts=["t0", "t1", "t2", "t3", "t4"])
    tally.add_image(np.array([], dtype=int), np.array([], dtype=object))
    tally.add_image(np.array([2]), np.array(["zero_area"], dtype=object), where="f line 3", box_texts=["t5"])
    assert list(tally.kept) == [1, 1, 0]  # class id 7 is no class: reported by the class-id check, not counted
    assert (tally.images, tally.background, tally.emptied) == (3, 2, 1)
    assert tally.total_dropped == 3 and tally.empty_classes() == [2]
    assert tally.why_dropped(2) == "1 entirely outside the image, 1 zero width or height"
    assert tally.example_text() == "e.g. f line 1: t1 (inverted); f line 1: t3 (outside); f line 3: t5 (zero area)"


def test_train_py_stops_on_every_box_inverted(tmp_path, images, monkeypatch, capsys):
    """As a user runs it: exit 2, one error line naming the file and why, the per-class report on stdout."""
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    lines = [f"{images[0]} 40,30,4,4,0 50,40,20,10,1", f"{images[1]} 60,40,2,2,1"]
    for name in ("train", "val"):
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(sys, "argv", [
        "train.py", f"--classes_path={tmp_path / 'classes.txt'}", f"--train_annotation_path={tmp_path / 'train.txt'}",
        f"--val_annotation_path={tmp_path / 'val.txt'}", "--model=yolov4-tiny", "--input_shape=[64,64]",
        "--device=cpu", "--fp16=False", "--unfreeze_epoch=1", "--freeze_train=False", "--num_workers=0",
        f"--save_dir={tmp_path / 'logs'}"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train.main)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert errors == ["error: 2 problem(s) in the annotation files:"]
    assert "train.txt: all 3 boxes were dropped, none is left to train on: 3 inverted" in captured.err
    assert "val.txt: all 3 boxes were dropped, none is left to validate on" in captured.err
    assert "  dog: 0 kept, 2 dropped: 2 inverted (x2 < x1 or y2 < y1)" in captured.out
    assert "epoch 1/1" not in captured.out


def test_one_file_as_train_and_val_says_each_problem_once(tmp_path, images):
    same = _file(tmp_path / "both.txt", [f"{images[0]} 4,4,20,20,0 30,20,40,30,1", f"{images[1]} 10,20,30,0"])
    with pytest.raises(UserError) as err:
        _check(same, same)
    assert str(err.value) == (f"{tmp_path / 'both.txt'} line 3: malformed box after {images[1]}: '10,20,30,0' has 4 "
                              f"numbers; a box is x1,y1,x2,y2,class_id in image pixels with x1 < x2 and y1 < y2, "
                              f"boxes separated by spaces")
