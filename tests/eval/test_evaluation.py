"""The evaluator behind get_map.py: background images, unreadable images, bare state_dicts, variant recognition.

Expected values are computed by hand in the comments, or by pycocotools on COCO dicts written here directly.
"""
from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, REPO, pycocotools_direct
from PIL import Image

import get_map
from nets.compat import PUBLISHED_TO_OURS, StateDictKind, recognise_state_dict
from nets.yolo import build_model, init_weights
from utils.eval.evaluation import evaluate_voc_images
from utils.eval.utils_map import SKIPPED_FILE

COMPAT = FIXTURES / "compat"
BCCD = REPO / "VOCdevkit" / "VOC2007"


class SizeScoredDetector:
    """Stands in for yolo.YOLO: one RBC box at (10, 10, 29, 29) per image, scored 0.95 on 48 x 48 images and
    0.9 on others, so the background images (made 48 x 48) rank first."""

    class_names = ["RBC", "WBC"]

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def detect(self, image):
        score = 0.95 if image.size == (48, 48) else 0.9
        return types.SimpleNamespace(boxes_xyxy=np.array([[10.0, 10.0, 29.0, 29.0]]), scores=np.array([score]),
                                     class_ids=np.array([0]))


def rbc_xml(x1: int, y1: int) -> str:
    return (f"<annotation><size><width>64</width><height>64</height></size><object><name>RBC</name>"
            f"<difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x1 + 19}</xmax>"
            f"<ymax>{y1 + 19}</ymax></bndbox></object></annotation>")


def make_voc_with_traps(root: Path) -> Path:
    """img_a / img_b: one RBC each (64 x 64); bg_noxml: no XML; bg_empty: an XML without objects (both 48 x 48);
    bad: a text file named .jpg whose XML holds an RBC."""
    year = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True)
    for image_id, (x1, y1) in {"img_a": (10, 10), "img_b": (40, 40)}.items():
        Image.new("RGB", (64, 64)).save(year / "JPEGImages" / f"{image_id}.jpg")
        (year / "Annotations" / f"{image_id}.xml").write_text(rbc_xml(x1, y1))
    for image_id in ("bg_noxml", "bg_empty"):
        Image.new("RGB", (48, 48)).save(year / "JPEGImages" / f"{image_id}.jpg")
    (year / "Annotations" / "bg_empty.xml").write_text(
        "<annotation><size><width>48</width><height>48</height></size></annotation>")
    (year / "JPEGImages" / "bad.jpg").write_text("not an image\n")
    (year / "Annotations" / "bad.xml").write_text(rbc_xml(10, 10))
    (year / "ImageSets/Main/test.txt").write_text("img_b\nbg_noxml\nbad\nimg_a\nbg_empty\n")
    return year


def pycocotools_reference() -> list[float]:
    """COCO stats of the trap set written straight as COCO dicts: 4 scored images (bad left out), gt on img_a
    and img_b, the same box detected on all four (widths are x2 - x1 = 19)."""

    ids = {"bg_empty": 1, "bg_noxml": 2, "img_a": 3, "img_b": 4}
    dataset = {"images": [{"id": i} for i in ids.values()],
               "annotations": [{"id": 1, "image_id": 3, "category_id": 1, "bbox": [10, 10, 19, 19], "area": 361,
                                "iscrowd": 0},
                               {"id": 2, "image_id": 4, "category_id": 1, "bbox": [40, 40, 19, 19], "area": 361,
                                "iscrowd": 0}],
               "categories": [{"id": 1, "name": "RBC"}, {"id": 2, "name": "WBC"}]}
    results = [{"image_id": i, "category_id": 1, "bbox": [10, 10, 19, 19], "score": 0.95 if i <= 2 else 0.9}
               for i in ids.values()]
    return pycocotools_direct(dataset, results)


# Ranked detections: bg_empty 0.95 FP, bg_noxml 0.95 FP, img_a 0.9 TP, img_b 0.9 FP; 2 ground-truth objects
# (bad's is left out with bad). Precision at the one TP is 1/3 at recall 1/2: all-point AP = 1/2 * 1/3 = 1/6;
# VOC07 11-point: thresholds 0.0 .. 0.5 reach precision 1/3, so 6/11 * 1/3 = 2/11.
# (Background ignored: AP would be 1/2; bad's object counted as a miss: AP would be 1/3 * 1/3 = 1/9.)
EXPECTED_MAP, EXPECTED_MAP07 = 1 / 6, 2 / 11


def test_get_map_scores_background_images_and_skips_an_unreadable_one(tmp_path, monkeypatch, capsys):
    make_voc_with_traps(tmp_path / "VOCdevkit")
    monkeypatch.setitem(sys.modules, "yolo", types.SimpleNamespace(YOLO=SizeScoredDetector))
    map_out = tmp_path / "map_out"
    results = get_map.main(["--map_mode=0", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}", f"--map_out_path={map_out}",
                            "--backend=torch"])
    out = capsys.readouterr().out
    assert "skipped 1 unreadable image(s)" in out and "bad.jpg" in out
    assert results["map"] == pytest.approx(EXPECTED_MAP) and results["map_voc07"] == pytest.approx(EXPECTED_MAP07)
    assert results["per_class"]["RBC"]["n_gt"] == 2 and results["per_class"]["RBC"]["n_det"] == 4
    assert results["images"] == 4 and results["background_images"] == 2 and list(results["unreadable"]) == ["bad"]
    coco_keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    assert [results["coco"][k] for k in coco_keys] == pytest.approx(pycocotools_reference(), abs=1e-12)
    saved = json.loads((map_out / "results.json").read_text())
    assert saved["map"] == pytest.approx(EXPECTED_MAP) and list(saved["unreadable"]) == ["bad"]
    assert (map_out / "ground-truth" / "bg_noxml.txt").read_text() == ""  # a background image, written empty
    assert (map_out / SKIPPED_FILE).read_text().startswith("bad\t")

    # Mode 3 scores the written files and leaves the listed unreadable image out again.
    again = get_map.main(["--map_mode=3", f"--map_out_path={map_out}"])
    assert again["map"] == pytest.approx(EXPECTED_MAP) and again["images"] == 4


def test_evaluator_alone_on_the_trap_set(tmp_path):
    year = make_voc_with_traps(tmp_path)
    paths = sorted((year / "JPEGImages").iterdir())
    results = evaluate_voc_images(detector=SizeScoredDetector(), image_paths=paths, class_names=["RBC", "WBC"],
                                  coco=True)
    assert results["map"] == pytest.approx(EXPECTED_MAP) and results["map_voc07"] == pytest.approx(EXPECTED_MAP07)
    assert results["background_images"] == 2 and set(results["unreadable"]) == {"bad"}
    assert results["coco"]["AP50"] == pytest.approx(pycocotools_reference()[1], abs=1e-12)


def published_keys(model: str) -> dict[str, None]:
    name = {"yolov4": "yolov4_voc20_state_dict.txt", "yolov4-tiny": "yolov4_tiny_voc20_state_dict.txt"}[model]
    return {line.split("\t")[0]: None for line in (COMPAT / name).read_text().splitlines()}


@pytest.mark.parametrize("model", ["yolov4", "yolov4-tiny"])
def test_variant_recognised_from_keys(model):
    other = "yolov4" if model == "yolov4-tiny" else "yolov4-tiny"
    assert recognise_state_dict(published_keys(model)) == StateDictKind(variant=model, layout="published")
    ours = build_model(model=model, num_classes=3).state_dict()
    assert recognise_state_dict(ours) == StateDictKind(variant=model, layout="project")
    assert recognise_state_dict({f"module.{k}": v for k, v in ours.items()}).variant == model  # DataParallel
    # Keys of both variants at once fit two layouts, so neither is claimed.
    assert recognise_state_dict({**published_keys(model), **published_keys(other)}) is None
    assert recognise_state_dict({"conv.weight": None, "fc.bias": None}) is None


def to_published(state_dict: dict[str, torch.Tensor], model: str) -> dict[str, torch.Tensor]:
    ours_to_published = {ours: theirs for theirs, ours in PUBLISHED_TO_OURS[model].items()}
    out = {}
    for key, tensor in state_dict.items():
        prefix = max((p for p in ours_to_published if key.startswith(p)), key=len)
        out[ours_to_published[prefix] + key[len(prefix):]] = tensor
    return out


@pytest.mark.parametrize("layout", ["published", "project"])
def test_get_map_scores_a_bare_tiny_state_dict_without_model(tmp_path, layout):
    year = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True)
    image_ids = (BCCD / "ImageSets" / "Main" / "val.txt").read_text().split()[:2]
    for image_id in image_ids:
        shutil.copy(BCCD / "JPEGImages" / f"{image_id}.jpg", year / "JPEGImages")
        shutil.copy(BCCD / "Annotations" / f"{image_id}.xml", year / "Annotations")
    (year / "ImageSets/Main/test.txt").write_text("\n".join(image_ids) + "\n")
    torch.manual_seed(0)
    net = build_model(model="yolov4-tiny", num_classes=3)
    init_weights(net, obj_prior=0.05)
    state = net.state_dict() if layout == "project" else to_published(net.state_dict(), "yolov4-tiny")
    torch.save(state, tmp_path / "bare.pth")
    common = [f"--model_path={tmp_path / 'bare.pth'}", f"--classes_path={REPO / 'model_data' / 'bccd_classes.txt'}",
              f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}", "--input_shape=[128,128]", "--device=cpu", "--map_mode=1"]
    get_map.main([*common, f"--map_out_path={tmp_path / 'recognised'}"])
    get_map.main([*common, f"--map_out_path={tmp_path / 'explicit'}", "--model=yolov4-tiny"])
    for image_id in image_ids:  # the same detections as with the variant named explicitly
        recognised = (tmp_path / "recognised" / "detection-results" / f"{image_id}.txt").read_text()
        assert recognised == (tmp_path / "explicit" / "detection-results" / f"{image_id}.txt").read_text()
        assert recognised.count("\n") > 0
    with pytest.raises(ValueError, match=r"bare\.pth: its keys are those of a yolov4-tiny model, not yolov4; "
                                         r"set model=yolov4-tiny") as err:
        get_map.main([*common, f"--map_out_path={tmp_path / 'wrong'}", "--model=yolov4"])
    assert "\n" not in str(err.value)
