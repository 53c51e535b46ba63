"""Share of easy negatives in the confidence loss, against the Focal Loss paper's arithmetic done by hand."""
import math

import pytest
import torch

from utils.compare.easy_negatives import easy_negative_share


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def test_the_papers_100000_easy_vs_100_hard():
    """100,000 easy negatives with BCE 0.1 each (p = 1 - e^-0.1 = 0.0952) and 100 hard positives at p = 0.1
    (BCE ln 10 = 2.3026): plain BCE 10,000 vs 230.26, the easy ones carry 43x the hard ones' loss."""
    p_easy = 1.0 - math.exp(-0.1)
    logits = torch.tensor([logit(p_easy)] * 100_000 + [logit(0.1)] * 100, dtype=torch.float64)
    positive = torch.tensor([False] * 100_000 + [True] * 100)
    got = easy_negative_share(logits=logits, positive=positive, alpha=0.25, gamma=2.0)
    assert got["cells"] == 100_100 and got["easy_negatives"] == 100_000
    assert got["count_share"] == pytest.approx(100_000 / 100_100)
    assert got["bce_share"] == pytest.approx(10_000 / (10_000 + 100 * math.log(10)), rel=1e-9)  # 0.97749
    # Focal, alpha 0.25, gamma 2: an easy negative weighs (1 - 0.25) * p^2 = 0.75 * 0.0952^2, a hard positive
    # 0.25 * 0.9^2: 100,000 * 0.75 * 0.0952^2 * 0.1 = 67.92 vs 100 * 0.2025 * 2.3026 = 46.63.
    easy_focal = 100_000 * 0.75 * p_easy ** 2 * 0.1
    hard_focal = 100 * 0.25 * 0.81 * math.log(10)
    assert easy_focal == pytest.approx(67.919, abs=1e-3) and hard_focal == pytest.approx(46.627, abs=1e-3)
    assert got["focal_share"] == pytest.approx(easy_focal / (easy_focal + hard_focal), rel=1e-9)  # 0.59294


def test_hard_negatives_and_positives_are_not_easy():
    """Two negatives at p = 0.05 (easy), one at p = 0.5 and one positive at p = 0.95 (confident, but positive)."""
    logits = torch.tensor([logit(0.05), logit(0.05), logit(0.5), logit(0.95)], dtype=torch.float32)
    positive = torch.tensor([False, False, False, True])
    got = easy_negative_share(logits=logits, positive=positive, alpha=0.5, gamma=1.0)
    assert got["easy_negatives"] == 2 and got["count_share"] == 0.5
    ce_easy, ce_half = -math.log(0.95), math.log(2.0)  # BCE of a negative at 0.05 and at 0.5; the positive: ce_easy
    assert got["bce_share"] == pytest.approx(2 * ce_easy / (3 * ce_easy + ce_half), rel=1e-6)  # 0.12111
    # gamma 1, alpha 0.5: weights 0.5 * 0.05 (easy negatives and the positive alike) and 0.5 * 0.5
    focal_easy, focal_half = 0.5 * 0.05 * ce_easy, 0.5 * 0.5 * ce_half
    assert got["focal_share"] == pytest.approx(2 * focal_easy / (3 * focal_easy + focal_half), rel=1e-5)  # 0.01448


def test_no_cells():
    got = easy_negative_share(logits=torch.zeros(0), positive=torch.zeros(0, dtype=torch.bool), alpha=0.25, gamma=2)
    assert got["cells"] == 0 and math.isnan(got["count_share"]) and math.isnan(got["bce_share"])
