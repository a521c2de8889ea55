"""Per-model metrics and the gradient-masking checks, on hand-built per-point results."""
import copy

import pytest

from robustkd.diagnostics import cw_summary, masking_codes, masking_reasons, summarise, worst_case_points
from robustkd.stats import wilson
from robustkd.evaluation import eps_key

THRESHOLDS = {"strong_vs_ce_margin": 0.10, "transfer_margin": 0.02, "fgsm_margin": 0.02,
              "monotonic_tolerance": 0.02, "large_eps_max_acc": 0.10}
N = 100


def points(n_robust: int) -> list[int]:
    return [1] * n_robust + [0] * (N - n_robust)


def healthy_result() -> dict:
    """An honest model: accuracy falls with ε, PGD ≤ FGSM, white-box ≤ black-box, ~0 at ε = 0.3."""
    accs = {  # robust points per attack at ε = 0.05, 0.1, 0.3
        "fgsm_softmax_ce": (60, 40, 10), "pgd_softmax_ce": (50, 30, 2), "pgd_margin": (48, 28, 1),
        "transfer_surrogate": (80, 70, 40),
    }
    linf = {a: {eps_key(e): points(v) for e, v in zip((0.05, 0.1, 0.3), vals)} for a, vals in accs.items()}
    linf["autoattack"] = {eps_key(0.1): points(27)}
    linf["square"] = {eps_key(0.1): points(45)}
    return {
        "model": "student", "n_test": 1000, "clean_correct": 900, "n_attacked": N,
        "attack_points": [10 * i for i in range(N)],
        "attacked_clean_correct": points(90), "linf": linf, "l2": {"pgd_l2_margin": {eps_key(1.0): points(20)}},
        "autoattack_flags": {}, "autoattack_version": "standard", "cw_l2": {"n_points": 4, "l2": [0.5, 1.5, None, 0.8]},
        "sensitivity": {"n_points": N, "softmax": 1e-21, "logit": 3.25},
        "eps": [0.05, 0.1, 0.3], "headline_eps": 0.1,
        "info": {"role": "student", "arch": "papernot_cnn", "method": "defensive_distillation", "temperature": 100,
                 "train_precision": "bf16-autocast"},
    }


def test_honest_model_is_not_flagged():
    assert masking_reasons(healthy_result(), THRESHOLDS) == []


def test_worst_case_is_a_per_point_and():
    linf = {"a": {"k": [1, 1, 0, 1]}, "b": {"k": [1, 0, 1, 1]}, "c": {"other": [0, 0, 0, 0]}}
    assert worst_case_points(linf, "k") == [1, 0, 0, 1]


def test_saturated_softmax_is_flagged_with_the_gap_in_words():
    r = healthy_result()
    r["linf"]["pgd_softmax_ce"][eps_key(0.1)] = points(68)
    r["linf"]["autoattack"][eps_key(0.1)] = points(1)
    reasons = masking_reasons(r, THRESHOLDS)
    assert any("autoattack leaves 1.0% but softmax-CE PGD leaves 68.0%" in s and "67.0-point gap" in s
               for s in reasons), reasons


@pytest.mark.parametrize("mutate,expected", [
    (lambda r: r["linf"]["transfer_surrogate"].__setitem__(eps_key(0.1), points(10)), "black-box transfer_surrogate"),
    (lambda r: r["linf"]["fgsm_softmax_ce"].__setitem__(eps_key(0.1), points(20)), "FGSM (20.0%) beats iterative PGD"),
    (lambda r: r["linf"]["pgd_margin"].__setitem__(eps_key(0.3), points(40)), "pgd_margin: robust accuracy rises"),
    (lambda r: [r["linf"][a].__setitem__(eps_key(0.3), points(30)) for a in r["linf"] if eps_key(0.3) in r["linf"][a]],
     "worst-case accuracy is still 30.0% at the largest ε=0.3"),
    (lambda r: r["autoattack_flags"].__setitem__(eps_key(0.1), ["zero gradient"]), "AutoAttack's own check at ε=0.1: zero gradient"),
])
def test_each_check_fires(mutate, expected):
    r = copy.deepcopy(healthy_result())
    mutate(r)
    reasons = masking_reasons(r, THRESHOLDS)
    assert any(expected in s for s in reasons), reasons


def test_black_box_check_is_per_point():
    """Flagged when a black box breaks points every white-box attack left robust (here 5 of those 27, i.e. 18.5%,
    while its accuracy alone, 60%, is far above the white-box 27%); not when it breaks only points a white-box attack
    broke. The share is of the points the white-box attacks left robust, not of all attacked points."""
    r = healthy_result()  # white-box attacks leave the first 27 points robust at ε = 0.1
    key = eps_key(0.1)
    r["linf"]["square"][key] = [0] * 5 + [1] * 55 + [0] * 40
    reasons = masking_reasons(r, THRESHOLDS)
    assert any("ε=0.1: black-box square breaks 18.5% of the points that every white-box attack" in s
               and "left robust (27.0%)" in s for s in reasons), reasons
    r["linf"]["square"][key] = [1] * 27 + [0] * 73  # weaker than PGD overall, but only where white-box won too
    assert masking_reasons(r, THRESHOLDS) == []


def test_black_box_check_threshold_is_a_share_of_the_white_box_survivors():
    r = healthy_result()
    key = eps_key(0.1)
    for attack in ("fgsm_softmax_ce", "pgd_softmax_ce", "pgd_margin", "autoattack"):
        r["linf"][attack][key] = points(50)  # 50 points left robust by every white-box attack
        if eps_key(0.05) in r["linf"][attack]:
            r["linf"][attack][eps_key(0.05)] = points(60)  # accuracy still falls with ε
    r["linf"]["square"][key] = [0] + [1] * 99  # 1 of the 50: 2%, not more than transfer_margin
    r["linf"]["transfer_surrogate"][key] = points(70)  # breaks none of the 50
    assert masking_reasons(r, THRESHOLDS) == []
    r["linf"]["square"][key] = [0] * 2 + [1] * 98  # 2 of the 50: 4% (of all 100 points it would be 2%)
    assert any("black-box square breaks 4.0% of the points" in s for s in masking_reasons(r, THRESHOLDS))
    for attack in ("fgsm_softmax_ce", "pgd_softmax_ce", "pgd_margin", "autoattack"):
        r["linf"][attack][key] = points(0)  # nothing left standing: nothing a black box could break beyond
    assert not any("black-box" in s for s in masking_reasons(r, THRESHOLDS))


def test_cw_summary_counts_failures_as_infinite():
    r = healthy_result()  # norms 0.5, 1.5, fail, 0.8 on 4 correctly classified points
    s = cw_summary(r)
    assert s["cw_l2_median"] == pytest.approx((0.8 + 1.5) / 2)
    assert s["cw_l2_mean"] == pytest.approx((0.5 + 1.5 + 0.8) / 3, abs=1e-4)
    assert s["cw_l2_success_rate"] == 0.75
    r["cw_l2"]["l2"] = [None, None, None, 0.2]
    assert cw_summary(r)["cw_l2_median"] is None  # more than half never broken


def test_summary_schema_is_flat_and_stable():
    r = healthy_result()
    m = summarise(r, THRESHOLDS)
    assert m["clean_acc"] == 0.9 and m["worst_case_headline"] == 0.27 and m["autoattack_headline"] == 0.27
    assert m["robust_acc"]["pgd_margin"] == {"eps_0p05": 0.48, "eps_0p1": 0.28, "eps_0p3": 0.01}
    assert m["sensitivity_softmax"] == 1e-21  # tiny values keep their significant digits
    assert m["gradient_masking"] == 0 and m["masking_codes"] == ""
    assert "masking_reasons" not in m  # prose lives in results/gradient_masking.md, not in a metrics file
    # 95% Wilson intervals: clean 900/1000 on the test set, worst case and AutoAttack 27/100 attacked points
    assert (m["clean_acc_ci_low"], m["clean_acc_ci_high"]) == wilson(900, 1000) == (0.8798, 0.9171)
    assert (m["worst_case_headline_ci_low"], m["worst_case_headline_ci_high"]) == wilson(27, 100)
    assert (m["autoattack_headline_ci_low"], m["autoattack_headline_ci_high"]) == wilson(27, 100)
    assert all("." not in k for k in m) and all("." not in k for k in m["worst_case"])
    assert m["train_precision"] == "bf16-autocast"  # from the checkpoint's info
    del r["info"]["train_precision"]
    assert summarise(r, THRESHOLDS)["train_precision"] is None  # a checkpoint written before the field


def test_eps_key_has_no_dots():
    assert eps_key(0.1) == "eps_0p1" and eps_key(0.03137) == "eps_0p03137" and eps_key(2.0) == "eps_2"


def test_flagged_model_keeps_a_numeric_flag_and_short_codes():
    """metrics.json holds a 0/1 flag and the codes of the checks that fired, each once, in a fixed order."""
    r = healthy_result()
    r["autoattack_flags"][eps_key(0.1)] = ["zero gradient"]       # autoattack_check, fires last
    r["linf"]["pgd_softmax_ce"][eps_key(0.1)] = points(68)  # above AutoAttack (ce_gap) and FGSM (fgsm_beats_pgd),
    m = summarise(r, THRESHOLDS)                             # and up from 50% at ε = 0.05 (not_monotone)
    assert m["gradient_masking"] == 1
    codes = "ce_gap,fgsm_beats_pgd,not_monotone,autoattack_check"  # MASKING_CODES order, each once
    assert m["masking_codes"] == masking_codes(r, THRESHOLDS) == codes
    reasons = masking_reasons(r, THRESHOLDS)  # the words, for the masking report
    assert len(reasons) == 4 and reasons[-1] == "AutoAttack's own check at ε=0.1: zero gradient"
