"""The Wilson score interval, against values computed by hand."""
import math

import pytest

from robustkd.stats import Z_95, count, wilson


def test_wilson_matches_hand_computed_values():
    # 0 of n: low = 0, high = z²/(n + z²). n = 10: 3.8415/13.8415 = 0.2775 (the textbook value); n = 400: 0.0095.
    assert wilson(0, 10) == (0.0, 0.2775)
    assert wilson(0, 400) == (0.0, 0.0095)
    # n of n: the mirror image.
    assert wilson(400, 400) == (0.9905, 1.0)
    # 5 of 400: p = 0.0125, z²/2n = 0.0048018, z·sqrt(p(1-p)/n + z²/4n²) = 0.0118117, 1 + z²/n = 1.0096036:
    # (0.0173018 ∓ 0.0118117) / 1.0096036 = 0.0054, 0.0289.
    assert wilson(5, 400) == (0.0054, 0.0289)
    # 1 of 2: (0.5 + z²/4 ∓ z·sqrt(1/8 + z²/16)) / (1 + z²/2) = (1.4604 ∓ 1.1823) / 2.9207 = 0.0945, 0.9055.
    assert wilson(1, 2) == (0.0945, 0.9055)


def test_wilson_contains_the_estimate_and_narrows_with_n():
    for k, n in ((3, 7), (270, 1000), (8927, 10000)):
        low, high = wilson(k, n)
        assert 0 <= low <= k / n <= high <= 1
    assert wilson(27, 100)[1] - wilson(27, 100)[0] > wilson(270, 1000)[1] - wilson(270, 1000)[0]
    assert Z_95 == pytest.approx(1.959964, abs=1e-6)


def test_wilson_rejects_impossible_counts():
    for k, n in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            wilson(k, n)


def test_count_recovers_the_successes_behind_a_rounded_accuracy():
    assert [count(round(k / 400, 4), 400) for k in range(401)] == list(range(401))
    assert count(0.8927, 10000) == 8927
    assert not math.isnan(wilson(count(0.0125, 400), 400)[0])
