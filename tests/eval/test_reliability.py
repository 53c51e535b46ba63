"""Calibration: the evaluator's matching, reliability bins and D-ECE against numbers worked out by hand."""
import math

import numpy as np
import pytest

from utils.compare.paired import image_records
from utils.eval.reliability import plot_reliability_diagrams, reliability_bins
from utils.eval.utils_map import DetBox, GTBox

# Image A: ground truth g0 class 0, g1 class 0 (difficult), g2 class 1. Image B: h0, h1 class 0.
# Boxes in VOC pixels (inclusive ends, so [0, 0, 9, 9] is 10 x 10 = 100 pixels).
GT = {"A": [GTBox("c0", 0, 0, 9, 9), GTBox("c0", 20, 0, 29, 9, difficult=True), GTBox("c1", 0, 20, 9, 29)],
      "B": [GTBox("c0", 0, 0, 9, 9), GTBox("c0", 100, 100, 109, 109)]}
# Detections in a shuffled order, so only the score decides who matches first.
DETS = {"A": [DetBox("c0", 0.85, 0, 0, 9, 8),  # best g0 (IoU 0.9), but the 0.95 one took g0: duplicate, FP
              DetBox("c1", 0.65, 0, 0, 9, 9),  # on g0's box but class 1; g2 (class 1) is elsewhere: FP
              DetBox("c0", 0.95, 0, 0, 9, 9),  # g0 at IoU 1: TP
              DetBox("c0", 0.35, 0, 0, 4, 9),  # g0 at IoU 0.5, already taken: FP
              DetBox("c0", 0.75, 20, 0, 29, 9),  # on the difficult g1: left out
              DetBox("c1", 0.15, 0, 20, 9, 29)],  # g2 at IoU 1: TP
        "B": [DetBox("c0", 0.55, 0, 0, 4, 9),  # h0 at IoU exactly 0.5 (50 / 100): TP, the threshold is inclusive
              DetBox("c0", 0.45, 100, 100, 109, 103),  # h1 at IoU 0.4: FP
              DetBox("c0", 0.05, 100, 100, 109, 109)]}  # h1 at IoU 1, still free: TP


def matched_fixture():
    records = image_records(gt=GT, dets=DETS, class_names=["c0", "c1"])
    return records.det_score, records.det_tp


def test_detections_are_matched_as_the_map_counts_them():
    """The flags the diagrams bin are the evaluator's: VOC rule, in score order per image, difficult left out."""
    scores, matched = matched_fixture()
    assert scores.tolist() == [0.95, 0.85, 0.65, 0.35, 0.15, 0.55, 0.45, 0.05]  # the 0.75 one is left out
    assert matched.tolist() == [True, False, False, False, True, True, False, True]


def test_dece_of_the_matched_fixture():
    """One detection in each of 8 bins: D-ECE = (0.05 + 0.85 + 0.65 + 0.35 + 0.85 + 0.45 + 0.45 + 0.95) / 8."""
    scores, matched = matched_fixture()
    bins = reliability_bins(scores=scores, matched=matched, num_bins=10)
    assert bins.count.tolist() == [1, 1, 0, 1, 1, 1, 1, 0, 1, 1]
    assert bins.dece == pytest.approx(4.6 / 8, abs=1e-12)
    above = reliability_bins(scores=scores, matched=matched, num_bins=10, min_score=0.4)  # 0.95 .. 0.45
    assert above.total == 5 and above.dece == pytest.approx((0.05 + 0.85 + 0.65 + 0.45 + 0.45) / 5, abs=1e-12)


def test_bins_and_dece_by_hand():
    scores = [0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 1.0, 0.9]
    matched = [True, False, False, True, True, False, True, True]
    # 5 bins [0, .2) [.2, .4) [.4, .6) [.6, .8) [.8, 1]: 0.2 opens bin 1, 0.6 bin 3, 0.8 and 1.0 fall in bin 4.
    bins = reliability_bins(scores=np.array(scores), matched=np.array(matched), num_bins=5)
    assert bins.edges.tolist() == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert bins.count.tolist() == [1, 2, 0, 2, 3] and bins.matched.tolist() == [1, 0, 0, 2, 2]
    expected_precision = [1.0, 0.0, math.nan, 1.0, 2 / 3]
    expected_confidence = [0.1, 0.25, math.nan, 0.65, 0.9]
    assert bins.precision.tolist() == pytest.approx(expected_precision, nan_ok=True)
    assert bins.confidence.tolist() == pytest.approx(expected_confidence, nan_ok=True)
    # D-ECE = 1/8 * 0.9 + 2/8 * 0.25 + 2/8 * 0.35 + 3/8 * (0.9 - 2/3) = 0.1125 + 0.0625 + 0.0875 + 0.0875
    assert bins.dece == pytest.approx(0.35, abs=1e-12)
    # Four bins [0, .25) [.25, .5) [.5, .75) [.75, 1]: 2/8 * 0.35 + 1/8 * 0.3 + 2/8 * 0.35 + 3/8 * (0.9 - 2/3) = 0.3
    assert reliability_bins(scores=scores, matched=matched, num_bins=4).dece == pytest.approx(0.3, abs=1e-12)
    # From 0.5 up, five detections: 2/5 * 0.35 + 3/5 * (0.9 - 2/3) = 0.14 + 0.14
    above = reliability_bins(scores=scores, matched=matched, num_bins=4, min_score=0.5)
    assert above.total == 5 and above.dece == pytest.approx(0.28, abs=1e-12)


def test_empty_and_bad_inputs():
    empty = reliability_bins(scores=np.zeros(0), matched=np.zeros(0, dtype=bool))
    assert empty.total == 0 and math.isnan(empty.dece)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reliability_bins(scores=[1.5], matched=[True])
    with pytest.raises(ValueError, match="shape"):
        reliability_bins(scores=[0.5, 0.6], matched=[True])


def test_diagrams_wrap_into_rows(tmp_path):
    from PIL import Image

    bins = reliability_bins(scores=[0.1, 0.5, 0.9], matched=[False, True, True], num_bins=10)
    empty = reliability_bins(scores=np.zeros(0), matched=np.zeros(0, dtype=bool))
    one_row = plot_reliability_diagrams(arms={f"arm {i}": bins for i in range(4)}, out_path=tmp_path / "a.png")
    four_rows = plot_reliability_diagrams(arms={f"arm {i}": bins if i else empty for i in range(16)},
                                          out_path=tmp_path / "b.png")
    two_rows = plot_reliability_diagrams(arms={f"arm {i}": bins for i in range(5)}, out_path=tmp_path / "c.png")
    width, height = Image.open(one_row).size
    assert Image.open(four_rows).size[0] == width and Image.open(four_rows).size[1] > 3 * height
    assert Image.open(two_rows).size[0] == width and Image.open(two_rows).size[1] > 1.5 * height
