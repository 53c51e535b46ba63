"""The converter on the bundled BCCD devkit: VOC -> COCO against the XML files parsed here (the oracle), and
pycocotools; VOC -> YOLO -> COCO -> VOC gives the same boxes (within 0.5 px) and class names per split;
convert_dataset.py as a user runs it, refusing a folder that is not empty."""
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, REPO, VOC
from pycocotools.coco import COCO

import convert_dataset
from utils.core.config import ConfigError, UserError
from utils.data.convert import convert_dataset as convert
from utils.data.dataset import load_dataset

BCCD_CLASSES = str(REPO / "model_data" / "bccd_classes.txt")


def quiet(*_args, **_kwargs) -> None:
    pass


@pytest.fixture(scope="module")
def bccd():
    return load_dataset(REPO / "VOCdevkit", dataset_format="voc", classes_path=BCCD_CLASSES, log=quiet)


def xml_boxes(stem: str) -> list[tuple]:
    """(class name, x1, y1, x2, y2) of one BCCD XML, clipped to its <size>, boxes of no area left out; sorted."""
    root = ET.parse(VOC / "Annotations" / f"{stem}.xml").getroot()
    width, height = (float(root.find("size").findtext(key)) for key in ("width", "height"))
    boxes = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        x1, x2 = (min(max(float(box.findtext(k)), 0), width) for k in ("xmin", "xmax"))
        y1, y2 = (min(max(float(box.findtext(k)), 0), height) for k in ("ymin", "ymax"))
        if x2 > x1 and y2 > y1:
            boxes.append((obj.findtext("name").strip(), x1, y1, x2, y2))
    return sorted(boxes)


def named_boxes(dataset) -> dict:
    """split -> image stem -> sorted (class name, x1, y1, x2, y2)."""
    return {split: {r.image_id: sorted((dataset.class_names[c], *map(float, box))
                                       for box, c in zip(r.boxes_xyxy, r.class_ids)) for r in records}
            for split, records in dataset.splits.items()}


def assert_same_boxes(got: dict, expected: dict, *, tolerance: float = 0.5) -> None:
    """Per split and image the same boxes: each expected box has its own box of its class within ``tolerance`` px
    (matched to the nearest, one to one; the order of boxes is free)."""
    assert got.keys() == expected.keys()
    for split in expected:
        assert got[split].keys() == expected[split].keys(), split
        for stem, boxes in expected[split].items():
            assert sorted(b[0] for b in got[split][stem]) == sorted(b[0] for b in boxes), (split, stem)
            left = list(got[split][stem])
            for name, *box in boxes:
                candidates = [g for g in left if g[0] == name]
                nearest = min(candidates, key=lambda g: np.abs(np.subtract(g[1:], box)).max())
                assert np.abs(np.subtract(nearest[1:], box)).max() <= tolerance, (split, stem, nearest, box)
                left.remove(nearest)
        names = Counter(b[0] for image in got[split].values() for b in image)
        assert names == Counter(b[0] for image in expected[split].values() for b in image), split


def test_voc_to_coco_matches_the_xml_files_and_loads_in_pycocotools(bccd, tmp_path):
    out = convert(source=bccd, to="coco", out=tmp_path / "coco", link_images=True)
    for split in ("train", "val", "test"):
        stems = (VOC / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
        assert len(coco.getAnnIds()) == sum(len(r.class_ids) for r in bccd.splits[split])
        assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == CLASSES
        by_stem = {Path(image["file_name"]).stem: image_id for image_id, image in coco.imgs.items()}
        assert sorted(by_stem) == sorted(stems)
        for stem in stems:
            annotations = coco.imgToAnns[by_stem[stem]]
            got = sorted((coco.cats[a["category_id"]]["name"], a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                          a["bbox"][1] + a["bbox"][3]) for a in annotations)
            expected = xml_boxes(stem)
            assert [g[0] for g in got] == [e[0] for e in expected], stem
            np.testing.assert_allclose([g[1:] for g in got], [e[1:] for e in expected], atol=0.5, err_msg=stem)
    again = load_dataset(out, classes_path=BCCD_CLASSES, log=quiet)
    assert again.format == "coco" and again.class_names == CLASSES and again.category_ids == [1, 2, 3]
    assert_same_boxes(named_boxes(again), named_boxes(bccd))


def test_voc_to_yolo_to_coco_to_voc_keeps_boxes_and_class_names(bccd, tmp_path):
    yolo = load_dataset(convert(source=bccd, to="yolo", out=tmp_path / "yolo", link_images=True), log=quiet)
    coco = load_dataset(convert(source=yolo, to="coco", out=tmp_path / "coco", link_images=True), log=quiet)
    voc = load_dataset(convert(source=coco, to="voc", out=tmp_path / "voc", link_images=True), log=quiet)
    assert [yolo.format, coco.format, voc.format] == ["yolo", "coco", "voc"]
    for dataset in (yolo, coco, voc):
        assert dataset.class_names == CLASSES
        assert_same_boxes(named_boxes(dataset), named_boxes(bccd))


def test_unknown_target_format_is_refused(bccd, tmp_path):
    with pytest.raises(UserError, match="to='xml': one of voc, yolo, coco"):
        convert(source=bccd, to="xml", out=tmp_path / "x", link_images=True)
    assert not (tmp_path / "x").exists()


def test_convert_dataset_script_end_to_end_and_a_folder_that_is_not_empty(tmp_path, capsys):
    argv = [f"--dataset={REPO / 'VOCdevkit'}", f"--classes_path={BCCD_CLASSES}", "--to=coco",
            f"--out={tmp_path / 'out'}", "--link_images=True"]
    result = convert_dataset.main(argv)
    out = capsys.readouterr().out
    assert f"read voc dataset {REPO / 'VOCdevkit'}: classes {CLASSES}" in out
    assert "  train: 205 images (0 background), 2804 boxes" in out
    assert f"wrote coco dataset {tmp_path / 'out'} (images linked)" in out
    assert result["out"] == tmp_path / "out"
    assert sorted(p.name for p in (tmp_path / "out" / "annotations").iterdir()) == [
        "instances_test.json", "instances_train.json", "instances_val.json"]
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*"))
    with pytest.raises(UserError, match="exists and is not empty"):
        convert_dataset.main(argv)
    assert "read voc dataset" not in capsys.readouterr().out  # refused before the dataset is read
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind
    with pytest.raises(ConfigError, match="give --out="):
        convert_dataset.main([f"--dataset={REPO / 'VOCdevkit'}"])


def test_convert_dataset_script_errors_as_a_user_sees_them(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.txt").write_text("")
    result = subprocess.run([sys.executable, str(REPO / "convert_dataset.py"), f"--dataset={REPO / 'VOCdevkit'}",
                             f"--out={tmp_path / 'out'}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: out {tmp_path / 'out'}: exists and is not empty")
