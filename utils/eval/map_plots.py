"""Plots of an evaluation: per-class AP bars, PR curves, ground-truth statistics (PNG files).

Figures are built with matplotlib.figure.Figure, not pyplot, so nothing depends on a GUI backend or
on global pyplot state; saving PNGs goes through the Agg canvas.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from utils.eval.utils_map import GTBox


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def plot_ap_bars(*, results: dict, out_dir: str | Path) -> Path:
    """Horizontal bar chart of all-point AP per class with ground truth; returns the PNG path."""
    out_path = Path(out_dir) / "ap_per_class.png"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scored = sorted(((stats["ap"], name) for name, stats in results["per_class"].items()
                     if stats.get("ap") is not None))
    fig = Figure(figsize=(8, max(2.5, 0.35 * len(scored) + 1.5)), layout="constrained")
    ax = fig.add_subplot()
    names = [name for _, name in scored]
    aps = [ap for ap, _ in scored]
    bars = ax.barh(names, aps, color="tab:blue")
    ax.bar_label(bars, labels=[f"{ap:.3f}" for ap in aps], padding=3)
    ax.set_xlim(0.0, 1.1)
    ax.set_xlabel("AP")
    ax.set_title(f"mAP@{results.get('iou_threshold', 0.5):g} = {results['map']:.4f}")
    fig.savefig(out_path, dpi=100)
    return out_path


def plot_pr_curves(*, results: dict, out_dir: str | Path) -> list[Path]:
    """One `pr_<class>.png` per class that has a PR curve and ground truth; returns the PNG paths."""
    folder = Path(out_dir) / "pr_curves"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, stats in results["per_class"].items():
        if stats.get("ap") is None or "recall_curve" not in stats:
            continue
        recall = np.asarray(stats["recall_curve"], dtype=np.float64)
        precision = np.asarray(stats["precision_curve"], dtype=np.float64)
        if recall.size == 0:  # ground truth but no detections: a flat curve at zero
            recall, precision = np.zeros(1), np.zeros(1)
        fig = Figure(figsize=(5, 4.5), layout="constrained")
        ax = fig.add_subplot()
        ax.plot(np.concatenate(([0.0], recall)), np.concatenate((precision[:1], precision)),
                drawstyle="steps-post", color="tab:blue")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.05)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"{name}: AP = {stats['ap']:.4f}")
        ax.grid(alpha=0.3)
        path = folder / f"pr_{_safe_name(name)}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def plot_ground_truth_stats(*, gt: dict[str, list[GTBox]], class_names: list[str], out_dir: str | Path
                            ) -> Path:
    """Objects per class (bars, difficult stacked) and box sizes sqrt(w*h) in pixels (histogram)."""
    out_path = Path(out_dir) / "ground_truth_stats.png"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    boxes = [box for image_boxes in gt.values() for box in image_boxes]
    normal = [sum(1 for b in boxes if b.class_name == name and not b.difficult) for name in class_names]
    difficult = [sum(1 for b in boxes if b.class_name == name and b.difficult) for name in class_names]
    gt_xyxy = np.asarray([b[1:5] for b in boxes], dtype=np.float64).reshape(-1, 4)
    box_size = np.sqrt(np.clip(gt_xyxy[:, 2] - gt_xyxy[:, 0], 0, None)
                       * np.clip(gt_xyxy[:, 3] - gt_xyxy[:, 1], 0, None))  # (n,) pixels

    fig = Figure(figsize=(11, max(3.0, 0.35 * len(class_names) + 1.5)), layout="constrained")
    ax_count, ax_size = fig.subplots(1, 2)
    bars = ax_count.barh(class_names, normal, color="tab:green", label="normal")
    ax_count.barh(class_names, difficult, left=normal, color="tab:orange", label="difficult")
    ax_count.bar_label(bars, padding=3)
    ax_count.set_xlabel("objects")
    ax_count.set_title(f"{len(boxes)} objects in {len(gt)} images")
    ax_count.legend(loc="best")
    ax_size.hist(box_size, bins=30, color="tab:purple")
    ax_size.set_xlabel("box size sqrt(w*h) [pixels]")
    ax_size.set_ylabel("objects")
    ax_size.set_title("object sizes")
    fig.savefig(out_path, dpi=100)
    return out_path
