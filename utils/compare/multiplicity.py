"""Tests of several arms against one reference: Student-t p-values and quantiles (integer degrees of freedom, no
SciPy needed), Holm's step-down adjustment, and the two-sided p-value of a percentile bootstrap interval.

Holm (1979) over m hypotheses at family-wise error alpha: sort the p-values, p_(1) <= ... <= p_(m); reject
H_(1), H_(2), ... while p_(i) <= alpha / (m - i + 1) and stop at the first that fails. The adjusted p-value of
H_(i) is max over j <= i of (m - j + 1) p_(j), capped at 1, so H_(i) is rejected exactly when it is <= alpha.
"""
import math

import numpy as np


def _coverage(theta: np.ndarray, df: int) -> np.ndarray:
    """P(|T| <= sqrt(df) tan(theta)) for Student's t with integer ``df``: the finite series of Abramowitz &
    Stegun 26.7.3 (odd df) and 26.7.4 (even df), exact for every integer df. ``theta`` in [0, pi/2]."""
    theta = np.asarray(theta, dtype=np.float64)
    c, s = np.cos(theta), np.sin(theta)
    if df % 2:  # 2/pi (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), df - 1 powers of cos in all
        k = np.arange(1, (df - 1) // 2)
        coefs = np.concatenate([[1.0], np.cumprod(2 * k / (2 * k + 1))])[: (df - 1) // 2]
        series = (coefs * c[..., None] ** (2 * np.arange(len(coefs)) + 1)).sum(axis=-1)
        return 2 / np.pi * (theta + s * series)
    k = np.arange(1, df // 2)  # sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), df/2 terms
    coefs = np.concatenate([[1.0], np.cumprod((2 * k - 1) / (2 * k))])
    return s * (coefs * c[..., None] ** (2 * np.arange(len(coefs)))).sum(axis=-1)


def t_two_sided_p(t_stat: float, df: int) -> float:
    """Two-sided p-value P(|T| >= |t_stat|) of Student's t with ``df`` (an integer >= 1) degrees of freedom."""
    if df < 1 or int(df) != df:
        raise ValueError(f"t_two_sided_p: df must be a positive integer, got {df}")
    if math.isnan(t_stat):
        return 1.0
    theta = math.atan(abs(t_stat) / math.sqrt(df))  # atan(inf) = pi/2: p = 0
    return float(min(1.0, max(0.0, 1.0 - _coverage(np.array(theta), int(df)))))


def t_quantile(prob: float, df: int) -> float:
    """The ``prob`` quantile (0.5 < prob < 1) of Student's t with ``df`` degrees of freedom, by bisection on the
    exact coverage (monotone in theta = atan(t / sqrt(df))) to double precision."""
    if not 0.5 < prob < 1:
        raise ValueError(f"t_quantile: prob must be in (0.5, 1), got {prob}")
    target = 2 * prob - 1  # P(|T| <= t)
    low, high = 0.0, math.pi / 2
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        low, high = (middle, high) if _coverage(np.array(middle), int(df)) < target else (low, middle)
    return math.sqrt(df) * math.tan(0.5 * (low + high))


def holm(p_values, *, alpha: float = 0.05) -> dict:
    """Holm's step-down over the given p-values (in any order; returned in the same order):

    ``adjusted``: the Holm-adjusted p-values; ``rejected``: adjusted <= alpha; ``alpha_used``: the error level
    each hypothesis's interval is reported at. A hypothesis ranked i-th (by p, ties in the given order) that the
    step-down reaches is tested at alpha / (m - i + 1), and its interval is at that level (the first at the
    Bonferroni level alpha / m). The ones after the step-down stopped, at rank k, get rank k's level
    alpha / (m - k + 1): their p-values are at least p_(k), which failed it, so their intervals hold zero, and an
    interval excludes zero exactly when Holm rejects. They are the intervals of Holm's decisions, not
    simultaneous intervals: only all m at level alpha / m would cover the m differences together."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    multipliers = m - np.arange(m)  # m, m - 1, ..., 1
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate(multipliers * p[order]))
    level_sorted = alpha / multipliers
    reached = np.logical_and.accumulate(p[order] <= level_sorted)  # rejected in sorted order
    stop = int(reached.sum())  # rank (0-based) where the step-down stopped; m when everything was rejected
    if stop < m:
        level_sorted[stop:] = level_sorted[stop]
    adjusted, alpha_used, rejected = np.empty(m), np.empty(m), np.empty(m, dtype=bool)
    adjusted[order], alpha_used[order], rejected[order] = adjusted_sorted, level_sorted, reached
    return {"adjusted": adjusted, "rejected": rejected, "alpha_used": alpha_used, "m": m, "alpha": alpha}


def bootstrap_p(diffs: np.ndarray) -> float:
    """Two-sided p-value of the percentile bootstrap: twice the share of resampled differences on the far side of
    zero, read off numpy's (linearly interpolated) percentile curve, i.e. the smallest a at which the percentile
    interval [q(a/2), q(1 - a/2)] (np.percentile) touches zero. So that interval excludes zero exactly when
    p < a, and the adjusted intervals agree with Holm's decisions on the adjusted p-values. 0: every resample
    on one side (p < 1 / resamples); 1: zero in the middle of the resamples."""
    x = np.sort(np.asarray(diffs, dtype=np.float64))
    n = len(x)
    if n == 1:
        return 1.0 if x[0] == 0 else 0.0

    def crossing(count: int, edge: float) -> float:
        """Fraction u along the percentile curve where it reaches zero between order statistics count-1, count."""
        if count in (0, n):
            return edge
        below, above = x[count - 1], x[count]
        return ((count - 1) + (0.0 - below) / (above - below)) / (n - 1)

    last_at_most_zero = crossing(int(np.searchsorted(x, 0.0, side="right")), 0.0 if x[0] > 0 else 1.0)
    first_at_least_zero = crossing(int(np.searchsorted(x, 0.0, side="left")), 1.0 if x[-1] < 0 else 0.0)
    return float(min(1.0, 2 * min(last_at_most_zero, 1.0 - first_at_least_zero)))


def percent(level: float) -> str:
    """A confidence level as the tables write it: 0.95 -> '95 %', 1 - 0.05 / 3 -> '98.33 %'."""
    return f"{100 * level:.4g} %"
