"""The evaluator's per-detection decisions (match_detections), worked out by hand on a small set."""
import numpy as np
import pytest

from utils.eval.utils_map import DetBox, GTBox, evaluate_detections, match_detections

NAMES = ["cat", "dog"]
GT = {"a": [GTBox("cat", 0, 0, 9, 9), GTBox("cat", 20, 20, 29, 29, difficult=True), GTBox("dog", 40, 40, 49, 49)],
      "b": [GTBox("cat", 0, 0, 9, 9)]}
DETS = {"b": [DetBox("cat", 0.6, 0, 0, 9, 9),       # TP: first of two equal scores in file order
              DetBox("cat", 0.6, 1, 0, 10, 9)],     # duplicate on the same gt: FP
        "a": [DetBox("cat", 0.7, 0, 0, 9, 9),       # duplicate: the 0.9 below ranks first and takes the gt
              DetBox("cat", 0.9, 0, 0, 9, 9),       # TP
              DetBox("cat", 0.8, 20, 20, 29, 29),   # on the difficult cat: ignored
              DetBox("cat", 0.5, 40, 40, 49, 49),   # only a dog there; other classes never match: FP
              DetBox("dog", 0.4, 42, 40, 51, 49)],  # IoU 80 / 120 = 0.667 with the dog (+1 pixel boxes): TP
        "c": [DetBox("dog", 0.3, 0, 0, 5, 5)]}      # image without ground truth: FP


def test_decisions_by_hand():
    matches = match_detections(gt=GT, dets=DETS, class_names=NAMES)
    assert matches.image_ids == ["a", "b", "c"]  # images of gt first, then those only in dets
    # Detections in file order: dets dict order ("b" first), then list order.
    np.testing.assert_array_equal(matches.det_image, [1, 1, 0, 0, 0, 0, 0, 2])
    np.testing.assert_array_equal(matches.det_class, [0, 0, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(matches.det_score, [0.6, 0.6, 0.7, 0.9, 0.8, 0.5, 0.4, 0.3])
    np.testing.assert_array_equal(matches.det_tp, [True, False, False, True, False, False, True, False])
    np.testing.assert_array_equal(matches.det_ignored, [False, False, False, False, True, False, False, False])
    np.testing.assert_array_equal(matches.gt_image, [0, 0, 0, 1])
    np.testing.assert_array_equal(matches.gt_class, [0, 0, 1, 0])
    np.testing.assert_array_equal(matches.gt_difficult, [False, True, False, False])


def test_iou_threshold_and_the_ap_built_on_the_decisions():
    strict = match_detections(gt=GT, dets=DETS, class_names=NAMES, iou_threshold=0.7)
    np.testing.assert_array_equal(strict.det_tp, [True, False, False, True, False, False, False, False])
    # cat, ranked without the ignored one: 0.9 TP, 0.7 FP, 0.6 TP, 0.6 FP, 0.5 FP over 2 gts -> recall 0.5 at
    # precision 1, recall 1 at precision 2/3: AP = 0.5 + 0.5 * 2/3. dog: 0.4 TP, 0.3 FP over 1 gt -> AP 1.
    per_class = evaluate_detections(gt=GT, dets=DETS, class_names=NAMES)["per_class"]
    assert per_class["cat"]["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)
    assert per_class["dog"]["ap"] == pytest.approx(1.0, abs=1e-12)
    assert per_class["cat"]["n_det"] == 6 and per_class["cat"]["n_gt"] == 2


def test_unknown_class_is_an_error():
    with pytest.raises(ValueError, match="class 'bird'"):
        match_detections(gt=GT, dets={"a": [DetBox("bird", 0.5, 0, 0, 1, 1)]}, class_names=NAMES)
