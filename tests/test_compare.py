"""Per-point outcomes (robustkd.outcomes), the paired statistics (robustkd.stats) and tools/compare.py."""
import numpy as np
import pytest
import scipy.stats

from robustkd.bitsets import BitsetError, decode_bits, encode_bits
from robustkd.stats import mcnemar_exact, mean_interval, newcombe_paired_interval, paired_difference, t_ppf


# --- bitsets -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 400, 1000, 10000])
def test_bits_round_trip(n):
    values = np.random.default_rng(n).random(n) < 0.3
    text = encode_bits(values)
    assert len(text) == 4 * -(-((n + 7) // 8) // 3)  # base64 of ceil(n/8) bytes
    assert decode_bits(text, n).tolist() == values.tolist()


def test_bits_layout_is_little_endian_packbits_in_base64():
    # points 0 and 9 set over 10 points: bytes 0b00000001, 0b00000010 -> base64 "AQI="
    assert encode_bits([1, 0, 0, 0, 0, 0, 0, 0, 0, 1]) == "AQI="
    assert decode_bits("AQI=", 10).tolist() == [True] + [False] * 8 + [True]


@pytest.mark.parametrize("text,n", [("AQI=", 17), ("AQI=", 8), ("AQI=", 9), ("not base64!", 8)])
def test_bits_of_the_wrong_size_or_alphabet_are_refused(text, n):
    with pytest.raises(BitsetError):
        decode_bits(text, n)


# --- McNemar -------------------------------------------------------------------------------------------------------

def test_mcnemar_exact_known_values():
    assert mcnemar_exact(0, 5) == 0.0625          # 2 · (1/2)^5
    assert mcnemar_exact(5, 0) == 0.0625          # symmetric
    assert mcnemar_exact(4, 4) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)   # 2 · (C(10,0) + C(10,1)) / 2^10
    for a, b in ((3, 12), (40, 61), (250, 310)):  # the binomial test of the discordant counts
        assert mcnemar_exact(a, b) == pytest.approx(scipy.stats.binomtest(a, a + b, 0.5).pvalue, rel=1e-9)
    assert mcnemar_exact(0, 3000) == 0.0 and 0 < mcnemar_exact(1000, 2000) < 1e-70  # exact integers: no overflow
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


# --- Newcombe's paired interval ------------------------------------------------------------------------------------
# Newcombe RG (1998), "Improved confidence intervals for the difference between binomial proportions based on paired
# data", Stat Med 17:2635-2650: method 10 (the hybrid score interval) on the paper's worked examples, cells
# (e, f, g, h) = (both right, first only, second only, neither), difference (f - g)/n, z = 1.96, to the 4 decimals
# printed. The paper's (1, 97, 1, 1) row (0.8736) is left out: the formula gives 0.87367, i.e. 0.8737.
NEWCOMBE_METHOD_10 = {
    (36, 12, 2, 0): (0.0569, 0.3404), (20, 12, 2, 16): (0.0562, 0.3292), (18, 12, 2, 18): (0.0562, 0.3290),
    (36, 14, 0, 0): (0.1528, 0.4167), (35, 14, 0, 1): (0.1461, 0.4175), (18, 14, 0, 18): (0.1441, 0.3963),
    (2, 97, 1, 0): (0.8721, 0.9854), (0, 29, 1, 0): (0.6666, 0.9882), (2, 98, 0, 0): (0.9178, 0.9945),
    (1, 98, 0, 1): (0.9171, 0.9916), (0, 30, 0, 0): (0.8395, 1.0), (54, 0, 0, 0): (-0.0664, 0.0664),
    (53, 0, 0, 1): (-0.0729, 0.0729), (30, 0, 0, 24): (-0.0358, 0.0358), (29, 0, 0, 25): (-0.0354, 0.0354),
    (28, 0, 0, 26): (-0.0352, 0.0352), (27, 0, 0, 27): (-0.0351, 0.0351),
}


@pytest.mark.parametrize("cells,published", sorted(NEWCOMBE_METHOD_10.items()))
def test_newcombe_method_10_matches_the_paper(cells, published):
    e, f, g, h = cells  # our difference is b - a: the paper's "first only" is our b_only
    low, high = newcombe_paired_interval(both=e, a_only=g, b_only=f, neither=h, z=1.96)
    assert (round(low, 4), round(high, 4)) == published


def test_paired_difference_on_a_hand_example():
    # 36 both right, 2 right for a only, 12 for b only: the paper's first example with a, b swapped
    a = [1] * 36 + [1] * 2 + [0] * 12
    b = [1] * 36 + [0] * 2 + [1] * 12
    r = paired_difference(a, b)
    assert (r["n"], r["a_only"], r["b_only"]) == (50, 2, 12)
    assert (r["a_acc"], r["b_acc"], r["diff"]) == (0.76, 0.96, 0.2)
    assert r["ci_low"] < r["diff"] < r["ci_high"]
    assert (r["ci_low"], r["ci_high"]) == (0.0569, 0.3404)  # z = 1.959964 and 1.96 agree at 4 digits here
    assert r["p_value"] == 0.01294  # 2 · (C(14,0) + C(14,1) + C(14,2)) / 2^14 = 0.012939
    swapped = paired_difference(b, a)
    assert (swapped["diff"], swapped["ci_low"], swapped["ci_high"]) == (-0.2, -0.3404, -0.0569)
    assert swapped["p_value"] == r["p_value"]


def test_paired_difference_is_narrower_than_unpaired_when_outcomes_agree():
    a = [1] * 600 + [0] * 400
    b = [1] * 590 + [0] * 10 + [1] * 30 + [0] * 370  # 10 lost, 30 gained, the rest shared
    r = paired_difference(a, b)
    assert r["diff"] == 0.02 and r["ci_low"] < 0.02 < r["ci_high"]
    assert r["ci_high"] - r["ci_low"] < 0.035  # unpaired (Newcombe's method 10 for independent samples): ~0.086
    with pytest.raises(ValueError, match="same points"):
        paired_difference(a, b[:-1])


# --- over seeds ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 29, 120])
def test_t_quantile(df):
    assert t_ppf(0.975, df) == pytest.approx(scipy.stats.t.ppf(0.975, df), rel=1e-9)


def test_mean_interval():
    assert mean_interval([0.5]) == (0.5, None, None, None)
    mean, std, low, high = mean_interval([0.5, 0.6, 0.7])
    assert (mean, std) == (0.6, 0.1)
    half = 4.302653 * 0.1 / 3 ** 0.5  # t(0.975, 2) · s / sqrt(n)
    assert (low, high) == (round(0.6 - half, 4), round(0.6 + half, 4))
    with pytest.raises(ValueError):
        mean_interval([])
