"""VOC and COCO AP against the golden files, hand-computed values, a loop reference and pycocotools."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import GOLDEN_AP, assert_truncated_equal, golden_coco_json, load_golden, pycocotools_direct

from utils.eval.coco_eval import coco_ap
from utils.eval.utils_map import (DetBox, GTBox, evaluate_detections, read_detection_files, read_ground_truth_files,
                                  read_voc_ground_truth, voc_ap, write_detection_files, write_ground_truth_files)


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


def test_coco_matches_pycocotools_direct():
    expected = pycocotools_direct(*golden_coco_json())
    stats = coco_ap(gt=load_golden("groundtruths", detections=False), dets=load_golden("detections", detections=True),
                    class_names=["person"])
    assert [stats[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == pytest.approx(expected, abs=1e-12)
    assert 0.0 < stats["AP50"] < 1.0
