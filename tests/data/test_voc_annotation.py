"""voc_annotation.py on a synthetic messy VOCdevkit and on the vendored BCCD data."""
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

import voc_annotation
from utils.core.config import ConfigError
from utils.data.voc import format_annotation_line, load_voc_objects, parse_annotation_line, read_annotation_file

CLASSES = ["cat", "dog", "bird"]


def _xml(*, filename, size, objects):
    """objects: (name, (xmin, ymin, xmax, ymax), difficult) with coordinates written verbatim."""
    size_xml = "" if size is None else f"<size><width>{size[0]}</width><height>{size[1]}</height></size>"
    objects_xml = "".join(
        f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox><xmin>{box[0]}</xmin>"
        f"<ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>"
        for name, box, difficult in objects)
    return f"<annotation><filename>{filename}</filename>{size_xml}{objects_xml}</annotation>"


def _image(path: Path, size=(64, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 30)).save(path)


# stem -> (image file name or None, XML text or None)
MESSY = {
    "a_plain": ("a_plain.jpg", _xml(filename="a_plain.jpg", size=(64, 48),
                                    objects=[("cat", (5, 6, 30, 40), 0), ("bird", (31, 1, 60, 47), 0)])),
    "b_upper": ("b_upper.JPG", _xml(filename="b_upper.jpg", size=(64, 48), objects=[("dog", (1, 2, 3, 4), 0)])),
    "c_png": ("c_png.png", _xml(filename="c_png.jpg", size=(64, 48), objects=[("dog", (10, 10, 20, 20), 0)])),
    "d_bmp": ("d_bmp.bmp", _xml(filename="d_bmp.bmp", size=(64, 48), objects=[("cat", (2, 2, 9, 9), 0)])),
    "e_noobj": ("e_noobj.jpeg", _xml(filename="e_noobj.jpeg", size=(64, 48), objects=[])),
    "f_noxml": ("f_noxml.jpg", None),
    "g_noimage": (None, _xml(filename="g_noimage.jpg", size=(64, 48), objects=[("cat", (1, 1, 5, 5), 0)])),
    "h_zero": ("h_zero.jpg", _xml(filename="h_zero.jpg", size=(64, 48), objects=[
        ("cat", (10, 10, 10, 20), 0), ("dog", (20, 30, 10, 35), 0), ("bird", (3, 4, 5, 6), 0)])),
    "i_outside": ("i_outside.jpg", _xml(filename="i_outside.jpg", size=(64, 48), objects=[
        ("cat", (-5, 3, 70, 40), 0), ("dog", (100, 100, 120, 120), 0)])),
    "j_nosize": ("j_nosize.jpg", _xml(filename="j_nosize.jpg", size=None, objects=[("dog", (50, 40, 80, 60), 0)])),
    "k_float": ("k_float.jpg", _xml(filename="k_float.jpg", size=(64, 48),
                                    objects=[("bird", (10.5, 12.0, 30.26, 40.74), 0)])),
    "l_unknown": ("l_unknown.jpg", _xml(filename="l_unknown.jpg", size=(64, 48), objects=[
        ("horse", (1, 1, 10, 10), 0), ("cat", (2, 2, 12, 12), 0), ("horse", (3, 3, 9, 9), 0)])),
    "m_difficult": ("m_difficult.jpg", _xml(filename="m_difficult.jpg", size=(64, 48), objects=[
        ("dog", (4, 4, 20, 20), 1), ("cat", (21, 21, 40, 40), 0)])),
    "n_malformed": ("n_malformed.jpg", "<annotation><object><name>cat</name>"),
    "o space #7": ("o space #7.jpg", _xml(filename="o space #7.jpg", size=(64, 48),
                                          objects=[("bird", (7, 8, 9, 10), 0)])),
}


def _build_voc(root: Path, year: str, entries: dict) -> Path:
    year_dir = root / "VOCdevkit" / f"VOC{year}"
    (year_dir / "Annotations").mkdir(parents=True)
    (year_dir / "JPEGImages").mkdir(parents=True)
    for stem, (image_name, xml_text) in entries.items():
        if image_name is not None:
            _image(year_dir / "JPEGImages" / image_name)
        if xml_text is not None:
            (year_dir / "Annotations" / f"{stem}.xml").write_text(xml_text)
    return year_dir


def _run(tmp_path, *extra):
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    out_dir = tmp_path / "out"
    result = voc_annotation.main([f"--VOCdevkit_path={tmp_path / 'data #1' / 'VOCdevkit'}",
                                  f"--classes_path={tmp_path / 'classes.txt'}", f"--out_dir={out_dir}", *extra])
    return result, out_dir


def test_messy_voc_lines_and_counts(tmp_path, capsys):
    year_dir = _build_voc(tmp_path / "data #1", "2007", MESSY)
    main_dir = year_dir / "ImageSets" / "Main"
    main_dir.mkdir(parents=True)
    (main_dir / "train.txt").write_text("\n".join(MESSY) + "\n")
    result, out_dir = _run(tmp_path, "--VOCdevkit_sets=[('2007', 'train')]")
    out = capsys.readouterr().out

    images = year_dir / "JPEGImages"
    annotation = read_annotation_file(out_dir / "2007_train.txt")
    assert annotation.class_names == CLASSES
    lines = annotation.lines
    expected = [
        f"{images / 'a_plain.jpg'} 5,6,30,40,0 31,1,60,47,2",
        f"{images / 'b_upper.JPG'} 1,2,3,4,1",
        f"{images / 'c_png.png'} 10,10,20,20,1",
        f"{images / 'd_bmp.bmp'} 2,2,9,9,0",
        f"{images / 'e_noobj.jpeg'}",
        f"{images / 'f_noxml.jpg'}",
        f"{images / 'h_zero.jpg'} 3,4,5,6,2",
        f"{images / 'i_outside.jpg'} 0,3,64,40,0",
        f"{images / 'j_nosize.jpg'} 50,40,64,48,1",
        f"{images / 'k_float.jpg'} 10.5,12,30.3,40.7,2",
        f"{images / 'l_unknown.jpg'} 2,2,12,12,0",
        f"{images / 'm_difficult.jpg'} 21,21,40,40,0",
        f"{images / 'o space #7.jpg'} 7,8,9,10,2",
    ]
    assert lines == expected
    assert Path(lines[0].split(" ")[0]).is_absolute()

    summary = result["summary"]
    assert summary["skipped_no_image"] == 1 and "g_noimage.xml" in out
    assert summary["skipped_malformed_xml"] == 1 and "n_malformed.xml: malformed XML" in out
    assert summary["background_no_xml"] == 1 and "f_noxml.jpg: no XML" in out
    assert summary["background_no_objects"] == 1 and "e_noobj.xml: no usable objects" in out
    assert summary["image_name_fixed"] == 2  # b_upper.JPG and c_png.png; d_bmp's XML names it right
    assert "b_upper.xml" in out and "'b_upper.JPG'" in out
    assert summary["dropped_degenerate"] == 2
    assert "h_zero.xml: dropped box (10, 10, 10, 20)" in out and "h_zero.xml: dropped box (20, 30, 10, 35)" in out
    assert summary["dropped_outside"] == 1 and "i_outside.xml: box (100, 100, 120, 120) outside" in out
    assert summary["clipped"] == 2 and "clipped to (0, 3, 64, 40)" in out and "clipped to (50, 40, 64, 48)" in out
    assert summary["unknown_class"] == 2 and "l_unknown.xml: skipped 2 object(s) of unknown class ['horse']" in out
    assert summary["difficult_excluded"] == 1
    assert result["lines"][("2007", "train")] == 13
    assert dict(result["class_counts"][("2007", "train")]) == {"cat": 5, "dog": 3, "bird": 4}
    assert "2007_train.txt: 13 images; objects: cat 5, dog 3, bird 4" in out
    assert "summary:" in out and "boxes with zero or negative area (dropped): 2" in out


def test_include_difficult_keeps_flagged_objects(tmp_path):
    entries = {"m_difficult": MESSY["m_difficult"]}
    main_dir = _build_voc(tmp_path / "data #1", "2007", entries) / "ImageSets" / "Main"
    main_dir.mkdir(parents=True)
    (main_dir / "train.txt").write_text("m_difficult\n")
    _, out_dir = _run(tmp_path, "--VOCdevkit_sets=[('2007', 'train')]", "--include_difficult=true")
    assert (out_dir / "2007_train.txt").read_text().split()[-2:] == ["4,4,20,20,1", "21,21,40,40,0"]


def test_seeded_split_two_years_and_no_overwrite(tmp_path):
    stems_2007 = [f"img{i:02d}" for i in range(40)]
    for year, stems in (("2007", stems_2007), ("2012", ["x1", "x2", "x3", "x4", "x5"])):
        _build_voc(tmp_path / "data #1", year, {s: (f"{s}.jpg", _xml(filename=f"{s}.jpg", size=(64, 48), objects=[
            ("dog", (1, 1, 9, 9), 0)])) for s in stems})
    sets = "--VOCdevkit_sets=[('2007','train'),('2007','val'),('2007','test'),('2012','trainval')]"
    result, out_dir = _run(tmp_path, sets, "--seed=3")
    main_dir = tmp_path / "data #1" / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    lists = {name: (main_dir / f"{name}.txt").read_text().split() for name in ("trainval", "train", "val", "test")}
    assert len(lists["trainval"]) == 36 and len(lists["train"]) == 32 and len(lists["val"]) == 4
    assert sorted(lists["trainval"] + lists["test"]) == stems_2007
    assert sorted(lists["train"] + lists["val"]) == sorted(lists["trainval"])
    assert result["lines"] == {("2007", "train"): 32, ("2007", "val"): 4, ("2007", "test"): 4, ("2012", "trainval"): 4}
    assert len(read_annotation_file(out_dir / "2012_trainval.txt").lines) == 4

    (main_dir / "test.txt").write_text("img00\n")  # a user's edit must survive mode 0
    result_again, _ = _run(tmp_path, sets, "--seed=3")
    assert (main_dir / "test.txt").read_text() == "img00\n"
    assert result_again["lines"][("2007", "test")] == 1

    voc_annotation.main([f"--VOCdevkit_path={tmp_path / 'data #1' / 'VOCdevkit'}", "--annotation_mode=1",
                         "--overwrite_split=true", "--seed=3", f"--out_dir={tmp_path / 'unused'}"])
    for name in ("test", "train"):  # same seed, same split
        assert (main_dir / f"{name}.txt").read_text().split() == lists[name]
    assert not (tmp_path / "unused").exists()  # mode 1 writes no annotation files


def test_mode_2_without_lists_is_a_clear_error(tmp_path):
    _build_voc(tmp_path / "data #1", "2007", {"a_plain": MESSY["a_plain"]})
    with pytest.raises(FileNotFoundError, match=r"missing image lists: .*Main holds no image list \(train.txt, "
                                                r"val.txt, test.txt asked for\): annotation_mode 0 \(the default\)"):
        _run(tmp_path, "--annotation_mode=2")
    assert not (tmp_path / "out").exists()


def test_settings_types_and_errors(tmp_path):
    year_dir = _build_voc(tmp_path / "data #1", "2007", {"m_difficult": MESSY["m_difficult"]})
    (year_dir / "ImageSets" / "Main").mkdir(parents=True)
    (year_dir / "ImageSets" / "Main" / "val.txt").write_text("m_difficult\n")
    # Tuples and lists both name (year, set) pairs; bool words and ints convert.
    result, out_dir = _run(tmp_path, "--VOCdevkit_sets=[('2007', 'val')]", "--include_difficult=yes", "--seed=5")
    assert result["lines"] == {("2007", "val"): 1}
    assert (out_dir / "2007_val.txt").read_text().split()[-2:] == ["4,4,20,20,1", "21,21,40,40,0"]
    with pytest.raises(ConfigError, match="unknown setting 'unknown_key'"):
        _run(tmp_path, "--unknown_key=1")
    for bad, key in [("--seed=1.5", "seed"), ("--include_difficult=maybe", "include_difficult"),
                     ("--VOCdevkit_sets=3", "VOCdevkit_sets"), ("--VOCdevkit_sets=[[2007, 'val']]", "VOCdevkit_sets"),
                     ("--annotation_mode=x", "annotation_mode")]:
        with pytest.raises(ConfigError, match=f"--{key}=.*: expected"):
            _run(tmp_path, bad)
    with pytest.raises(ConfigError, match="--key=value"):
        voc_annotation.main(["annotation_mode=2"])
    with pytest.raises(ConfigError, match="--annotation_mode=3: expected one of 0, 1, 2"):  # refused on parse
        _run(tmp_path, "--annotation_mode=3")
    with pytest.raises(ConfigError, match="annotation_mode must be 0, 1 or 2, got 3"):  # run() called directly
        voc_annotation.check_settings(annotation_mode=3, trainval_percent=0.5, train_percent=0.5, VOCdevkit_sets=[])
    with pytest.raises(ConfigError, match="trainval_percent must be between 0 and 1, got 1.5"):
        _run(tmp_path, "--trainval_percent=1.5")
    with pytest.raises(ConfigError, match=r"VOCdevkit_sets must hold \[year, set\] pairs"):
        _run(tmp_path, "--VOCdevkit_sets=[['2007', 'val', 'x']]")
    (tmp_path / "empty_classes.txt").write_text("\n\n")
    with pytest.raises(ConfigError, match="empty_classes.txt: holds no class names"):
        voc_annotation.main([f"--VOCdevkit_path={tmp_path / 'data #1' / 'VOCdevkit'}",
                             f"--classes_path={tmp_path / 'empty_classes.txt'}", "--annotation_mode=0",
                             f"--out_dir={tmp_path / 'out2'}"])
    assert not (year_dir / "ImageSets" / "Main" / "trainval.txt").exists()  # stopped before making a split
    with pytest.raises(FileNotFoundError, match="VOC2012: not a VOC folder"):
        _run(tmp_path, "--VOCdevkit_sets=[['2012', 'val']]")


def test_load_voc_objects_keeps_difficult_and_unknown(tmp_path):
    xml_path = tmp_path / "x.xml"
    xml_path.write_text(MESSY["l_unknown"][1].replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    objects = load_voc_objects(xml_path)
    assert objects[0] == {"name": "horse", "xmin": 1.0, "ymin": 1.0, "xmax": 10.0, "ymax": 10.0, "difficult": True}
    assert [o["difficult"] for o in objects] == [True, False, False]
    bad = tmp_path / "bad.xml"
    bad.write_text(MESSY["n_malformed"][1])
    with pytest.raises(ValueError, match="bad.xml"):
        load_voc_objects(bad)


def test_line_format_round_trip_with_spaces():
    boxes = np.array([[1, 2, 3, 4, 0], [5.5, 6, 7.25, 8, 2]])
    line = format_annotation_line(image_path="/data/my  imgs/#3 a.jpg", boxes_xyxy_cls=boxes)
    assert line == "/data/my  imgs/#3 a.jpg 1,2,3,4,0 5.5,6,7.2,8,2"
    path, parsed = parse_annotation_line(line + "\n")
    assert path == "/data/my  imgs/#3 a.jpg"
    np.testing.assert_allclose(parsed, [[1, 2, 3, 4, 0], [5.5, 6, 7.2, 8, 2]], rtol=1e-6)


def test_real_bccd(tmp_path, capsys):
    main_dir = REPO / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    before = {p.name: p.stat().st_mtime_ns for p in main_dir.iterdir()}
    # annotation_mode 2 never writes a split, so even a regression cannot touch the vendored lists.
    result = voc_annotation.main(["--annotation_mode=2", f"--VOCdevkit_path={REPO / 'VOCdevkit'}",
                                  f"--classes_path={REPO / 'model_data' / 'bccd_classes.txt'}",
                                  f"--out_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in main_dir.iterdir()} == before
    assert result["lines"] == {("2007", "train"): 205, ("2007", "val"): 87, ("2007", "test"): 72}
    assert result["summary"]["dropped_degenerate"] == 2
    assert "BloodImage_00338.xml: dropped box (504, 337, 504, 337)" in out
    assert "BloodImage_00343.xml: dropped box" in out
    all_lines = [line for s in ("train", "val", "test")
                 for line in read_annotation_file(tmp_path / f"2007_{s}.txt").lines]
    assert len({line.split(" ")[0] for line in all_lines}) == 364
    line_338 = next(line for line in all_lines if "BloodImage_00338.jpg" in line)
    xml_text = (REPO / "VOCdevkit" / "VOC2007" / "Annotations" / "BloodImage_00338.xml").read_text()
    assert len(line_338.split(" ")) - 1 == xml_text.count("<object>") - 1
    assert Path(line_338.split(" ")[0]).is_file() and os.path.isabs(line_338.split(" ")[0])
    # The files are byte for byte those of the version before the dataset checks (paths relative to the checkout).
    golden = {"train": "f19889af346c30d161b7ecea4e6f2970c0e125e367962e51d100bac247db9194",
              "val": "7e70f1d5f6b4a713a72c5bd6e7b6d4b004f4b45767627f50f28ae96f6570b287",
              "test": "652cff183f85419e137fbb77fd8fd37f7f837df2b786ba7f81124b8333243eb7"}
    for name, digest in golden.items():
        text = (tmp_path / f"2007_{name}.txt").read_bytes().replace(f"{REPO}/".encode(), b"<REPO>/")
        assert hashlib.sha256(text).hexdigest() == digest, name
