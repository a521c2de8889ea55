"""Sampling intervals for accuracies, torch-free (the metrics stage imports it).

An accuracy measured on n points (the attacked subset, or the test set) is a binomial proportion; its Wilson score
interval (Wilson 1927) stays inside [0, 1] and is not degenerate at 0 or n successes, where robust accuracies often
sit, unlike the normal approximation p ± z·sqrt(p(1-p)/n).
"""
from __future__ import annotations

import math
import statistics

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


def wilson(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval (low, high) of successes / n, rounded to 4 digits like the metrics.

    (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n) with p = successes / n.
    """
    if n <= 0:
        raise ValueError(f"wilson: n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"wilson: successes must be in [0, {n}], got {successes}")
    p, z2 = successes / n, z * z
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    denom = 1 + z2 / n
    return round(max(0.0, (centre - half) / denom), 4), round(min(1.0, (centre + half) / denom), 4)


def count(acc: float, n: int) -> int:
    """The number of successes behind an accuracy rounded to 4 digits (exact while n <= 10,000)."""
    return round(acc * n)


# --- Paired comparisons: two evaluations of the same points ------------------------------------------------------
# Both models are scored on the same points, so their outcomes are paired: the information about a difference is in
# the discordant points (right for one model only). The interval is Newcombe's hybrid score interval for paired data
# (Newcombe 1998, "Improved confidence intervals for the difference between binomial proportions based on paired
# data", Statistics in Medicine 17:2635-2650, method 10); the test is the exact McNemar test (a two-sided binomial
# test of the discordant counts at p = 1/2).


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: min(1, 2 · P(X <= min(a_only, b_only))), X ~ Binomial(a_only + b_only, 1/2).

    ``a_only``: points only the first model gets right; ``b_only``: points only the second gets right. No discordant
    point gives 1.0. Exact integer arithmetic, so it stays exact for any number of points.
    """
    if a_only < 0 or b_only < 0:
        raise ValueError(f"mcnemar_exact: discordant counts must be >= 0, got {a_only}, {b_only}")
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2 ** n)


def _wilson_exact(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's interval unrounded (the paired interval combines the two marginal ones)."""
    p, z2 = successes / n, z * z
    centre, half = p + z2 / (2 * n), z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z2 / n)), min(1.0, (centre + half) / (1 + z2 / n))


def newcombe_paired_interval(both: int, a_only: int, b_only: int, neither: int,
                             z: float = Z_95) -> tuple[float, float]:
    """Newcombe's method 10 for the paired difference b_acc - a_acc = (b_only - a_only) / n, unrounded.

    With the marginal accuracies p_a = (both + a_only)/n, p_b = (both + b_only)/n and their Wilson intervals
    (l_a, u_a), (l_b, u_b): low = d - sqrt((p_b - l_b)² - 2φ(p_b - l_b)(u_a - p_a) + (u_a - p_a)²), high = d +
    sqrt((u_b - p_b)² - 2φ(u_b - p_b)(p_a - l_a) + (p_a - l_a)²), where φ estimates the correlation of the two
    outcomes: (both·neither - a_only·b_only) / sqrt of the product of the four margins, with the numerator
    max(0, that - n/2) when positive, and 0 when a margin is 0.
    """
    cells = (both, a_only, b_only, neither)
    if min(cells) < 0:
        raise ValueError(f"newcombe_paired_interval: counts must be >= 0, got {cells}")
    n = sum(cells)
    if n == 0:
        raise ValueError("newcombe_paired_interval: no points")
    a_ok, b_ok = both + a_only, both + b_only
    p_a, p_b = a_ok / n, b_ok / n
    l_a, u_a = _wilson_exact(a_ok, n, z)
    l_b, u_b = _wilson_exact(b_ok, n, z)
    margins = a_ok * (n - a_ok) * b_ok * (n - b_ok)
    phi = 0.0
    if margins:
        num = both * neither - a_only * b_only
        phi = (max(0.0, num - n / 2) if num > 0 else num) / math.sqrt(margins)
    d = p_b - p_a
    low = d - math.sqrt(max(0.0, (p_b - l_b) ** 2 - 2 * phi * (p_b - l_b) * (u_a - p_a) + (u_a - p_a) ** 2))
    high = d + math.sqrt(max(0.0, (u_b - p_b) ** 2 - 2 * phi * (u_b - p_b) * (p_a - l_a) + (p_a - l_a) ** 2))
    return max(-1.0, low), min(1.0, high)


def z_for(confidence: float) -> float:
    """The two-sided standard normal quantile for ``confidence`` (0.95 -> 1.959964)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return Z_95 if confidence == 0.95 else statistics.NormalDist().inv_cdf(0.5 + confidence / 2)


def paired_difference(a, b, confidence: float = 0.95) -> dict:
    """Paired comparison of two per-point outcome vectors over the same points (bool, or 0/1).

    Returns ``n``, ``a_acc``, ``b_acc``, ``diff`` (b_acc - a_acc), ``ci_low``, ``ci_high`` (Newcombe's method 10
    interval of the difference), ``a_only``, ``b_only`` (discordant counts: right for a only, for b only) and
    ``p_value`` (exact McNemar). Accuracies, difference and bounds are rounded to 4 digits like the metrics, the
    p-value to 4 significant digits.
    """
    a, b = [bool(v) for v in a], [bool(v) for v in b]
    if len(a) != len(b):
        raise ValueError(f"paired_difference: the outcome vectors differ in length ({len(a)} vs {len(b)}); "
                         f"a paired comparison needs the same points")
    if not a:
        raise ValueError("paired_difference: no points")
    both = sum(x and y for x, y in zip(a, b))
    a_only = sum(x and not y for x, y in zip(a, b))
    b_only = sum(y and not x for x, y in zip(a, b))
    n = len(a)
    neither = n - both - a_only - b_only
    low, high = newcombe_paired_interval(both, a_only, b_only, neither, z_for(confidence))
    a_acc, b_acc = (both + a_only) / n, (both + b_only) / n
    return {"n": n, "a_acc": round(a_acc, 4), "b_acc": round(b_acc, 4), "diff": round(b_acc - a_acc, 4),
            "ci_low": round(low, 4), "ci_high": round(high, 4), "a_only": a_only, "b_only": b_only,
            "p_value": float(f"{mcnemar_exact(a_only, b_only):.4g}")}


# --- Over training seeds ------------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function."""
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t >= 0 else tail


def t_ppf(q: float, df: float) -> float:
    """Student's t quantile (bisection on :func:`t_cdf`; torch- and scipy-free)."""
    if not 0 < q < 1 or df <= 0:
        raise ValueError(f"t_ppf: need 0 < q < 1 and df > 0, got q={q}, df={df}")
    if q < 0.5:
        return -t_ppf(1 - q, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < q:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < q else (low, mid)
        if high - low < 1e-12:
            break
    return (low + high) / 2


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float | None, float | None, float | None]:
    """(mean, std, low, high) over seeds: the sample standard deviation (ddof = 1) and the Student-t interval of the
    mean, mean ± t(1 - α/2, n - 1) · std / sqrt(n). One value: std, low and high are None. Rounded to 4 digits."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_interval: no values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n, mean = len(values), statistics.fmean(values)
    if n == 1:
        return round(mean, 4), None, None, None
    std = statistics.stdev(values)
    half = t_ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return round(mean, 4), round(std, 4), round(mean - half, 4), round(mean + half, 4)
