"""Calibration of detection confidence: is a detection scored 0.7 right 70% of the time?

1. ``match_detections`` marks every detection as a true positive or not at IoU >= 0.5, with the VOC rule:
   per image and class, detections in decreasing score each take their best-IoU ground truth of the same
   class; a ground truth is matched once (a later detection on it is a false positive, with no fall-back
   to its second-best box), and a detection whose best box is "difficult" is left out altogether.
2. ``reliability_bins`` groups the counted detections into equal-width confidence bins over [0, 1]
   (bin b holds scores s with floor(s * B) = b; a score of exactly 1 goes to the last bin). Fixed bins
   over [0, 1], not over each model's score range, so arms whose scores spread differently (focal loss
   lowers confidences) are binned alike and their diagrams can be compared bin by bin. Per bin: count,
   precision = matched / count, mean confidence; and the detection expected calibration error
   D-ECE = sum_b (n_b / N) |precision_b - confidence_b| over non-empty bins.
3. ``plot_reliability_diagrams`` draws one panel per arm, wrapped into rows.

Inputs are plain per-image arrays (pixel ``xyxy`` boxes), so any evaluator's detections plug in. Low-score
detections (an evaluation keeps scores down to 0.001) fill the lowest bin and dominate N; pass
``min_score`` to measure calibration at an operating threshold instead.
"""
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torchvision.ops import box_iou


@dataclass(frozen=True)
class ReliabilityBins:
    """Per confidence bin b: edges[b] <= score < edges[b + 1]; precision and confidence are NaN in empty bins."""
    edges: np.ndarray  # (B + 1,)
    count: np.ndarray  # (B,) detections per bin
    matched: np.ndarray  # (B,) true positives per bin
    precision: np.ndarray  # (B,) matched / count
    confidence: np.ndarray  # (B,) mean score
    dece: float  # sum_b (count_b / N) |precision_b - confidence_b|; NaN without detections

    @property
    def total(self) -> int:
        return int(self.count.sum())


def _match_image(*, boxes_xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray, gt_boxes_xyxy: np.ndarray,
                 gt_classes: np.ndarray, gt_difficult: np.ndarray, iou_threshold: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(matched, ignored) flags of one image's detections, in their input order."""
    matched = np.zeros(len(scores), dtype=bool)
    ignored = np.zeros(len(scores), dtype=bool)
    if len(scores) == 0 or len(gt_classes) == 0:
        return matched, ignored
    order = np.argsort(-scores, kind="stable")  # equal scores keep their input order
    iou = box_iou(torch.as_tensor(boxes_xyxy[order], dtype=torch.float64),
                  torch.as_tensor(gt_boxes_xyxy, dtype=torch.float64)).numpy()  # (D, G)
    iou = np.where(classes[order, None] == gt_classes[None, :], iou, -1.0)  # other classes never match
    best = iou.argmax(axis=1)  # (D,)
    hit = iou[np.arange(len(order)), best] >= iou_threshold
    on_difficult = hit & gt_difficult[best]
    candidates = np.flatnonzero(hit & ~gt_difficult[best])  # ascending = decreasing score
    _, first = np.unique(best[candidates], return_index=True)  # the highest-scoring detection per ground truth
    matched[order[candidates[first]]] = True
    ignored[order[on_difficult]] = True
    return matched, ignored


def match_detections(*, det_boxes_xyxy: Sequence[np.ndarray], det_scores: Sequence[np.ndarray],
                     det_classes: Sequence[np.ndarray], gt_boxes_xyxy: Sequence[np.ndarray],
                     gt_classes: Sequence[np.ndarray], gt_difficult: Sequence[np.ndarray] | None = None,
                     iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Scores and true-positive flags of all counted detections, images concatenated in input order.

    Each argument is a sequence with one entry per image: boxes (n, 4) in pixels, scores (n,), integer
    classes (n,); ground truth likewise, with optional difficult flags (m,). Detections on difficult
    ground truth are dropped (VOC); returns (scores (K,), matched (K,) bool).
    """
    sizes = {len(det_boxes_xyxy), len(det_scores), len(det_classes), len(gt_boxes_xyxy), len(gt_classes)}
    if gt_difficult is not None:
        sizes.add(len(gt_difficult))
    if len(sizes) != 1:
        raise ValueError(f"match_detections: per-image sequences differ in length ({sorted(sizes)})")
    kept_scores, kept_matched = [], []
    for image in range(len(det_scores)):
        scores = np.asarray(det_scores[image], dtype=np.float64).reshape(-1)
        gt_cls = np.asarray(gt_classes[image], dtype=np.int64).reshape(-1)
        difficult = (np.zeros(len(gt_cls), dtype=bool) if gt_difficult is None
                     else np.asarray(gt_difficult[image], dtype=bool).reshape(-1))
        matched, ignored = _match_image(
            boxes_xyxy=np.asarray(det_boxes_xyxy[image], dtype=np.float64).reshape(-1, 4), scores=scores,
            classes=np.asarray(det_classes[image], dtype=np.int64).reshape(-1),
            gt_boxes_xyxy=np.asarray(gt_boxes_xyxy[image], dtype=np.float64).reshape(-1, 4), gt_classes=gt_cls,
            gt_difficult=difficult, iou_threshold=iou_threshold)
        kept_scores.append(scores[~ignored])
        kept_matched.append(matched[~ignored])
    if not kept_scores:
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=bool)
    return np.concatenate(kept_scores), np.concatenate(kept_matched)


def reliability_bins(*, scores: np.ndarray, matched: np.ndarray, num_bins: int = 10,
                     min_score: float = 0.0) -> ReliabilityBins:
    """Equal-width bins over [0, 1] of the detections with score >= ``min_score``, and their D-ECE."""
    if num_bins < 1:
        raise ValueError(f"num_bins must be at least 1, got {num_bins}")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    matched = np.asarray(matched, dtype=bool).reshape(-1)
    if scores.shape != matched.shape:
        raise ValueError(f"scores {scores.shape} and matched {matched.shape} differ in shape")
    if len(scores) and (scores.min() < 0.0 or scores.max() > 1.0):
        raise ValueError("scores must lie in [0, 1]")
    keep = scores >= min_score
    scores, matched = scores[keep], matched[keep]
    index = np.minimum(np.floor(scores * num_bins).astype(np.int64), num_bins - 1)
    count = np.bincount(index, minlength=num_bins)
    hits = np.bincount(index, weights=matched.astype(np.float64), minlength=num_bins)
    score_sum = np.bincount(index, weights=scores, minlength=num_bins)
    filled = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(filled, hits / count, np.nan)
        confidence = np.where(filled, score_sum / count, np.nan)
    total = int(count.sum())
    dece = (float(np.sum(count[filled] / total * np.abs(precision[filled] - confidence[filled]))) if total
            else math.nan)
    return ReliabilityBins(edges=np.linspace(0.0, 1.0, num_bins + 1), count=count, matched=hits.astype(np.int64),
                           precision=precision, confidence=confidence, dece=dece)


def plot_reliability_diagrams(*, arms: dict[str, ReliabilityBins], out_path: str | Path,
                              columns: int = 4) -> Path:
    """One reliability diagram per arm, side by side, ``columns`` panels a row; returns the PNG path.

    Bars: precision per bin; dots: (mean confidence, precision); grey bars: the bin's share of the
    arm's detections; the diagonal is perfect calibration. Bars below it mean over-confidence.
    """
    if not arms:
        raise ValueError("plot_reliability_diagrams: no arms given")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    columns = max(1, min(columns, len(arms)))
    rows = math.ceil(len(arms) / columns)
    fig = Figure(figsize=(3.4 * columns, 3.4 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, (name, bins) in zip(axes.flat, arms.items()):
        left, width = bins.edges[:-1], np.diff(bins.edges)
        share = bins.count / max(bins.total, 1)
        ax.bar(left, share, width=width, align="edge", color="0.8", label="share of detections")
        ax.bar(left, np.nan_to_num(bins.precision), width=width, align="edge", color="tab:blue", alpha=0.6,
               edgecolor="tab:blue", label="precision")
        ax.plot(bins.confidence, bins.precision, "o", color="tab:red", markersize=3, label="mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="0.3", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}\nD-ECE {bins.dece:.3f}  (n={bins.total})", fontsize=9)
        ax.set_xlabel("confidence", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in axes.flat[len(arms):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("precision (IoU 0.5)", fontsize=8)
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.savefig(out_path, dpi=110)
    return out_path
