"""Calibration of detection confidence: is a detection scored 0.7 right 70% of the time?

1. Detections are true or false positives exactly as the mAP counted them: ``utils.compare.paired.image_records``
   takes the decisions of the evaluator (``utils.eval.utils_map.match_detections``) under the VOC rule
   (IoU >= 0.5 with the +1 pixel convention; per image and class, detections in decreasing score each take
   their best-IoU ground truth of the same class, a ground truth is matched once, and a detection whose best
   box is "difficult" is left out).
2. ``reliability_bins`` groups the detections into equal-width confidence bins over [0, 1]
   (bin b holds scores s with floor(s * B) = b; a score of exactly 1 goes to the last bin). Fixed bins
   over [0, 1], not over each model's score range, so arms whose scores spread differently (focal loss
   lowers confidences) are binned alike and their diagrams can be compared bin by bin. Per bin: count,
   precision = matched / count, mean confidence; and the detection expected calibration error
   D-ECE = sum_b (n_b / N) |precision_b - confidence_b| over non-empty bins.
3. ``plot_reliability_diagrams`` draws one panel per arm, wrapped into rows.

Low-score detections (an evaluation keeps scores down to 0.001) fill the lowest bin and dominate N, which
makes every model look calibrated; ``min_score`` measures calibration where detections are used instead.
"""
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


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
                              columns: int = 4, title: str = "") -> Path:
    """One reliability diagram per arm, side by side, ``columns`` panels a row, under ``title``; returns the PNG path.

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
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(out_path, dpi=110)
    return out_path
