"""Dataset checks before any work: images that decode and agree with their XML, class names recorded in the
annotation files, class ids and image paths checked when training starts. All on generated data."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import voc_annotation
from utils.core.config import UserError
from utils.data.datacheck import check_annotation_files, raw_to_upright_xyxy
from utils.data.images import image_info, read_image_rgb
from utils.data.voc import format_classes_header, read_annotation_file

CLASSES = ["cat", "dog"]


def _xml(*, size, objects) -> str:
    """objects: (name, (xmin, ymin, xmax, ymax)); size: (width, height)."""
    body = "".join(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}"
                   f"</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for name, b in objects)
    return (f"<annotation><filename>x.jpg</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"</size>{body}</annotation>")


def _voc(root: Path, entries: dict) -> Path:
    """entries: stem -> (write_image(path) callable, XML text). Every stem goes to ImageSets/Main/train.txt."""
    year_dir = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year_dir / sub).mkdir(parents=True, exist_ok=True)
    for stem, (write_image, xml_text) in entries.items():
        write_image(year_dir / "JPEGImages" / f"{stem}.jpg")
        (year_dir / "Annotations" / f"{stem}.xml").write_text(xml_text)
    (year_dir / "ImageSets" / "Main" / "train.txt").write_text("\n".join(entries) + "\n")
    return year_dir


def _good_jpeg(path: Path) -> None:
    Image.new("RGB", (64, 48), (90, 120, 30)).save(path, quality=95)


def _run_annotation(root: Path, classes=CLASSES) -> dict:
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return voc_annotation.main([f"--VOCdevkit_path={root / 'VOCdevkit'}", f"--classes_path={root / 'classes.txt'}",
                                f"--out_dir={root / 'out'}", "--annotation_mode=2",
                                "--VOCdevkit_sets=[('2007', 'train')]"])


def _lines_of(root: Path) -> list[str]:
    return read_annotation_file(root / "out" / "2007_train.txt").lines


def test_truncated_jpeg_is_skipped_and_named(tmp_path, capsys):
    def truncated(path: Path) -> None:
        _good_jpeg(path)
        path.write_bytes(path.read_bytes()[:300])

    xml = _xml(size=(64, 48), objects=[("cat", (5, 5, 20, 20))])
    _voc(tmp_path, {"good": (_good_jpeg, xml), "cut": (truncated, xml)})
    result = _run_annotation(tmp_path)
    out = capsys.readouterr().out
    assert result["summary"]["skipped_unreadable_image"] == 1
    assert "cut.jpg: cannot be decoded" in out
    assert [Path(line.split(" ")[0]).name for line in _lines_of(tmp_path)] == ["good.jpg"]


def test_text_file_named_jpg_is_skipped_and_named(tmp_path, capsys):
    xml = _xml(size=(64, 48), objects=[("dog", (5, 5, 20, 20))])
    _voc(tmp_path, {"good": (_good_jpeg, xml), "text": (lambda p: p.write_text("not an image\n"), xml)})
    result = _run_annotation(tmp_path)
    assert result["summary"]["skipped_unreadable_image"] == 1
    assert "text.jpg: cannot be decoded" in capsys.readouterr().out
    assert len(_lines_of(tmp_path)) == 1


def _exif_image(path: Path, *, orientation: int, object_box_xyxy: tuple[int, int, int, int]) -> None:
    """A raw 64x48 gray image with a red rectangle at object_box_xyxy (raw pixels) and the given EXIF orientation."""
    pixels = np.full((48, 64, 3), 128, dtype=np.uint8)
    x1, y1, x2, y2 = object_box_xyxy
    pixels[y1:y2, x1:x2] = (255, 0, 0)
    # A little-endian TIFF block with one LONG orientation entry, so values beyond 16 bits (65537) can be written.
    exif = (b"Exif\x00\x00II*\x00" + (8).to_bytes(4, "little") + (1).to_bytes(2, "little")
            + (0x0112).to_bytes(2, "little") + (4).to_bytes(2, "little") + (1).to_bytes(4, "little")
            + orientation.to_bytes(4, "little") + (0).to_bytes(4, "little"))
    Image.fromarray(pixels).save(path, quality=95, exif=exif)


def _red_share(image: np.ndarray, box_xyxy) -> float:
    x1, y1, x2, y2 = (int(round(v)) for v in box_xyxy[:4])
    patch = image[y1:y2, x1:x2].astype(int)
    return float(((patch[..., 0] > 180) & (patch[..., 1] < 80)).mean()) if patch.size else 0.0


def test_exif6_image_with_xml_in_raw_frame_gets_boxes_on_the_object(tmp_path):
    raw_box = (4, 10, 24, 30)  # on the raw 64x48 pixels, where the XML was drawn
    xml = _xml(size=(64, 48), objects=[("cat", raw_box)])
    _voc(tmp_path, {"turned": (lambda p: _exif_image(p, orientation=6, object_box_xyxy=raw_box), xml)})
    result = _run_annotation(tmp_path)
    assert result["summary"]["rotated_from_raw_frame"] == 1
    (line,) = _lines_of(tmp_path)
    box = [float(v) for v in line.split(" ")[-1].split(",")[:4]]
    image = read_image_rgb(line.split(" ")[0])
    assert image.shape[:2] == (64, 48)  # the loader turns it upright: 48 wide, 64 high
    assert 0 <= box[0] < box[2] <= 48 and 0 <= box[1] < box[3] <= 64
    assert _red_share(image, box) > 0.9  # the box lands on the drawn object
    assert _red_share(image, raw_box) < 0.5  # the un-rotated box would not


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_raw_to_upright_matches_the_loader_for_every_orientation(tmp_path, orientation):
    raw_box = (4, 10, 24, 30)
    path = tmp_path / f"o{orientation}.jpg"
    _exif_image(path, orientation=orientation, object_box_xyxy=raw_box)
    upright = raw_to_upright_xyxy(np.array([[*raw_box, 0]], dtype=float), orientation=orientation, raw_size=(64, 48))
    assert _red_share(read_image_rgb(path), upright[0]) > 0.9


@pytest.mark.parametrize("orientation", [0, 65537])
def test_invalid_orientation_values_keep_the_raw_frame(tmp_path, orientation):
    raw_box = (4, 10, 24, 30)
    xml = _xml(size=(64, 48), objects=[("cat", raw_box)])
    _voc(tmp_path, {"odd": (lambda p: _exif_image(p, orientation=orientation, object_box_xyxy=raw_box), xml)})
    _run_annotation(tmp_path)
    (line,) = _lines_of(tmp_path)
    assert line.endswith(" 4,10,24,30,0")
    assert image_info(line.split(" ")[0]).upright_size == (64, 48)
    assert _red_share(read_image_rgb(line.split(" ")[0]), raw_box) > 0.9


def test_classes_file_matching_nothing_stops_and_lists_the_names_found(tmp_path):
    xml = _xml(size=(64, 48), objects=[("RBC", (5, 5, 20, 20)), ("WBC", (1, 1, 9, 9)), ("RBC", (2, 2, 8, 8))])
    _voc(tmp_path, {"a": (_good_jpeg, xml)})
    with pytest.raises(UserError, match=r"none of its classes.*RBC \(2\), WBC \(1\)"):
        _run_annotation(tmp_path, classes=["cat", "dog"])
    assert not (tmp_path / "out" / "2007_train.txt").exists()  # nothing written


def test_empty_split_is_announced(tmp_path, capsys):
    _voc(tmp_path, {"a": (_good_jpeg, _xml(size=(64, 48), objects=[("cat", (5, 5, 20, 20))]))})
    (tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "val.txt").write_text("")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    voc_annotation.main([f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}", f"--classes_path={tmp_path / 'classes.txt'}",
                         f"--out_dir={tmp_path / 'out'}", "--annotation_mode=2",
                         "--VOCdevkit_sets=[('2007', 'train'), ('2007', 'val')]"])
    assert "2007_val.txt holds 0 images" in capsys.readouterr().err
    with pytest.raises(UserError, match="2007_val.txt: holds no images"):
        read_annotation_file(tmp_path / "out" / "2007_val.txt")


def _annotation_file(path: Path, lines: list[str], *, class_names: list[str] | None) -> Path:
    header = [format_classes_header(class_names)] if class_names is not None else []
    path.write_text("\n".join(header + lines) + "\n")
    return path


@pytest.fixture
def two_images(tmp_path) -> list[str]:
    paths = []
    for name in ("a.jpg", "b.jpg"):
        _good_jpeg(tmp_path / name)
        paths.append(str(tmp_path / name))
    return paths


def _check(*files: Path, classes=CLASSES, on_corrupt="error", log=print):
    return check_annotation_files([read_annotation_file(f) for f in files], class_names=classes,
                                  classes_path="my_classes.txt", on_corrupt=on_corrupt, log=log)


def test_classes_file_with_other_names_than_the_header_is_refused(tmp_path, two_images):
    train = _annotation_file(tmp_path / "train.txt", [f"{two_images[0]} 1,1,9,9,1 2,2,8,8,0"],
                             class_names=["RBC", "WBC"])
    with pytest.raises(UserError) as err:
        _check(train, classes=["cat", "dog"])
    assert "['RBC', 'WBC']" in str(err.value) and "['cat', 'dog']" in str(err.value)
    assert "my_classes.txt" in str(err.value)
    assert _check(train, classes=["RBC", "WBC"])[0].lines == [f"{two_images[0]} 1,1,9,9,1 2,2,8,8,0"]


def test_file_without_header_still_works_with_one_note(tmp_path, two_images):
    train = _annotation_file(tmp_path / "train.txt", [f"{two_images[0]} 1,1,9,9,0 2,2,8,8,1"], class_names=None)
    val = _annotation_file(tmp_path / "val.txt", [f"{two_images[1]} 1,1,9,9,0 2,2,8,8,1"], class_names=None)
    notes = []
    _check(train, val, log=notes.append)
    notes = [n for n in notes if n.startswith("note:")]
    assert len(notes) == 1 and "cannot be checked" in notes[0] and "train.txt" in notes[0] and "val.txt" in notes[0]


def test_class_id_out_of_range_names_file_line_and_id(tmp_path, two_images):
    train = _annotation_file(tmp_path / "train.txt", [f"{two_images[0]} 1,1,9,9,0", f"{two_images[1]} 2,2,8,8,5"],
                             class_names=None)
    with pytest.raises(UserError, match=r"train.txt line 2: class id 5 but my_classes.txt lists 2 classes"):
        _check(train, log=lambda _: None)


def test_missing_images_are_all_reported_at_once(tmp_path, two_images):
    train = _annotation_file(tmp_path / "train.txt", [f"{two_images[0]} 1,1,9,9,0 2,2,8,8,1",
                                                       f"{tmp_path / 'gone1.jpg'} 1,1,5,5,0",
                                                       f"{tmp_path / 'gone2.jpg'}"], class_names=CLASSES)
    val = _annotation_file(tmp_path / "val.txt", [f"{tmp_path / 'gone3.jpg'}", two_images[1]], class_names=CLASSES)
    (tmp_path / "fake.jpg").write_text("text")
    with pytest.raises(UserError) as err:
        _check(train, val)
    message = str(err.value)
    assert message.startswith("3 problem(s)") and all(f"gone{i}.jpg" in message for i in (1, 2, 3))
    assert "train.txt line 3" in message and "val.txt line 2" in message and "on_corrupt=skip" in message
    warnings = []
    kept_train, kept_val = _check(train, val, on_corrupt="skip", log=warnings.append)
    assert kept_train.lines == [f"{two_images[0]} 1,1,9,9,0 2,2,8,8,1"] and kept_val.lines == [two_images[1]]
    assert sum("skipped (on_corrupt=skip)" in w for w in warnings) == 3


def test_text_file_named_jpg_is_refused_at_start_up(tmp_path, two_images):
    (tmp_path / "fake.jpg").write_text("not an image")
    train = _annotation_file(tmp_path / "train.txt", [f"{two_images[0]} 1,1,9,9,0 2,2,8,8,1",
                                                       f"{tmp_path / 'fake.jpg'}"], class_names=CLASSES)
    with pytest.raises(UserError, match=r"train.txt line 3: image .*fake.jpg: cannot be decoded.*on_corrupt=skip"):
        _check(train)
