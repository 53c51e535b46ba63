"""NMS and DIoU-NMS against loop references and hand-computed values; the settings' validation."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torchvision

import predict
from utils.infer.postprocess import PostprocessSettings, diou_nms, non_max_suppression


def py_iou(a, b) -> float:
    """IoU of two xyxy boxes, plain Python."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def py_diou(a, b) -> float:
    """DIoU = IoU - (centre distance)^2 / (enclosing box diagonal)^2, plain Python."""
    centre_dist2 = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + ((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) ** 2
    diag2 = (max(a[2], b[2]) - min(a[0], b[0])) ** 2 + (max(a[3], b[3]) - min(a[1], b[1])) ** 2
    return py_iou(a, b) - centre_dist2 / diag2


def nms(decoded: torch.Tensor, **settings) -> list[dict]:
    """non_max_suppression with PostprocessSettings built from ``settings`` (confidence, nms_iou, max_det, ...)."""
    return non_max_suppression(decoded, settings=PostprocessSettings(**settings))


def reference_nms(decoded: torch.Tensor, *, conf: float, thr: float, max_det: int, overlap=py_iou) -> list[list]:
    """Per image: [(score, class, box)] kept by a plain greedy loop per class, best first, at most max_det."""
    out = []
    for image in decoded.tolist():
        cands = []
        for cx, cy, w, h, obj, *probs in image:
            cls = max(range(len(probs)), key=lambda c: probs[c])
            score = obj * probs[cls]
            if score >= conf:
                cands.append((score, cls, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
        kept = []
        for cls in sorted({c for _, c, _ in cands}):
            remaining = sorted((c for c in cands if c[1] == cls), key=lambda c: -c[0])
            while remaining:
                best = remaining.pop(0)
                kept.append(best)
                remaining = [c for c in remaining if overlap(best[2], c[2]) <= thr]
        out.append(sorted(kept, key=lambda c: -c[0])[:max_det])
    return out


def clustered_decoded(*, batch: int, num: int, num_classes: int, seed: int, spread: float = 12.0) -> torch.Tensor:
    """Random predictions (B, N, 5 + C) around a few centres, so that many boxes overlap."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, 6, 2, generator=gen) * 300 + 50  # (B, 6, 2)
    pick = torch.randint(0, 6, (batch, num), generator=gen)
    jitter = torch.randn(batch, num, 2, generator=gen) * spread
    cxcy = torch.gather(centres, 1, pick[..., None].expand(-1, -1, 2)) + jitter  # (B, N, 2)
    wh = torch.rand(batch, num, 2, generator=gen) * 60 + 20
    obj = torch.rand(batch, num, 1, generator=gen)
    probs = torch.rand(batch, num, num_classes, generator=gen)
    return torch.cat([cxcy, wh, obj, probs], dim=-1)


def assert_same(result: dict, expected: list) -> None:
    assert len(result["scores"]) == len(expected)
    if not expected:
        return
    np.testing.assert_allclose(result["scores"].numpy(), [e[0] for e in expected], rtol=1e-6)
    assert result["class_ids"].tolist() == [e[1] for e in expected]
    np.testing.assert_allclose(result["boxes_xyxy"].numpy(), [e[2] for e in expected], atol=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_python_greedy_loop(seed):
    decoded = clustered_decoded(batch=3, num=250, num_classes=4, seed=seed)
    results = nms(decoded, confidence=0.15, nms_iou=0.45, max_det=300)
    expected = reference_nms(decoded, conf=0.15, thr=0.45, max_det=300)
    assert len(results) == 3
    for result, exp in zip(results, expected):
        assert len(exp) > 5  # the case is not trivial
        assert_same(result, exp)


@pytest.mark.parametrize("nms_type, overlap", [("nms", py_iou), ("diou", py_diou)])
@pytest.mark.parametrize("max_det", [1, 3, 7, 40])
def test_small_max_det_matches_truncated_reference(nms_type, overlap, max_det):
    # Few detections allowed and many candidates: NMS runs on growing per-image prefixes of the candidates.
    decoded = clustered_decoded(batch=2, num=300, num_classes=2, seed=11, spread=30.0)
    results = nms(decoded, confidence=0.01, nms_iou=0.3, max_det=max_det, nms_type=nms_type)
    expected = reference_nms(decoded, conf=0.01, thr=0.3, max_det=max_det, overlap=overlap)
    for result, exp in zip(results, expected):
        assert len(exp) == max_det
        assert_same(result, exp)


@pytest.mark.parametrize("nms_type", ["nms", "diou"])
def test_best_candidates_all_suppressed_still_fills_max_det(nms_type):
    # 50 near-copies of one box score best, then 10 separate boxes: the first candidate prefix (4 * max_det) keeps
    # one box only, so NMS has to look further down the list to find max_det = 5 detections.
    copies = [[100.0 + 0.01 * i, 100.0, 40.0, 40.0, 0.99 - 0.001 * i, 1.0] for i in range(50)]
    separate = [[20.0 + 60.0 * i, 300.0, 40.0, 40.0, 0.5 - 0.01 * i, 1.0] for i in range(10)]
    decoded = torch.tensor([copies + separate])
    result = nms(decoded, confidence=0.1, nms_iou=0.5, max_det=5, nms_type=nms_type)[0]
    assert result["scores"].tolist() == pytest.approx([0.99, 0.5, 0.49, 0.48, 0.47])


def test_nms_matches_torchvision_nms_per_class():
    decoded = clustered_decoded(batch=2, num=400, num_classes=3, seed=5)
    results = nms(decoded, confidence=0.05, nms_iou=0.5, max_det=1000)
    for image, result in zip(decoded, results):
        class_prob, class_ids = image[:, 5:].max(dim=1)
        scores = image[:, 4] * class_prob
        boxes = torch.cat([image[:, :2] - image[:, 2:4] / 2, image[:, :2] + image[:, 2:4] / 2], dim=1)
        expected = []
        for cls in range(3):
            sel = torch.nonzero((class_ids == cls) & (scores >= 0.05)).squeeze(1)
            keep = torchvision.ops.nms(boxes[sel], scores[sel], 0.5)
            expected += [(scores[i].item(), cls, boxes[i].tolist()) for i in sel[keep]]
        assert_same(result, sorted(expected, key=lambda e: -e[0]))


def test_nms_hand_made_cases():
    def row(x1, y1, x2, y2, obj, probs):
        return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, obj, *probs]

    # A and B (same class) overlap with IoU 0.6; C is B's twin of another class; D is exactly at the threshold.
    image0 = [row(0, 0, 10, 10, 0.9, [1.0, 0.0]), row(0, 2.5, 10, 12.5, 0.8, [1.0, 0.0]),
              row(0, 2.5, 10, 12.5, 0.7, [0.0, 1.0]), row(50, 50, 60, 60, 0.5, [0.4, 0.1])]
    image1 = [row(0, 0, 10, 10, 0.9, [1.0, 0.0])] + [row(0, 0, 10, 10, 0.1, [0.1, 0.0])] * 3  # below threshold
    decoded = torch.tensor([image0, image1])
    strict, loose = (nms(decoded, confidence=0.2, nms_iou=iou, max_det=10) for iou in (0.5, 0.7))
    assert strict[0]["scores"].tolist() == pytest.approx([0.9, 0.7, 0.2])  # B suppressed, C (other class) kept
    assert strict[0]["class_ids"].tolist() == [0, 1, 0]
    assert loose[0]["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.2])
    assert strict[1]["scores"].tolist() == pytest.approx([0.9])  # same box in another image is not suppressed by it
    capped = nms(decoded, confidence=0.2, nms_iou=0.7, max_det=2)
    assert capped[0]["scores"].tolist() == pytest.approx([0.9, 0.8])
    empty = nms(decoded, confidence=0.95, nms_iou=0.5, max_det=10)
    assert [len(r["scores"]) for r in empty] == [0, 0] and empty[0]["boxes_xyxy"].shape == (0, 4)


def test_multi_label_reports_every_class_above_the_threshold():
    # One box: obj 0.8, class probabilities 0.5 / 0.4 / 0.1 -> scores 0.4 / 0.32 / 0.08.
    decoded = torch.tensor([[[5.0, 5.0, 10.0, 10.0, 0.8, 0.5, 0.4, 0.1]]])
    best_only = nms(decoded, confidence=0.2, nms_iou=0.5, max_det=10)[0]
    assert best_only["class_ids"].tolist() == [0] and best_only["scores"].tolist() == pytest.approx([0.4])
    every = nms(decoded, confidence=0.2, nms_iou=0.5, max_det=10, multi_label=True)[0]
    assert every["class_ids"].tolist() == [0, 1] and every["scores"].tolist() == pytest.approx([0.4, 0.32])
    assert torch.equal(every["boxes_xyxy"][0], every["boxes_xyxy"][1])  # same box, another class: not suppressed


@pytest.mark.parametrize("seed", [0, 3])
def test_diou_nms_matches_python_greedy_loop(seed):
    decoded = clustered_decoded(batch=2, num=300, num_classes=3, seed=seed)
    results = nms(decoded, confidence=0.1, nms_iou=0.4, max_det=300, nms_type="diou")
    expected = reference_nms(decoded, conf=0.1, thr=0.4, max_det=300, overlap=py_diou)
    for result, exp in zip(results, expected):
        assert len(exp) > 5
        assert_same(result, exp)


def test_diou_nms_chains_across_blocks():
    # Boxes on a line, each overlapping the next: greedy keeps every second box, a chain the block-wise
    # fixed point must resolve exactly; small blocks make the chain cross block borders.
    # Neighbours: IoU 0.5, DIoU 0.44 > 0.3; second neighbours: DIoU 0.05.
    boxes = torch.tensor([[10.0 * i, 0.0, 10.0 * i + 30.0, 10.0] for i in range(40)])
    scores = torch.linspace(1.0, 0.5, 40)
    groups = torch.zeros(40, dtype=torch.long)
    expected = []
    alive = list(range(40))
    while alive:
        best = alive.pop(0)
        expected.append(best)
        alive = [j for j in alive if py_diou(boxes[best].tolist(), boxes[j].tolist()) <= 0.3]
    for block_size in (3, 7, 256):
        kept = diou_nms(boxes, scores, groups, iou_threshold=0.3, max_per_group=100, block_size=block_size)
        assert kept.tolist() == expected
    assert expected == list(range(0, 40, 2))


def test_diou_keeps_overlapping_box_with_distant_centre():
    # Two 10 x 10 boxes shifted sideways to IoU 0.52: DIoU = 0.52 - 3.16^2 / (13.16^2 + 10^2) = 0.48, so with
    # threshold 0.5 plain NMS suppresses the second box and DIoU-NMS keeps it.
    a, b = [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]
    b[0] += 10 * (1 - 2 * 0.52 / 1.52)  # horizontal shift giving IoU 0.52
    b[2] = b[0] + 10
    assert py_iou(a, b) == pytest.approx(0.52) and py_diou(a, b) < 0.5
    decoded = torch.tensor([[[(x[0] + x[2]) / 2, 5.0, 10.0, 10.0, s, 1.0] for x, s in ((a, 0.9), (b, 0.8))]])
    plain = nms(decoded, confidence=0.1, nms_iou=0.5, max_det=10)
    diou = nms(decoded, confidence=0.1, nms_iou=0.5, max_det=10, nms_type="diou")
    assert len(plain[0]["scores"]) == 1 and len(diou[0]["scores"]) == 2


@pytest.mark.parametrize("settings, message", [
    ({"nms_type": "soft"}, r"nms_type must be one of \('nms', 'diou'\), got 'soft'"),
    ({"confidence": 1.5}, "need 0 <= confidence <= 1"),
    ({"confidence": -0.1}, "need 0 <= confidence <= 1"),
    ({"max_det": 0}, "max_det >= 1"),
    ({"nms_type": "diou", "nms_iou": -0.1}, "nms_iou must be >= 0 for DIoU-NMS"),
])
def test_bad_settings_are_refused_on_construction(settings, message):
    with pytest.raises(ValueError, match=message):
        PostprocessSettings(**settings)


def test_settings_are_frozen_with_predict_py_defaults():
    settings = PostprocessSettings()
    assert (settings.confidence, settings.nms_iou, settings.nms_type, settings.max_det) == \
        (predict.confidence, predict.nms_iou, predict.nms_type, predict.max_det)
    assert settings.multi_label is False  # predict.py has no multi_label setting: one class per box
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.confidence = 0.1
