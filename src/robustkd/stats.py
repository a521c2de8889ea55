"""Sampling intervals for accuracies, torch-free (the metrics stage imports it).

An accuracy measured on n points (the attacked subset, or the test set) is a binomial proportion; its Wilson score
interval (Wilson 1927) stays inside [0, 1] and is not degenerate at 0 or n successes, where robust accuracies often
sit, unlike the normal approximation p ± z·sqrt(p(1-p)/n).
"""
from __future__ import annotations

import math

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
