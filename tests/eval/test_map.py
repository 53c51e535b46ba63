"""Tests of VOC / COCO evaluation and get_map.py against golden files, hand-computed values and pycocotools."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import GOLDEN, GOLDEN_AP, assert_truncated_equal, load_golden, pycocotools_direct
from PIL import Image

import get_map
from utils.core.config import ConfigError, UserError
from utils.eval.coco_eval import coco_ap
from utils.eval.evaluation import predict_images
from utils.eval.utils_map import (DetBox, GTBox, evaluate_detections, read_detection_files, read_ground_truth_files,
                                  read_voc_ground_truth, voc_ap, write_detection_files, write_ground_truth_files)
from utils.infer.postprocess import PostprocessSettings


@pytest.mark.parametrize("iou_threshold", sorted(GOLDEN_AP))
def test_golden_voc_ap(iou_threshold):
    gt = load_golden("groundtruths", detections=False)
    dets = load_golden("detections", detections=True)
    results = evaluate_detections(gt=gt, dets=dets, class_names=["person"], iou_threshold=iou_threshold)
    expected_07, expected_all = GOLDEN_AP[iou_threshold]
    assert_truncated_equal(results["map_voc07"], expected_07)
    assert_truncated_equal(results["map"], expected_all)
    assert_truncated_equal(results["per_class"]["person"]["ap"], expected_all)
    assert results["per_class"]["person"]["n_gt"] == 15
    assert results["per_class"]["person"]["n_det"] == 24


def test_voc_ap_eleven_point_thresholds_are_the_arange_floats():
    # 0.6 < 0.6000000000000001, so a recall of exactly 0.6 reaches only the six points 0.0 .. 0.5.
    assert voc_ap(np.array([0.6]), np.array([1.0]), use_07_metric=True) == pytest.approx(6 / 11, abs=1e-15)
    assert voc_ap(np.array([0.6]), np.array([1.0]), use_07_metric=False) == pytest.approx(0.6, abs=1e-15)
    # Envelope: precision at recall 0.5 is raised to the later 0.75.
    rec, prec = np.array([0.25, 0.5, 1.0]), np.array([1.0, 0.5, 0.75])
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.25 * 1.0 + 0.75 * 0.75, abs=1e-15)


def test_difficult_match_is_neither_tp_nor_fp():
    gt = {"a": [GTBox("cell", 0, 0, 9, 9), GTBox("cell", 20, 20, 29, 29, difficult=True)]}
    dets = {"a": [DetBox("cell", 0.9, 20, 20, 29, 29),    # on the difficult object: ignored
                  DetBox("cell", 0.8, 0, 0, 9, 9),        # TP
                  DetBox("cell", 0.7, 50, 50, 59, 59)]}   # FP
    stats = evaluate_detections(gt=gt, dets=dets, class_names=["cell"])["per_class"]["cell"]
    # Ranked curve without the ignored one: TP (r 1, p 1), FP (r 1, p 1/2) -> AP 1. Counted as FP it would be 0.5.
    assert stats["ap"] == pytest.approx(1.0, abs=1e-12)
    assert stats["ap_voc07"] == pytest.approx(1.0, abs=1e-12)
    assert stats["n_gt"] == 1 and stats["n_det"] == 3
    assert stats["precision"] == pytest.approx(0.5) and stats["recall"] == pytest.approx(1.0)
    assert stats["f1"] == pytest.approx(2 / 3)


def test_duplicate_detection_is_fp_and_best_iou_gt_is_taken():
    gt = {"a": [GTBox("cell", 0, 0, 9, 9), GTBox("cell", 5, 0, 14, 9)], "b": [GTBox("cell", 0, 0, 9, 9)]}
    dets = {"a": [DetBox("cell", 0.9, 0, 0, 9, 9),    # TP on gt 0
                  DetBox("cell", 0.8, 1, 0, 10, 9),   # best IoU with gt 0 (already used): duplicate FP
                  DetBox("cell", 0.6, 4, 0, 13, 9)],  # IoU 60/140 with gt 0, 90/110 with gt 1 -> TP on gt 1
            "b": [DetBox("cell", 0.4, 30, 30, 39, 39)]}  # FP
    stats = evaluate_detections(gt=gt, dets=dets, class_names=["cell"])["per_class"]["cell"]
    # TP FP TP FP with 3 gt: recall 1/3 1/3 2/3 2/3, precision 1 1/2 2/3 1/2.
    assert stats["ap"] == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3, abs=1e-12)
    # 11-point: t = 0 .. 0.3 -> 1 (4 points), 0.4 .. 0.6 -> 2/3 (3 points), 0.7 .. 1 -> 0.
    assert stats["ap_voc07"] == pytest.approx((4 + 3 * 2 / 3) / 11, abs=1e-12)
    assert stats["recall_curve"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert stats["precision_curve"] == pytest.approx([1, 1 / 2, 2 / 3, 1 / 2])
    # Operating point 0.5: three detections, two TP.
    assert stats["precision"] == pytest.approx(2 / 3) and stats["recall"] == pytest.approx(2 / 3)


def test_iou_exactly_at_threshold_is_tp_with_plus_one_pixels():
    # gt 0..9 covers 10x10 = 100 pixels, detection 0..9 x 0..4 covers 50 of them: IoU exactly 0.5
    # (without the +1 convention it would be 36/81 and miss).
    gt = {"a": [GTBox("cell", 0, 0, 9, 9)]}
    dets = {"a": [DetBox("cell", 0.9, 0, 0, 9, 4)]}
    assert evaluate_detections(gt=gt, dets=dets, class_names=["cell"], iou_threshold=0.5)["map"] == 1.0
    assert evaluate_detections(gt=gt, dets=dets, class_names=["cell"], iou_threshold=0.51)["map"] == 0.0


def loop_reference_ap(gt: dict, dets: dict, class_name: str, iou_threshold: float) -> tuple[float, float]:
    """Classic VOC devkit procedure, written as plain loops (all-point AP, 11-point AP)."""
    ranked = [(image_id, d) for image_id, boxes in dets.items() for d in boxes if d.class_name == class_name]
    ranked.sort(key=lambda item: -item[1].score)  # list.sort is stable
    used = {image_id: [False] * len(boxes) for image_id, boxes in gt.items()}
    n_gt = sum(1 for boxes in gt.values() for g in boxes if g.class_name == class_name and not g.difficult)
    flags = []
    for image_id, d in ranked:
        best, best_k = -1.0, -1
        for k, g in enumerate(gt.get(image_id, [])):
            if g.class_name != class_name:
                continue
            iw = min(d.x2, g.x2) - max(d.x1, g.x1) + 1
            ih = min(d.y2, g.y2) - max(d.y1, g.y1) + 1
            inter = max(iw, 0) * max(ih, 0)
            union = (d.x2 - d.x1 + 1) * (d.y2 - d.y1 + 1) + (g.x2 - g.x1 + 1) * (g.y2 - g.y1 + 1) - inter
            if inter / union > best:
                best, best_k = inter / union, k
        if best >= iou_threshold and gt[image_id][best_k].difficult:
            continue
        if best >= iou_threshold and not used[image_id][best_k]:
            used[image_id][best_k] = True
            flags.append(1)
        else:
            flags.append(0)
    tp = np.cumsum(flags)
    recall, precision = tp / n_gt, tp / np.arange(1, len(flags) + 1)
    ap07 = sum(max([p for r, p in zip(recall, precision) if r >= t], default=0.0) for t in np.arange(0, 1.1, 0.1)) / 11
    area, prev_r = 0.0, 0.0
    for i, r in enumerate(recall):
        area += (r - prev_r) * max(precision[i:])
        prev_r = r
    return area, ap07


def test_matches_loop_reference_on_random_data():
    rng = np.random.default_rng(7)
    names = ["a", "b", "c"]
    gt, dets = {}, {}
    for i in range(40):
        n_gt = int(rng.integers(0, 7))
        gt_xyxy = np.cumsum(rng.integers(0, 30, (n_gt, 4)), axis=1).astype(float)  # x1 <= y1 <= x2 <= y2 is fine
        gt[f"im{i:02d}"] = [GTBox(names[rng.integers(3)], *box, difficult=bool(rng.random() < 0.15))
                            for box in gt_xyxy.tolist()]
        # Jittered copies of the gt (some twice: duplicates), some with the wrong class, plus clutter.
        source = np.concatenate([gt_xyxy, gt_xyxy[: n_gt // 2], rng.integers(0, 90, (3, 4)).astype(float)])
        det_xyxy = np.sort(source + rng.integers(-3, 4, source.shape), axis=1)
        classes = [g.class_name for g in gt[f"im{i:02d}"]] * 2
        dets[f"im{i:02d}"] = [DetBox(classes[k] if k < len(classes) and rng.random() < 0.9 else names[rng.integers(3)],
                                     float(rng.integers(1, 6)) / 5, *box)  # few score levels: many ties
                              for k, box in enumerate(det_xyxy.tolist())]
    for thr in (0.1, 0.3, 0.5):
        results = evaluate_detections(gt=gt, dets=dets, class_names=names, iou_threshold=thr)
        for name in names:
            area, ap07 = loop_reference_ap(gt, dets, name, thr)
            assert results["per_class"][name]["ap"] == pytest.approx(area, abs=1e-12)
            assert results["per_class"][name]["ap_voc07"] == pytest.approx(ap07, abs=1e-12)
        assert 0.2 < results["map"] < 1.0


def test_class_without_gt_is_excluded_and_class_without_dets_scores_zero():
    gt = {"a": [GTBox("rbc", 0, 0, 9, 9), GTBox("wbc", 20, 20, 39, 39)]}
    dets = {"a": [DetBox("rbc", 0.9, 0, 0, 9, 9), DetBox("platelet", 0.8, 50, 50, 55, 55)]}
    results = evaluate_detections(gt=gt, dets=dets, class_names=["rbc", "wbc", "platelet"])
    assert results["map"] == pytest.approx(0.5) and results["map_voc07"] == pytest.approx(0.5)
    assert results["per_class"]["wbc"]["ap"] == 0.0 and results["per_class"]["wbc"]["n_det"] == 0
    platelet = results["per_class"]["platelet"]
    assert platelet["ap"] is None and platelet["n_gt"] == 0 and platelet["n_det"] == 1


def test_empty_detections_and_empty_everything():
    gt = {"a": [GTBox("rbc", 0, 0, 9, 9)], "b": []}
    results = evaluate_detections(gt=gt, dets={}, class_names=["rbc"])
    assert results["map"] == 0.0 and results["per_class"]["rbc"]["ap"] == 0.0
    assert results["per_class"]["rbc"]["precision"] == 0.0 and results["per_class"]["rbc"]["f1"] == 0.0
    assert evaluate_detections(gt={}, dets={}, class_names=["rbc"])["map"] == 0.0
    with pytest.raises(ValueError, match="not in class_names"):
        evaluate_detections(gt=gt, dets={"a": [DetBox("dog", 0.5, 0, 0, 1, 1)]}, class_names=["rbc"])


def test_text_files_round_trip_and_errors(tmp_path):
    gt = {"img1": [GTBox("rbc", 1.5, 2, 30.25, 40, difficult=True), GTBox("wbc", 0, 0, 10, 10)], "img2": []}
    dets = {"img1": [DetBox("rbc", 0.1 + 0.2, 1.0 / 3, 2, 30, 40)]}
    write_ground_truth_files(map_out_path=tmp_path, gt=gt)
    write_detection_files(map_out_path=tmp_path, dets=dets)
    assert (tmp_path / "ground-truth" / "img1.txt").read_text().splitlines()[0] == "rbc 1.5 2 30.25 40 difficult"
    assert read_ground_truth_files(map_out_path=tmp_path) == gt
    assert read_detection_files(map_out_path=tmp_path) == dets  # exact floats; img2 has no file
    (tmp_path / "detection-results" / "img1.txt").write_text("rbc 0.5 1 2 3 4\nrbc 0.5 1 2 3\n")
    with pytest.raises(ValueError, match=r"img1\.txt:2"):
        read_detection_files(map_out_path=tmp_path)
    (tmp_path / "ground-truth" / "img2.txt").write_text("rbc 1 2 x 4\n")
    with pytest.raises(ValueError, match=r"img2\.txt:1"):
        read_ground_truth_files(map_out_path=tmp_path)
    with pytest.raises(ValueError, match="whitespace"):
        write_ground_truth_files(map_out_path=tmp_path, gt={"i": [GTBox("red cell", 0, 0, 1, 1)]})


def test_read_voc_ground_truth(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><object><name> RBC </name><difficult>1</difficult><bndbox><xmin>1</xmin>"
                   "<ymin>2</ymin><xmax>30</xmax><ymax>40.5</ymax></bndbox></object><object><name>WBC</name>"
                   "<bndbox><xmin>5</xmin><ymin>6</ymin><xmax>7</xmax><ymax>8</ymax></bndbox></object></annotation>")
    assert read_voc_ground_truth(xml) == [GTBox("RBC", 1, 2, 30, 40.5, True), GTBox("WBC", 5, 6, 7, 8, False)]
    xml.write_text("<annotation><object><name>RBC</name><bndbox><xmin>1</xmin></bndbox></object></annotation>")
    with pytest.raises(ValueError, match=r"a\.xml: object #1"):
        read_voc_ground_truth(xml)


def test_coco_perfect_and_hand_known():
    gt = {"a": [GTBox("rbc", 100, 100, 200, 180)], "b": [GTBox("wbc", 10, 10, 60, 70)]}
    perfect = {i: [DetBox(b.class_name, 0.9, b.x1, b.y1, b.x2, b.y2) for b in boxes] for i, boxes in gt.items()}
    stats = coco_ap(gt=gt, dets=perfect, class_names=["rbc", "wbc"])
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    # One 10x10 object, detection 10x7.2: IoU 0.72 passes thresholds 0.50 .. 0.70 (5 of 10) -> AP 0.5.
    gt = {"a": [GTBox("rbc", 0, 0, 10, 10)]}
    stats = coco_ap(gt=gt, dets={"a": [DetBox("rbc", 0.8, 0, 0, 10, 7.2)]}, class_names=["rbc"])
    assert stats["AP"] == pytest.approx(0.5) and stats["AP50"] == pytest.approx(1.0)
    assert stats["AP75"] == pytest.approx(0.0) and stats["APs"] == pytest.approx(0.5)
    assert stats["APm"] == -1.0 and stats["APl"] == -1.0
    assert coco_ap(gt=gt, dets={}, class_names=["rbc"]) == {k: 0.0 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}


def golden_coco_json() -> tuple[dict, list]:
    """The golden data written straight in COCO form (ids by sorted image name), independent of utils.eval.coco_eval."""
    names = sorted(p.stem for p in (GOLDEN / "groundtruths").glob("*.txt"))
    annotations, results = [], []
    for image_id, name in enumerate(names, start=1):
        for line in (GOLDEN / "groundtruths" / f"{name}.txt").read_text().split("\n"):
            if line.strip():
                x, y, w, h = map(float, line.split()[1:])
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        for line in (GOLDEN / "detections" / f"{name}.txt").read_text().split("\n"):
            if line.strip():
                score, x, y, w, h = map(float, line.split()[1:])
                results.append({"image_id": image_id, "category_id": 1, "bbox": [x, y, w, h], "score": score})
    dataset = {"images": [{"id": i} for i in range(1, len(names) + 1)], "annotations": annotations,
               "categories": [{"id": 1, "name": "person"}]}
    return dataset, results


def test_coco_matches_pycocotools_direct():
    expected = pycocotools_direct(*golden_coco_json())
    stats = coco_ap(gt=load_golden("groundtruths", detections=False), dets=load_golden("detections", detections=True),
                    class_names=["person"])
    assert [stats[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == pytest.approx(expected, abs=1e-12)
    assert 0.0 < stats["AP50"] < 1.0


def write_golden_map_out(map_out: Path) -> None:
    write_ground_truth_files(map_out_path=map_out, gt=load_golden("groundtruths", detections=False))
    write_detection_files(map_out_path=map_out, dets=load_golden("detections", detections=True))


def test_get_map_mode3_and_mode4_from_text_files(tmp_path, capsys):
    map_out = tmp_path / "map_out"
    write_golden_map_out(map_out)
    get_map.main(["--map_mode=3", f"--map_out_path={map_out}", "--MINOVERLAP=0.3"])
    saved = json.loads((map_out / "results.json").read_text())
    assert_truncated_equal(saved["map"], GOLDEN_AP[0.3][1])
    assert_truncated_equal(saved["map_voc07"], GOLDEN_AP[0.3][0])
    assert saved["per_class"]["person"]["n_gt"] == 15 and "coco" not in saved
    assert {"ap", "ap_voc07", "n_gt"} <= set(saved["per_class"]["person"])
    assert "mAP@0.3" in capsys.readouterr().out

    get_map.main(["--map_mode=4", f"--map_out_path={map_out}"])
    saved = json.loads((map_out / "results.json").read_text())
    assert_truncated_equal(saved["map"], GOLDEN_AP[0.5][1])
    expected = pycocotools_direct(*golden_coco_json())
    assert [saved["coco"][k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == pytest.approx(expected, abs=1e-12)


def test_modes_3_and_4_refuse_a_missing_half_instead_of_scoring_zero(tmp_path):
    map_out = tmp_path / "map_out"
    with pytest.raises(UserError, match=r"map_out_path .*map_out: no such folder; map_mode 0 writes the ground truth "
                                        r"and the detections there \(or map_mode 2 and map_mode 1\)"):
        get_map.main(["--map_mode=3", f"--map_out_path={map_out}"])
    write_ground_truth_files(map_out_path=map_out, gt=load_golden("groundtruths", detections=False))
    with pytest.raises(UserError, match=r"map_out/detection-results: no such folder; map_mode 1 \(or 0\) writes the "
                                        r"detections of the image set there"):
        get_map.main(["--map_mode=3", f"--map_out_path={map_out}"])
    assert not (map_out / "results.json").exists()
    dets = load_golden("detections", detections=True)
    write_detection_files(map_out_path=map_out, dets={i: boxes for i, boxes in dets.items() if i != "00003"})
    with pytest.raises(UserError, match=r"no detection file for 1 of the 7 evaluated images, e.g. '00003'; run "
                                        r"map_mode 1 \(or 0\) for this image set"):
        get_map.main(["--map_mode=4", f"--map_out_path={map_out}"])

    only_dets = tmp_path / "only_dets"
    write_detection_files(map_out_path=only_dets, dets=dets)
    with pytest.raises(UserError, match=r"only_dets/ground-truth: no such folder; map_mode 2 \(or 0\) writes"):
        get_map.main(["--map_mode=4", f"--map_out_path={only_dets}"])
    (only_dets / "ground-truth").mkdir()
    with pytest.raises(UserError, match=r"ground-truth: holds no ground-truth files; map_mode 2 \(or 0\) writes"):
        get_map.main(["--map_mode=3", f"--map_out_path={only_dets}"])
    write_ground_truth_files(map_out_path=only_dets, gt={i: [] for i in dets})  # background images only
    with pytest.raises(UserError, match=r"the 7 evaluated images hold no ground-truth object, so there is no AP"):
        get_map.main(["--map_mode=3", f"--map_out_path={only_dets}"])
    assert not (only_dets / "results.json").exists()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match=r"map_out_path .*a_file: is a file, not a folder"):
        get_map.main(["--map_mode=2", f"--map_out_path={tmp_path / 'a_file'}"])


def test_settings_types_and_errors(tmp_path):
    map_out = tmp_path / "map_out"
    write_golden_map_out(map_out)
    # Typed overrides: int, float and bool words convert; the result matches the golden AP at IoU 0.1.
    results = get_map.main(["--map_mode=3", f"--map_out_path={map_out}", "--MINOVERLAP=0.1", "--map_vis=no",
                            "--classes_path=none"])
    assert_truncated_equal(results["map"], GOLDEN_AP[0.1][1])
    with pytest.raises(ConfigError, match="unknown setting 'unknown_key'"):
        get_map.main(["--unknown_key=1", f"--map_out_path={map_out}"])
    with pytest.raises(ConfigError, match=r"did you mean map_mode"):
        get_map.main(["--mapmode=1"])
    for bad, key in [("--map_mode=0.5", "map_mode"), ("--map_vis=maybe", "map_vis"),
                     ("--MINOVERLAP=high", "MINOVERLAP"), ("--input_shape=416", "input_shape"),
                     ("--input_shape=[416.5,416]", "input_shape")]:
        with pytest.raises(ConfigError, match=f"--{key}=.*: expected"):
            get_map.main([bad, "--map_mode=3", f"--map_out_path={map_out}"])
    with pytest.raises(ConfigError, match="--key=value"):
        get_map.main(["map_mode=1"])
    for mode in (-1, 5):
        with pytest.raises(ConfigError, match=f"--map_mode={mode}: expected one of 0, 1, 2, 3, 4"):
            get_map.main([f"--map_mode={mode}", f"--map_out_path={map_out}"])


class FakeDetector:
    """Stands in for yolo.YOLO: one fixed box for every image."""

    class_names = ["RBC", "WBC"]
    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.seen_sizes = []
        FakeDetector.instances.append(self)

    def detect(self, image):
        assert image.mode == "RGB"
        self.seen_sizes.append(image.size)
        return types.SimpleNamespace(boxes_xyxy=np.array([[10.0, 10.0, 29.0, 29.0]]), scores=np.array([0.9]),
                                     class_ids=np.array([0]))


def make_voc(root: Path, extensions: tuple[str, str] = (".jpg", ".jpg")) -> None:
    year = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True)
    (year / "ImageSets/Main/test.txt").write_text("img_b\nimg_a\n")
    for ext, (image_id, (x1, y1)) in zip(extensions, {"img_a": (10, 10), "img_b": (40, 40)}.items()):
        Image.new("RGB", (64, 64)).save(year / "JPEGImages" / f"{image_id}{ext}",
                                        format="PNG" if ext.lower() == ".png" else "JPEG")
        (year / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><object><name>RBC</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x1 + 19}</xmax><ymax>{y1 + 19}</ymax></bndbox></object></annotation>")


def test_predict_images_uses_detector_interface(tmp_path):
    make_voc(tmp_path)
    path = tmp_path / "VOC2007" / "JPEGImages" / "img_a.jpg"
    predictions = predict_images(detector=FakeDetector(), image_paths={"img_a": path})
    assert predictions.dets == {"img_a": [DetBox("RBC", 0.9, 10.0, 10.0, 29.0, 29.0)]}
    assert predictions.unreadable == {}


def test_get_map_mode0_with_stub_detector(tmp_path, monkeypatch):
    make_voc(tmp_path / "VOCdevkit")
    monkeypatch.setitem(sys.modules, "yolo", types.SimpleNamespace(YOLO=FakeDetector))
    monkeypatch.setattr(FakeDetector, "instances", [])
    map_out = tmp_path / "map_out"
    results = get_map.main(["--map_mode=0", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}",
                            f"--map_out_path={map_out}"])
    # Defaults reach the detector: settings from the checkpoint, current post-processing.
    assert FakeDetector.instances[0].kwargs == {
        "model_path": "logs/best_epoch_weights.pth", "classes_path": None, "anchors_path": None, "anchors_mask": None,
        "model": None, "input_shape": None, "letterbox_image": True,
        "postprocess_settings": PostprocessSettings(confidence=0.001, nms_iou=0.5, nms_type="nms", multi_label=False),
        "device": "auto", "precision": "auto", "cfg_path": None}
    # The same-score tie is ranked in sorted image order: img_a TP, img_b FP -> recall 1/2, precision 1 then 1/2.
    assert results["map"] == pytest.approx(0.5) and results["map_voc07"] == pytest.approx(6 / 11)
    saved = json.loads((map_out / "results.json").read_text())
    assert saved["per_class"]["WBC"]["ap"] is None and saved["per_class"]["RBC"]["n_gt"] == 2
    assert set(saved["coco"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert saved["coco"]["AP50"] == pytest.approx(51 / 101)  # 101-point recall grid: 0 .. 0.5 at precision 1
    for png in ("ap_per_class.png", "pr_curves/pr_RBC.png", "ground_truth_stats.png"):
        assert (map_out / png).stat().st_size > 0


def test_modes_1_and_2_write_one_half_each_and_the_second_evaluates(tmp_path, monkeypatch, capsys):
    make_voc(tmp_path / "VOCdevkit")
    monkeypatch.setitem(sys.modules, "yolo", types.SimpleNamespace(YOLO=FakeDetector))
    monkeypatch.setattr(FakeDetector, "instances", [])
    map_out = tmp_path / "map_out"
    args = [f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}", f"--map_out_path={map_out}"]
    assert get_map.main(["--map_mode=1", "--map_vis=true", *args]) is None
    assert "lacks the ground truth; run mode 2, then mode 3 or 4" in capsys.readouterr().out
    assert sorted(p.name for p in (map_out / "detection-results").iterdir()) == ["img_a.txt", "img_b.txt"]
    assert not (map_out / "ground-truth").exists()  # mode 1 reads the XMLs only to draw them
    assert sorted(p.name for p in (map_out / "images-optional").iterdir()) == ["img_a.jpg", "img_b.jpg"]
    results = get_map.main(["--map_mode=2", *args])
    assert len(FakeDetector.instances) == 1  # mode 2 predicts nothing
    # The same hand-computed values as mode 0 on this set: img_a TP, img_b FP at the same score.
    assert results["map"] == pytest.approx(0.5) and results["map_voc07"] == pytest.approx(6 / 11)
    assert "coco" not in results and not (map_out / "ap_per_class.png").exists()  # COCO AP and plots: modes 0 / 4


def test_get_map_detector_settings_and_image_extensions(tmp_path, monkeypatch):
    make_voc(tmp_path / "VOCdevkit", extensions=(".JPG", ".png"))
    monkeypatch.setitem(sys.modules, "yolo", types.SimpleNamespace(YOLO=FakeDetector))
    monkeypatch.setattr(FakeDetector, "instances", [])
    map_out = tmp_path / "map_out"
    results = get_map.main(["--map_mode=0", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}", f"--map_out_path={map_out}",
                            "--input_shape=[320,288]", "--letterbox_image=false", "--multi_label=true",
                            "--nms_type=diou", "--device=cpu", "--confidence=0.25", "--nms_iou=0.45"])
    kwargs = FakeDetector.instances[0].kwargs
    assert kwargs["input_shape"] == [320, 288] and kwargs["letterbox_image"] is False
    assert kwargs["device"] == "cpu"
    assert kwargs["postprocess_settings"] == PostprocessSettings(confidence=0.25, nms_iou=0.45, nms_type="diou",
                                                                 multi_label=True)
    assert FakeDetector.instances[0].seen_sizes == [(64, 64), (64, 64)]  # img_b.png and img_a.JPG were both read
    assert results["map"] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="--nms_type=soft: expected one of 'nms', 'diou'"):
        get_map.main(["--map_mode=1", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}", "--nms_type=soft",
                      f"--map_out_path={map_out}"])

    (tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages" / "img_b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"test\.txt: image id 'img_b' \(1 of 2 ids\) has no image"):
        get_map.main(["--map_mode=1", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}", f"--map_out_path={tmp_path / 'x'}"])
    assert len(FakeDetector.instances) == 1  # the missing image is found before a detector is built
    # Mode 2 reads only the XMLs, so a missing image does not stop it.
    get_map.main(["--map_mode=2", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}", f"--map_out_path={tmp_path / 'gt'}"])
    assert sorted(p.name for p in (tmp_path / "gt" / "ground-truth").iterdir()) == ["img_a.txt", "img_b.txt"]


def test_an_image_set_of_unreadable_images_is_an_error(tmp_path, monkeypatch):
    make_voc(tmp_path / "VOCdevkit")
    for image in (tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages").iterdir():
        image.write_bytes(b"not an image")
    monkeypatch.setitem(sys.modules, "yolo", types.SimpleNamespace(YOLO=FakeDetector))
    with pytest.raises(UserError, match=r"none of the 2 images of the image set can be read: cannot decode image "
                                        r".*img_b.jpg: .*; fix or remove it$"):
        get_map.main(["--map_mode=0", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}",
                      f"--map_out_path={tmp_path / 'map_out'}"])


def test_a_classes_file_naming_other_classes_is_refused(tmp_path):
    """get_map.py with a checkpoint and another dataset's classes file of the same length: refused by name."""
    import torch

    from nets.yolo import build_model

    make_voc(tmp_path / "VOCdevkit")
    config = {"model": "yolov4-tiny", "class_names": ["RBC", "WBC", "Platelets"], "input_shape": [64, 64],
              "anchors": [[10.0, 14.0], [23.0, 27.0], [37.0, 58.0], [81.0, 82.0], [135.0, 169.0], [344.0, 319.0]],
              "anchors_mask": [[3, 4, 5], [1, 2, 3]]}
    torch.save({"model": build_model(model="yolov4-tiny", num_classes=3).state_dict(), "config": config},
               tmp_path / "tiny.pth")
    (tmp_path / "abc.txt").write_text("a\nb\nc\n")
    with pytest.raises(UserError, match=r"abc.txt: class 0 is 'a', but checkpoint .*tiny.pth was trained with 'RBC'"):
        get_map.main(["--map_mode=1", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}", "--device=cpu",
                      f"--model_path={tmp_path / 'tiny.pth'}", f"--classes_path={tmp_path / 'abc.txt'}",
                      f"--map_out_path={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()


def test_plots_survive_a_class_with_ground_truth_but_no_detections(tmp_path):
    from utils.eval.map_plots import plot_ap_bars, plot_pr_curves

    gt = {"a": [GTBox("cat", 0, 0, 9, 9), GTBox("dog", 20, 20, 29, 29)]}
    dets = {"a": [DetBox("cat", 0.9, 0, 0, 9, 9)]}
    results = evaluate_detections(gt=gt, dets=dets, class_names=["cat", "dog"])
    assert results["per_class"]["dog"]["ap"] == 0.0
    paths = plot_pr_curves(results=results, out_dir=tmp_path)
    assert sorted(p.name for p in paths) == ["pr_cat.png", "pr_dog.png"]
    plot_ap_bars(results=results, out_dir=tmp_path)
