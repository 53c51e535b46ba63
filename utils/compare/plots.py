"""Plots of compare_focal.py: overlaid loss curves, per-class AP bars, Figure-4 CDFs and the alpha/gamma heat map."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from nets.yolo_training import LOSS_TERMS  # noqa: E402
from utils.train.history import NOT_HELD_OUT, plot_points  # noqa: E402


def _save(fig, out_path: Path) -> None:
    fig.tight_layout()
    fig.savefig(out_path, dpi=100, bbox_inches="tight")  # keeps legends placed beside the axes
    plt.close(fig)


def plot_loss_curves(*, histories: dict[str, list[dict]], out_path: Path) -> None:
    """Rows: train, val; columns: total and the three terms; one line per run, a lone measured epoch as a marker.
    The val titles say when a run's validation images were training images too (its rows' ``val_held_out``)."""
    fig, axes = plt.subplots(2, len(LOSS_TERMS), figsize=(4 * len(LOSS_TERMS), 7), squeeze=False)
    not_held_out = [name for name, rows in histories.items() if rows and rows[-1].get("val_held_out") is False]
    val_note = ("" if not not_held_out else f" ({NOT_HELD_OUT})" if len(not_held_out) == len(histories)
                else f"\n({', '.join(not_held_out)}: {NOT_HELD_OUT})")
    for row_index, split in enumerate(("train", "val")):
        for col, term in enumerate(LOSS_TERMS):
            ax = axes[row_index][col]
            for name, rows in histories.items():
                values = [(r["epoch"], r.get(f"{split}_{term}")) for r in rows if r.get(f"{split}_{term}") is not None]
                plot_points(ax, values, label=name, linewidth=1.2)
            ax.set_title(f"{split} {term}" + (val_note if split == "val" else ""))
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    columns = 1 + len(labels) // 12  # a grid's 16 runs and their seeds stay legible beside the panels
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), ncol=columns)
    _save(fig, out_path)


def plot_per_class_ap(*, rows: list[dict], class_names: list[str], out_path: Path, split: str = "test") -> None:
    """Grouped bars: one group per class (and mAP), one bar per arm."""
    labels = class_names + ["mAP"]
    x = np.arange(len(labels))
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(labels) * max(1, len(rows) / 2)), 4.5))
    for i, row in enumerate(rows):
        values = [row.get(f"ap_{name}") or 0.0 for name in class_names] + [row["map"]]
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, values, width, label=row["arm"])
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"AP@0.5 ({split})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), ncol=1 + len(rows) // 12)
    _save(fig, out_path)


def plot_cdfs(*, cdfs: dict[str, dict], out_path: Path) -> None:
    """The Focal Loss paper's Figure 4 for each trained model: CDF of the normalised loss, positives and negatives."""
    per_row = 2 if len(cdfs) > 4 else 1  # models per row: a 16-arm grid wraps into 8 rows of 4 panels
    rows = -(-len(cdfs) // per_row)
    fig, axes = plt.subplots(rows, 2 * per_row, figsize=(5 * 2 * per_row, 3.6 * rows), squeeze=False)
    for ax in axes.flat[2 * len(cdfs):]:
        ax.set_visible(False)
    for index, (name, cdf) in enumerate(cdfs.items()):
        for col, group in enumerate(("positive", "negative")):
            ax = axes[index // per_row][2 * (index % per_row) + col]
            for gamma, values in cdf["curves"].get(group, {}).items():
                ax.plot(cdf["fractions"], values, label=f"gamma = {gamma}")
            count = cdf["num_positive"] if group == "positive" else cdf["num_negative"]
            ax.set_title(f"{name}: {group} cells ({count})", fontsize=9)
            ax.set_xlabel(f"fraction of {group} cells (sorted by loss)")
            ax.set_ylabel("cumulative normalised loss")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    _save(fig, out_path)


def plot_grid_heatmap(*, rows: list[dict], out_path: Path) -> None:
    """mAP@0.5 of the focal arms on an alpha x gamma grid (the Focal Loss paper's Table 1 layout)."""
    focal = [r for r in rows if r["focal"]]
    alphas = sorted({r["alpha"] for r in focal})
    gammas = sorted({r["gamma"] for r in focal})
    grid = np.full((len(gammas), len(alphas)), np.nan)
    for r in focal:
        grid[gammas.index(r["gamma"]), alphas.index(r["alpha"])] = r["map"]
    fig, ax = plt.subplots(figsize=(1.6 * len(alphas) + 2, 0.8 * len(gammas) + 1.5))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="white", fontsize=9)
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(gammas)), [f"{g:g}" for g in gammas])
    ax.set_xlabel("alpha")
    ax.set_ylabel("gamma")
    baseline = [r["map"] for r in rows if not r["focal"]]
    ax.set_title("mAP@0.5" + (f" (plain BCE: {baseline[0]:.3f})" if baseline else ""))
    fig.colorbar(image, ax=ax)
    _save(fig, out_path)


def forest_interval(comparison: dict) -> tuple[float | None, float | None, float]:
    """(low, high, confidence level) the verdict of a comparison uses: over seeds (Student t) with two or more,
    else its one seed's paired bootstrap; at Holm's level in a family (utils/compare/family.py), else 95 %."""
    over = comparison["over_seeds"]
    if over["n"] >= 2:
        return over["low"], over["high"], over.get("level", 0.95)
    only = comparison["seeds"][0]
    return only["bootstrap_low"], only["bootstrap_high"], only.get("bootstrap_level", 0.95)


def plot_forest(*, comparisons: list[dict], out_path: Path, images: str = "test images") -> None:
    """Forest plot of the paired mAP@0.5 differences: one row per comparison (arm − reference, the report's order
    from the top), each seed's difference as a grey point, the mean as a red diamond on its interval (the
    verdict's: forest_interval) with the level beside it, and a vertical line at zero."""
    from utils.compare.multiplicity import percent

    rows = np.arange(len(comparisons))[::-1]  # the first comparison at the top
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.55 * len(comparisons)))
    for index, (row, comparison) in enumerate(zip(rows, comparisons)):
        first = index == 0  # one legend entry per kind of mark
        differences = [s["map"] for s in comparison["seeds"]]
        ax.scatter(differences, np.full(len(differences), row, dtype=float), s=16, color="0.5", zorder=3,
                   label="seeds" if first else "_nolegend_")
        low, high, level = forest_interval(comparison)
        if low is not None:
            ax.plot([low, high], [row, row], color="C0", linewidth=3, solid_capstyle="butt",
                    label="interval" if first else "_nolegend_")
            ax.annotate(percent(level), (high, row), xytext=(4, 4), textcoords="offset points", fontsize=7)
        ax.plot([comparison["over_seeds"]["mean"]], [row], marker="D", color="C3", linestyle="None", zorder=4,
                label="mean" if first else "_nolegend_")
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_yticks(rows, [f"{c['arm']} − {c['reference']}" for c in comparisons])
    ax.set_ylim(-0.7, len(comparisons) - 0.3)
    ax.set_xlabel("Δ mAP@0.5 (arm − reference)")
    m = comparisons[0].get("family", 1) if comparisons else 1
    n = comparisons[0]["over_seeds"]["n"] if comparisons else 0
    basis = f"Student t over {n} seeds" if n >= 2 else f"paired bootstrap over the {images}, one seed"
    ax.set_title(f"paired differences; intervals: {basis}" + (f", Holm over m = {m}" if m > 1 else ""), fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(fig, out_path)
