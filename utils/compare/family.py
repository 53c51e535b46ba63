"""Several arms against one reference: compare_focal.py's --family (every named arm against bce) and the Holm
correction of the paired intervals and verdicts over the comparisons (utils/compare/multiplicity.py).

With m >= 2 comparisons (arms other than the reference, times sweep values) the report is corrected over all m at
family-wise error ALPHA, on both bases the verdict can use:
- over seeds: each comparison's paired Student-t test of its mean difference (two-sided p, n - 1 df);
- per seed: each comparison's paired bootstrap over the test images (two-sided percentile-bootstrap p), the m
  comparisons of that seed being the family.
Each gets its Holm-adjusted p-value and its interval at the level Holm tested it at (multiplicity.holm): the
interval excludes zero exactly when the adjusted p-value is below ALPHA, so the verdict and the p-value agree.
The unadjusted 95 % intervals stay in summary.json (``low_95`` / ``high_95``, ``bootstrap_95``).
With one comparison nothing changes.
"""
import math

import numpy as np

from utils.compare.multiplicity import bootstrap_p, holm, percent, t_quantile, t_two_sided_p
from utils.core.config import ConfigError

ALPHA = 0.05


def planned_arms(*, cfg: dict, default_arms: list[dict]) -> list[dict]:
    """The arms compare_focal.py trains: the gamma x alpha grid (``grid``), every named arm against bce
    (``family``: ARM_PRESETS in order, bce first) or ``arms``. ``default_arms``: ``arms`` as no one set it, so a
    family asked for together with other arms or the grid is refused instead of one silently winning."""
    from utils.compare.experiment import ARM_PRESETS, grid_arms, resolve_arms

    if not cfg["family"]:
        return grid_arms() if cfg["grid"] else cfg["arms"]
    if cfg["grid"] or cfg["arms"] != default_arms:
        raise ConfigError("--family=True trains every named arm against bce; drop --grid=True / --arms, or list "
                          f"the arms you want with --arms instead (names: {', '.join(ARM_PRESETS)})")
    return resolve_arms(list(ARM_PRESETS))


def t_test_p(over_seeds: dict) -> float:
    """Two-sided p of the paired t test that the mean difference over seeds is zero (t_interval's dict)."""
    mean, sd, n = over_seeds["mean"], over_seeds["sd"], over_seeds["n"]
    if sd == 0:  # every seed moved by the same amount: no spread to test against
        return 1.0 if mean == 0 else 0.0
    return t_two_sided_p(mean / (sd / math.sqrt(n)), n - 1)


def adjust_over_family(comparisons: list[dict], resampled: dict[tuple[int, int], np.ndarray], *,
                       alpha: float = ALPHA) -> list[dict]:
    """Holm over the comparisons (report.paired_comparisons' entries, changed in place and returned) when there
    are two or more. ``resampled``: (index of the comparison, seed) -> that seed's bootstrap differences. Per
    seed the bootstrap interval becomes the one at Holm's level with ``bootstrap_p`` / ``bootstrap_p_holm`` /
    ``bootstrap_level``; over seeds (when every comparison has two or more) ``low`` / ``high`` likewise with
    ``p`` / ``p_holm`` / ``level`` and ``t`` the quantile used (exact, where one comparison uses a 4-decimal
    table)."""
    m = len(comparisons)
    if m < 2:
        return comparisons
    for seed in dict.fromkeys(s["seed"] for c in comparisons for s in c["seeds"]):
        entries = [(s, resampled[(i, seed)]) for i, c in enumerate(comparisons) for s in c["seeds"]
                   if s["seed"] == seed]
        p_values = [bootstrap_p(diffs) for _, diffs in entries]
        result = holm(p_values, alpha=alpha)
        for (entry, diffs), p, adjusted, used in zip(entries, p_values, result["adjusted"], result["alpha_used"]):
            low, high = np.percentile(diffs, [100 * used / 2, 100 * (1 - used / 2)])
            entry.update(bootstrap_95=[entry["bootstrap_low"], entry["bootstrap_high"]], bootstrap_low=float(low),
                         bootstrap_high=float(high), bootstrap_level=1 - float(used), bootstrap_p=p,
                         bootstrap_p_holm=float(adjusted), bootstrap_family=len(entries))
    overs = [c["over_seeds"] for c in comparisons]
    if all(over["n"] >= 2 for over in overs):
        p_values = [t_test_p(over) for over in overs]
        result = holm(p_values, alpha=alpha)
        for over, p, adjusted, used in zip(overs, p_values, result["adjusted"], result["alpha_used"]):
            t = t_quantile(1 - used / 2, over["n"] - 1)
            half = t * over["sd"] / math.sqrt(over["n"])
            over.update(low_95=over["low"], high_95=over["high"], low=over["mean"] - half,
                        high=over["mean"] + half, t=t, level=1 - float(used), p=p, p_holm=float(adjusted))
    for comparison in comparisons:
        comparison["family"] = m
    return comparisons


def format_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def interval_cell(*, low: float, high: float, level: float, p_holm: float, basis: str = "") -> str:
    """A family's interval in the paired table: '[-0.0100, +0.0300] (98.33 %, p_Holm 0.030)'."""
    return f"[{low:+.4f}, {high:+.4f}] ({basis}{percent(level)}, p_Holm {format_p(p_holm)})"


def family_text(m: int, *, images: str) -> str:
    """What the paired table and verdicts of a family report, in the words of summary.md."""
    return (f"Holm over the family of m = {m} comparisons, family-wise error {ALPHA:g}: the comparisons' p-values "
            f"are sorted, p_(1) <= ... <= p_(m), and compared in turn with {ALPHA:g} / m, {ALPHA:g} / (m - 1), "
            "... until one fails. p_Holm is the adjusted p-value (the running maximum of (m - i + 1) p_(i), at "
            f"most 1); each interval is at the level its comparison was tested at (the first at 1 - {ALPHA:g} / "
            "m; those after the first failure at that failure's level), so it excludes zero exactly when "
            f"p_Holm < {ALPHA:g}. These are the intervals of Holm's decisions, not simultaneous intervals. Over "
            f"seeds: paired Student t; per seed: the paired bootstrap over the {images}, its p-value twice the "
            "share of resampled differences beyond zero (read off the percentile curve the interval comes from), "
            "the family being the m comparisons of that seed. summary.json keeps the unadjusted 95 % intervals "
            "too.")
