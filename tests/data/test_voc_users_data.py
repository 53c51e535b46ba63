"""voc_annotation.py on datasets as users have them: Windows text files, names that are not UTF-8, an empty image
folder, a devkit without a val list, box lines in an image list, nothing left to write; every file it reads is
checked and nothing is dropped silently, and a failed run leaves no temporary file behind."""
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

import voc_annotation
from utils.core import textfile
from utils.core.config import ConfigError, UserError, run_cli
from utils.data.voc import read_annotation_file, read_voc_xml
from utils.data.voc_devkit import write_text_files

BOM = b"\xef\xbb\xbf"


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    monkeypatch.setattr(textfile, "_noted", set())


def _xml(objects, size=(64, 48)) -> str:
    """objects: (name, (xmin, ymin, xmax, ymax), difficult)."""
    body = "".join(f"<object><name>{name}</name><difficult>{int(hard)}</difficult><bndbox><xmin>{b[0]}</xmin>"
                   f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for name, b, hard in objects)
    return (f"<annotation><filename>x.jpg</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"</size>{body}</annotation>")


def _devkit(root: Path, entries: dict, lists: dict | None = None) -> Path:
    """entries: stem -> XML text (each stem gets a 64 x 48 JPEG); lists: ImageSets/Main name -> bytes."""
    year = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    for stem, xml in entries.items():
        Image.new("RGB", (64, 48), (90, 120, 30)).save(year / "JPEGImages" / f"{stem}.jpg")
        (year / "Annotations" / f"{stem}.xml").write_text(xml)
    for name, data in (lists or {}).items():
        (year / "ImageSets" / "Main" / name).write_bytes(data)
    return year


def _run(root: Path, *extra: str, classes: bytes = b"cat\ndog\n"):
    (root / "classes.txt").write_bytes(classes)
    return voc_annotation.main([f"--VOCdevkit_path={root / 'VOCdevkit'}", f"--classes_path={root / 'classes.txt'}",
                                f"--out_dir={root / 'out'}", *extra])


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*.tmp"))


TWO = {"a": _xml([("cat", (4, 4, 20, 20), 0), ("dog", (30, 10, 60, 40), 0)]),
       "b": _xml([("dog", (1, 1, 9, 9), 0), ("cat", (10, 10, 30, 30), 0)])}


def test_classes_file_with_bom_and_crlf_counts_every_class(tmp_path, capsys):
    _devkit(tmp_path, TWO, lists={"train.txt": b"a\nb\n"})
    result = _run(tmp_path, "--annotation_mode=2", "--VOCdevkit_sets=[['2007', 'train']]",
                  classes=BOM + b"cat\r\ndog\r\n")
    out = capsys.readouterr().out
    assert dict(result["class_counts"][("2007", "train")]) == {"cat": 2, "dog": 2}
    assert "unknown class" not in out and out.count("byte-order mark") == 1
    assert f"note: classes file {tmp_path / 'classes.txt'}: a UTF-8 byte-order mark (removed)" in out
    assert read_annotation_file(tmp_path / "out" / "2007_train.txt").class_names == ["cat", "dog"]


def test_one_class_bom_file(tmp_path, capsys):
    _devkit(tmp_path, {"a": _xml([("cell", (4, 4, 20, 20), 0)])}, lists={"train.txt": b"a\n"})
    result = _run(tmp_path, "--annotation_mode=2", "--VOCdevkit_sets=[['2007', 'train']]", classes=BOM + b"cell")
    assert dict(result["class_counts"][("2007", "train")]) == {"cell": 1}
    assert "in the classes file" not in capsys.readouterr().err


def test_image_list_with_bom_and_crlf(tmp_path, capsys):
    _devkit(tmp_path, TWO, lists={"train.txt": BOM + b"a\r\nb\r\n"})
    result = _run(tmp_path, "--annotation_mode=2", "--VOCdevkit_sets=[['2007', 'train']]")
    out = capsys.readouterr().out
    assert result["lines"] == {("2007", "train"): 2} and "has no image" not in out
    assert "note: image list" in out and "train.txt: a UTF-8 byte-order mark (removed) and Windows line ends" in out


UTF16_DECLARATION = '<?xml version="1.0" encoding="utf-16"?>\r\n'


@pytest.mark.parametrize("mark, encoding, declaration", [(BOM, "utf-8", ""),
                                                          (b"\xff\xfe", "utf-16-le", UTF16_DECLARATION)])
def test_voc_xml_with_a_byte_order_mark_is_read_by_the_xml_parser(tmp_path, mark, encoding, declaration):
    xml_path = tmp_path / "a.xml"
    text = declaration + _xml([("café", (4, 4, 20, 20), 0)]).replace("><", ">\r\n<")  # CRLF between elements
    xml_path.write_bytes(mark + text.encode(encoding))
    record = read_voc_xml(xml_path=xml_path, class_names=["café"], include_difficult=False)
    assert record.object_names == ["café"] and record.boxes_xyxy_cls.tolist() == [[4, 4, 20, 20, 0]]


def test_annotation_file_with_bom_and_crlf(tmp_path, capsys):
    path = tmp_path / "train.txt"
    path.write_bytes(BOM + b'# classes: ["cat"]\r\n/data/a b.jpg 1,2,3,4,0\r\n')
    annotation = read_annotation_file(path)
    assert annotation.class_names == ["cat"] and annotation.lines == ["/data/a b.jpg 1,2,3,4,0"]
    assert "annotation file" in capsys.readouterr().out


def test_image_name_that_is_not_utf8_is_named_by_its_bytes_and_nothing_is_written(tmp_path):
    year = _devkit(tmp_path, TWO)
    latin1 = os.fsdecode(os.fsencode(year / "JPEGImages") + b"/caf\xe9.jpg")
    os.rename(year / "JPEGImages" / "b.jpg", latin1)
    with pytest.raises(UserError) as err:
        _run(tmp_path)
    assert str(err.value) == (f"{year / 'JPEGImages'}: file name b'caf\\xe9.jpg' is not UTF-8, so no UTF-8 list can "
                              f"name it; rename it")
    assert not list((year / "ImageSets" / "Main").iterdir()) and not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


def test_image_list_that_is_not_utf8_names_file_line_and_bytes(tmp_path):
    _devkit(tmp_path, TWO, lists={"train.txt": b"a\ncaf\xe9\n"})
    with pytest.raises(UserError, match=r"image list .*train.txt line 2: not UTF-8 text: b'caf\\xe9'; save the file "
                                        r"as UTF-8; if it names a file whose name is not UTF-8, rename that file"):
        _run(tmp_path, "--annotation_mode=2", "--VOCdevkit_sets=[['2007', 'train']]")


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    (tmp_path / "in_the_way.txt").mkdir()  # a folder where a file goes: the replace fails after the writes
    with pytest.raises(UserError, match=r"cannot write .*in_the_way.txt"):
        write_text_files({tmp_path / "fine.txt": ["a"], tmp_path / "in_the_way.txt": ["b"]})
    assert _leftovers(tmp_path) == []
    with pytest.raises(UnicodeEncodeError):  # a name that is not UTF-8 fails before any file is made
        write_text_files({tmp_path / "x.txt": ["caf\udce9"]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fine.txt", "in_the_way.txt"]


def test_a_first_split_that_fails_leaves_no_list_and_no_temporary_file(tmp_path, monkeypatch):
    year = _devkit(tmp_path, TWO)
    calls = []

    def replace_failing_on_the_third(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(src))
        os.rename(src, dst)

    monkeypatch.setattr(os, "replace", replace_failing_on_the_third)
    with pytest.raises(UserError, match=r"cannot write .*val.txt.tmp: No space left on device"):
        _run(tmp_path, "--annotation_mode=1")
    assert len(calls) == 3 and _leftovers(tmp_path) == []
    assert not list((year / "ImageSets" / "Main").iterdir())  # trainval and train were in place: removed again


def test_empty_image_folder_stops_and_writes_nothing(tmp_path):
    year = _devkit(tmp_path, {})
    (year / "Annotations" / "a.xml").write_text(TWO["a"])
    with pytest.raises(UserError, match=r"JPEGImages: holds no images \(any of .jpg/.jpeg/.png/.bmp\); put the "
                                        r"images there"):
        _run(tmp_path)
    assert not list((year / "ImageSets" / "Main").iterdir()) and not (tmp_path / "out").exists()


def test_missing_val_list_says_what_is_missing_and_the_real_fixes(tmp_path):
    year = _devkit(tmp_path, TWO, lists={"train.txt": b"a\n", "test.txt": b"b\n"})
    main_dir = year / "ImageSets" / "Main"
    with pytest.raises(FileNotFoundError) as err:
        _run(tmp_path)
    assert str(err.value) == (
        f"missing image lists: {main_dir} has test.txt, train.txt but no val.txt: write val.txt yourself (one image "
        f"id a line), or make a new split of all images with --overwrite_split=True (annotation_mode 0 or 1; it "
        f"rewrites test.txt, train.txt), or leave ['2007', 'val'] out of VOCdevkit_sets")
    assert not (tmp_path / "out").exists()
    result = _run(tmp_path, "--overwrite_split=True", "--train_percent=0.5", "--trainval_percent=1")  # the fix works
    assert result["lines"] == {("2007", "train"): 1, ("2007", "val"): 1, ("2007", "test"): 0}
    with pytest.raises(ConfigError, match="overwrite_split=True makes a new split, which annotation_mode 2 never"):
        _run(tmp_path, "--overwrite_split=True", "--annotation_mode=2")


def test_box_line_in_an_image_list_is_named_at_its_line(tmp_path):
    _devkit(tmp_path, TWO, lists={"train.txt": b"a\nb 10,20,30\nb 1\n"})
    with pytest.raises(UserError) as err:
        _run(tmp_path, "--annotation_mode=2", "--VOCdevkit_sets=[['2007', 'train']]")
    lines = str(err.value).splitlines()
    assert lines[0] == "2 problems with the image lists (nothing written):"
    assert lines[1].endswith("train.txt line 2: 'b 10,20,30' is the id 'b' followed by '10,20,30'; an image list "
                             "holds one image id a line (boxes belong in Annotations/<id>.xml; VOC's per-class lists "
                             "such as cat_train.txt are not image lists)")
    assert "train.txt line 3: 'b 1' is the id 'b' followed by '1'" in lines[2]
    assert not (tmp_path / "out").exists()


def test_no_image_to_write_stops_saying_why(tmp_path):
    _devkit(tmp_path, TWO, lists={"train.txt": b"gone1\ngone2\n", "val.txt": b""})
    with pytest.raises(UserError, match=r"no image to write in any of the 2 image lists \(XML/list entries without "
                                        r"an image \(skipped\): 2\); nothing written"):
        _run(tmp_path, "--annotation_mode=2", "--VOCdevkit_sets=[['2007', 'train'], ['2007', 'val']]")
    assert not (tmp_path / "out").exists()


def test_no_object_at_all_stops(tmp_path):
    _devkit(tmp_path, {"a": _xml([]), "b": _xml([])}, lists={"train.txt": b"a\nb\n"})
    with pytest.raises(UserError, match=r"the XML files name no object \(2 images, all background\)"):
        _run(tmp_path, "--annotation_mode=2", "--VOCdevkit_sets=[['2007', 'train']]")


def test_per_class_report_and_a_class_that_lost_every_object(tmp_path, capsys):
    entries = {"a": _xml([("cat", (4, 4, 20, 20), 0), ("dog", (30, 40, 10, 45), 0), ("dog", (1, 1, 9, 9), 1)]),
               "b": _xml([("dog", (70, 1, 90, 9), 0), ("dgo", (5, 5, 9, 9), 0)]),
               "c": _xml([("cat", (9, 9, 9, 20), 0)])}
    _devkit(tmp_path, entries, lists={"train.txt": b"a\nb\nc\n"})
    result = _run(tmp_path, "--annotation_mode=2", "--VOCdevkit_sets=[['2007', 'train']]")
    captured = capsys.readouterr()
    report = captured.out[captured.out.index("2007_train.txt: 3 images"):].splitlines()[:4]
    assert report[1:] == ["  background images (no boxes): 2, 2 of them because every box was dropped",
                          "  cat: 1 kept, 1 dropped: 1 zero width or height",
                          ("  dog: 0 kept, 3 dropped: 1 marked difficult (include_difficult=False), 1 inverted "
                           "(x2 < x1 or y2 < y1), 1 entirely outside the image")]
    assert (f"WARNING: class 'dog' of {tmp_path / 'classes.txt'} has no object in any list: all were dropped: 1 marked"
            f" difficult (include_difficult=False), 1 inverted (x2 < x1 or y2 < y1), 1 entirely outside the image; the"
            f" XML files also name dgo (1), which {tmp_path / 'classes.txt'} does not list") in captured.err
    assert result["tallies"][("2007", "train")].images == 3


def test_voc_annotation_as_a_user_runs_it(tmp_path, monkeypatch, capsys):
    _devkit(tmp_path, TWO, lists={"train.txt": b"a\n", "test.txt": b"b\n"})
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    monkeypatch.setattr(sys, "argv", ["voc_annotation.py", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}",
                                      f"--classes_path={tmp_path / 'classes.txt'}", f"--out_dir={tmp_path / 'out'}"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(voc_annotation.main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.startswith("error: missing image lists: ") and "no val.txt" in err and len(err.splitlines()) == 1


def test_missing_and_malformed_lists_are_reported_together(tmp_path):
    _devkit(tmp_path, TWO, lists={"train.txt": b"a 1\n", "test.txt": b"b\n"})
    with pytest.raises(UserError) as err:
        _run(tmp_path)
    lines = str(err.value).splitlines()
    assert lines[0] == "2 problems with the image lists (nothing written):"
    assert "but no val.txt" in lines[1] and "train.txt line 1: 'a 1' is the id 'a' followed by '1'" in lines[2]
