"""The comparison's written results: per-arm table (mean ± std over seeds), the paired differences against the
reference arm (per seed with a bootstrap interval over test images, over seeds with a Student-t interval)
and the closing one-line verdict."""
import csv
import json
from pathlib import Path

import numpy as np

from utils.compare.family import adjust_over_family, family_text, format_p, interval_cell
from utils.compare.multiplicity import percent
from utils.compare.paired import ImageRecords, bootstrap_differences, mean_or_none, t_interval, verdict
from utils.compare.selection import Scoring

COCO_SIZES = (("APs", "small"), ("APm", "medium"), ("APl", "large"))


def _difference(a: float | None, b: float | None) -> float | None:
    """a - b, None where either is undefined (pycocotools writes -1 for a size without objects)."""
    if a is None or b is None or a < 0 or b < 0:
        return None
    return a - b


def paired_comparisons(*, evaluations: dict[str, dict], runs: list, records: dict[str, ImageRecords], resamples: int,
                       seed: int) -> list[dict]:
    """One entry per (arm, sweep values) other than the reference arm (the first arm): per-seed differences
    arm - reference in mAP@0.5, per class AP and COCO AP by size, each seed's paired bootstrap interval (over
    ``records``, run name -> its test-image records), and the mean over seeds with its t interval. Runs pair up
    by seed and sweep values. With two or more entries, Holm-corrected over them (family.adjust_over_family)."""
    reference = runs[0].base_arm
    by_key = {(r.base_arm, r.tag, r.seed): r for r in runs}
    comparisons, resampled = [], {}
    for arm_name, tag in dict.fromkeys((r.base_arm, r.tag) for r in runs if r.base_arm != reference):
        seeds = []
        for run in (r for r in runs if (r.base_arm, r.tag) == (arm_name, tag)):
            ref = by_key.get((reference, tag, run.seed))
            if ref is None:
                continue
            mine, theirs = evaluations[run.name], evaluations[ref.name]
            _, diffs = bootstrap_differences(focal=records[run.name], reference=records[ref.name],
                                             resamples=resamples, seed=seed + run.seed)
            resampled[(len(comparisons), run.seed)] = diffs
            low, high = np.percentile(diffs, [2.5, 97.5])  # paired.paired_bootstrap's interval
            seeds.append({"seed": run.seed, "map": mine["map"] - theirs["map"],
                          "bootstrap_low": float(low), "bootstrap_high": float(high),
                          "per_class": {c: _difference(mine["per_class_ap"][c], theirs["per_class_ap"][c])
                                        for c in mine["per_class_ap"]},
                          **{size: _difference(mine["coco"][key], theirs["coco"][key]) for key, size in COCO_SIZES}})
        if seeds:
            shown = tag.replace("__", " ")
            comparisons.append({"arm": arm_name + shown, "reference": reference + shown, "seeds": seeds,
                                "over_seeds": t_interval([s["map"] for s in seeds])})
    return adjust_over_family(comparisons, resampled)


def verdict_line(comparison: dict, *, images: str = "test images") -> str:
    """Over seeds (the t interval) when there are two or more; with one seed, the test-image bootstrap, which
    says nothing about how much another seed would move the result. In a family (``comparison["family"]`` m >= 2)
    the interval at Holm's level, with the adjusted p-value."""
    over = comparison["over_seeds"]
    if over["n"] >= 2:
        low, high, basis = over["low"], over["high"], f"Student t over {over['n']} paired seeds"
        level, p_holm = over.get("level"), over.get("p_holm")
    else:
        only = comparison["seeds"][0]
        low, high = only["bootstrap_low"], only["bootstrap_high"]
        basis = f"paired bootstrap over {images}, one seed; run --seeds=3 to include seed-to-seed variation"
        level, p_holm = only.get("bootstrap_level"), only.get("bootstrap_p_holm")
    m = comparison.get("family", 1)
    if m < 2:
        return verdict(low=low, high=high, diff=over["mean"], name=comparison["arm"],
                       reference=comparison["reference"], basis=basis)
    return verdict(low=low, high=high, diff=over["mean"], name=comparison["arm"], reference=comparison["reference"],
                   basis=f"{basis}; p_Holm {format_p(p_holm)}", level=percent(level),
                   family=f", Holm over m = {m} comparisons")


def _fmt(value: float | None, sign: bool = False) -> str:
    return "-" if value is None else (f"{value:+.4f}" if sign else f"{value:.4f}")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def arm_table(rows: list[dict], class_names: list[str]) -> str:
    header = ["arm", "mAP@0.5", "VOC07 mAP", "COCO AP", *[f"AP {c}" for c in class_names], "final loc",
              "final conf", "final cls", "train min", "conf term normalisation", "weighted conf term at init",
              "D-ECE", "easy negatives' share of conf loss: init → trained", "runs (mAP)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["arm"], f"{r['map']:.4f}" + (f" ± {r['map_std']:.4f}" if r["runs"] > 1 else ""),
                 _fmt(r["map_voc07"]), _fmt(r["coco_ap"]), *[_fmt(r.get(f"ap_{c}")) for c in class_names],
                 _fmt(r["final_loss_loc"]), _fmt(r["final_loss_conf"]), _fmt(r["final_loss_cls"]),
                 f"{r['train_minutes']:.1f}", r["conf_normalization"], _fmt(r.get("conf_term_at_init")),
                 _fmt(r.get("dece")), f"{_percent(r.get('easy_negative_share_init'))} → "
                 f"{_percent(r.get('easy_negative_share_trained'))}", " ".join(f"{m:.4f}" for m in r["map_runs"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(comparisons: list[dict], class_names: list[str], images: str = "test images") -> str:
    m = comparisons[0].get("family", 1) if comparisons else 1
    interval_header = (f"bootstrap 95 % ({images})" if m < 2 else
                       f"bootstrap ({images}) / t over seeds: interval at Holm's level, p_Holm (m = {m})")
    header = ["arm − reference", "seed", "Δ mAP@0.5", interval_header,
              *[f"Δ AP {c}" for c in class_names], *[f"Δ COCO AP {size}" for _, size in COCO_SIZES]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for comp in comparisons:
        for s in comp["seeds"]:
            interval = (f"[{s['bootstrap_low']:+.4f}, {s['bootstrap_high']:+.4f}]" if "bootstrap_p_holm" not in s
                        else interval_cell(low=s["bootstrap_low"], high=s["bootstrap_high"],
                                           level=s["bootstrap_level"], p_holm=s["bootstrap_p_holm"]))
            lines.append("| " + " | ".join([f"{comp['arm']} − {comp['reference']}", str(s["seed"]),
                                            _fmt(s["map"], True), interval,
                                            *[_fmt(s["per_class"][c], True) for c in class_names],
                                            *[_fmt(s[size], True) for _, size in COCO_SIZES]]) + " |")
        over = comp["over_seeds"]
        interval = ("-" if over["low"] is None else f"[{over['low']:+.4f}, {over['high']:+.4f}] (t, {over['n']} seeds)"
                    if "p_holm" not in over else interval_cell(low=over["low"], high=over["high"], level=over["level"],
                                                               p_holm=over["p_holm"], basis=f"t, {over['n']} seeds, "))
        mean_cells = [mean_or_none(s["per_class"][c] for s in comp["seeds"]) for c in class_names]
        size_cells = [mean_or_none(s[size] for s in comp["seeds"]) for _, size in COCO_SIZES]
        lines.append("| " + " | ".join([f"{comp['arm']} − {comp['reference']}", "mean", _fmt(over["mean"], True),
                                        interval, *[_fmt(m, True) for m in mean_cells],
                                        *[_fmt(m, True) for m in size_cells]]) + " |")
    return "\n".join(lines)


def write_tables(*, rows: list[dict], comparisons: list[dict], class_names: list[str], out_dir: Path,
                 machine: str, calibration_min_score: float, scoring: Scoring | None = None) -> str:
    """summary.md / .csv / .json; returns the markdown, which ends with the verdict line(s). ``machine``: one
    line on where the runs trained (results differ with the thread count). ``scoring``: the images the runs were
    scored on (selection.Scoring; None: the test images)."""
    scoring = scoring or Scoring(split="test", annotation_path="")
    images, detections = scoring.images, scoring.images.replace("images", "detections")
    (out_dir / "summary.json").write_text(json.dumps({"arms": rows, "paired": comparisons}, indent=1),
                                          encoding="utf-8")
    with open(out_dir / "summary.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "map_runs": " ".join(f"{m:.4f}" for m in r["map_runs"])} for r in rows)
    title = ("Focal vs plain BCE on the confidence term" if len(rows) <= 2
             else f"{len(rows)} confidence-loss settings against plain BCE")
    text = (f"# {title}\n\nScored on the {images} with get_map.py's code "
            "(confidence 0.001, NMS IoU 0.5, AP at IoU 0.5); losses are the last epoch's training means, "
            "unweighted. The weighted confidence term at init is measured on each run's first training batch. "
            f"D-ECE: detection expected calibration error of the {detections} scored >= {calibration_min_score:g} "
            "(10 confidence bins, true positive as mAP counts it; reliability.png). Easy negatives: kept negative "
            f"cells with p < 0.1 over the {images}; their share of the confidence loss the arm trains with, "
            "with the network as it started and as trained.\n\n"
            + (scoring.summary_line() + "\n\n" if scoring.summary_line() else "") + machine + "\n\n"
            + arm_table(rows, class_names) + "\n")
    if comparisons:
        m = comparisons[0].get("family", 1)
        text += (f"\n## Paired differences\n\nSame seed, data order and schedule in both arms. Bootstrap: {images} "
                 "resampled with replacement, both arms scored on each resample."
                 + (" " + family_text(m, images=images) if m > 1 else "") + "\n\n"
                 + paired_table(comparisons, class_names, images) + "\n\n"
                 + "\n".join(verdict_line(comparison, images=images) for comparison in comparisons) + "\n")
    (out_dir / "summary.md").write_text(text, encoding="utf-8")
    return text
