"""The evaluation cascade (`attack.cascade`): AutoAttack runs only on the points every cheaper white-box attack
failed on, Square only on the points every white-box attack failed on. The per-point worst case must be the one of
running everything on everything."""
import pytest
import torch

from attack_fixtures import FMNIST_DIR, fashion_mnist, fashion_mnist_available, trained_fmnist_model
from robustkd import attacks, evaluation
from robustkd.diagnostics import worst_case_points

CFG = {
    "batch_size": 32, "seed": 0, "eps": [0.02, 0.1], "headline_eps": 0.02,
    "pgd": {"steps": 5, "step_size_ratio": 0.25, "restarts": 1}, "pgd_l2": {"eps": [], "steps": 5, "restarts": 1},
    "cw_l2": {"n_points": 0, "steps": 10, "binary_search_steps": 2, "c_init": 0.1, "lr": 0.01},
    "autoattack": {"version": "custom", "attacks": ["apgd-ce", "apgd-dlr"], "eps": [0.02, 0.1], "apgd_restarts": 1},
    "square": {"n_queries": 50}, "transfer": {"steps": 5}, "sensitivity_points": 4,
}


pytestmark = [pytest.mark.usefixtures("one_thread"),  # conftest: 1 thread for small convs
              pytest.mark.cross_processor]


@pytest.fixture(scope="module")
def setting():
    """An undefended model on 64 real test points: some survive at ε = 0.02, almost none at ε = 0.1."""
    if not fashion_mnist_available():
        pytest.skip(f"real Fashion-MNIST IDX files not found in {FMNIST_DIR}")
    model = trained_fmnist_model(n_train=3000).eval()
    x, y = fashion_mnist("test", 64)
    surrogate = trained_fmnist_model(n_train=1000, seed=1).eval()
    transfer_adv = evaluation.craft_transfer(surrogate, x, y, CFG)
    return model, x, y, torch.arange(64), transfer_adv


def run(setting, cascade):
    model, x, y, idx, transfer_adv = setting
    with attacks.frozen(model):
        return evaluation.evaluate(model, "m", x, y, idx, {**CFG, "cascade": cascade}, transfer_adv)


@pytest.fixture(scope="module")
def both(setting):
    return run(setting, False), run(setting, True)


def test_cascade_keeps_the_per_point_worst_case(both):
    full, cascaded = both
    for eps in CFG["eps"]:
        key = evaluation.eps_key(eps)
        assert worst_case_points(cascaded["linf"], key) == worst_case_points(full["linf"], key)


def test_cascade_runs_the_expensive_attacks_on_the_survivors_only(both):
    full, cascaded = both
    clean = torch.tensor(full["attacked_clean_correct"], dtype=torch.bool)
    for eps in CFG["autoattack"]["eps"]:
        key = evaluation.eps_key(eps)
        survivors = evaluation.cascade_survivors(full["linf"], key, clean,
                                                 evaluation.CASCADE_BEFORE[evaluation.AUTOATTACK])
        assert cascaded["n_evaluated"][evaluation.AUTOATTACK][key] == int(survivors.sum())
        assert full["n_evaluated"][evaluation.AUTOATTACK][key] == 64
        # A point the cascade skipped counts as broken; on the others AutoAttack decides.
        aa = torch.tensor(cascaded["linf"][evaluation.AUTOATTACK][key], dtype=torch.bool)
        assert not (aa & ~survivors).any()
    key = evaluation.eps_key(0.1)
    assert cascaded["n_evaluated"][evaluation.AUTOATTACK][key] < 64 // 2  # the point of the cascade
    head = evaluation.eps_key(CFG["headline_eps"])
    # Square: only on the points every white-box attack (AutoAttack included) left standing, with the results it
    # gets among all the points (its randomness is per point).
    standing = evaluation.cascade_survivors(full["linf"], head, clean, evaluation.CASCADE_BEFORE[evaluation.SQUARE])
    assert 0 < cascaded["n_evaluated"][evaluation.SQUARE][head] == int(standing.sum()) < 64
    assert full["n_evaluated"][evaluation.SQUARE][head] == 64
    sq_full = torch.tensor(full["linf"][evaluation.SQUARE][head], dtype=torch.bool)
    assert cascaded["linf"][evaluation.SQUARE][head] == (sq_full & standing).int().tolist()
    assert cascaded["cascade"] == {evaluation.AUTOATTACK: True, evaluation.SQUARE: True}
    assert full["cascade"] == {evaluation.AUTOATTACK: False, evaluation.SQUARE: False}


def test_cheap_attacks_are_unchanged_by_the_cascade(both):
    full, cascaded = both
    for attack in (evaluation.FGSM_CE, evaluation.PGD_CE, evaluation.PGD_MARGIN, evaluation.TRANSFER):
        assert cascaded["linf"][attack] == full["linf"][attack]
    assert cascaded["sensitivity"] == full["sensitivity"] and cascaded["clean_correct"] == full["clean_correct"]


def test_cascade_bookkeeping_with_a_per_point_deterministic_attack(setting, monkeypatch):
    """With an expensive attack whose outcome per point does not depend on the other points of its batch, the
    cascade's AutoAttack mask is exactly the full mask AND the cheaper white-box attacks; it is given exactly
    the surviving points."""
    seen = []
    cfg = {**CFG, "square": {"n_queries": 0}, "eps": [0.02], "autoattack": {**CFG["autoattack"], "eps": [0.02]}}
    model, x, y, idx, transfer_adv = setting
    # No random start: each point's outcome depends on that point alone.
    monkeypatch.setattr(evaluation.attacks, "autoattack", lambda m, xs, ys, eps, **kw: (
        seen.append(len(xs)) or attacks.pgd(m, xs, ys, eps=eps, steps=3, step_size=eps / 2, norm="linf",
                                            loss="margin", restarts=1, generator=None, random_start=False), []))
    with attacks.frozen(model):
        full = evaluation.evaluate(model, "m", x, y, idx, {**cfg, "cascade": False}, transfer_adv)
        cascaded = evaluation.evaluate(model, "m", x, y, idx, {**cfg, "cascade": True}, transfer_adv)
    key = evaluation.eps_key(0.02)
    clean = torch.tensor(full["attacked_clean_correct"], dtype=torch.bool)
    survivors = evaluation.cascade_survivors(full["linf"], key, clean, evaluation.CASCADE_BEFORE[evaluation.AUTOATTACK])
    assert seen == [64, int(survivors.sum())]
    expected = (torch.tensor(full["linf"][evaluation.AUTOATTACK][key], dtype=torch.bool) & survivors).int().tolist()
    assert cascaded["linf"][evaluation.AUTOATTACK][key] == expected


def test_cascade_with_no_survivor_skips_the_expensive_attacks(setting):
    """At ε = 1 every point falls to the cheap attacks: AutoAttack and Square get no point, and that is fine."""
    model, x, y, idx, transfer_adv = setting
    cfg = {**CFG, "eps": [1.0], "headline_eps": 1.0, "autoattack": {**CFG["autoattack"], "eps": [1.0]}}
    transfer = {evaluation.eps_key(1.0): transfer_adv[evaluation.eps_key(0.1)]}
    with attacks.frozen(model):
        result = evaluation.evaluate(model, "m", x, y, idx, {**cfg, "cascade": True}, transfer)
    key = evaluation.eps_key(1.0)
    assert result["n_evaluated"] == {evaluation.AUTOATTACK: {key: 0}, evaluation.SQUARE: {key: 0}}
    assert result["linf"][evaluation.AUTOATTACK][key] == [0] * 64 == result["linf"][evaluation.SQUARE][key]


@pytest.mark.parametrize("version, aa_attacks, exact", [
    ("custom", ["apgd-ce", "apgd-dlr"], True),
    ("custom", ["apgd-ce", "apgd-t"], True),
    ("custom", ["apgd-ce", "square"], False),     # AutoAttack's own Square: pyautoattack's per-batch draws
    ("custom", ["apgd-ce", "fab-t"], False),      # FAB's restarts are drawn per batch
    ("standard", None, False),                    # FAB-T and Square
])
def test_every_autoattack_version_is_cascaded_and_only_per_point_ones_are_exact(version, aa_attacks, exact):
    """Standard AutoAttack is cascaded too (that keeps it affordable); whether the cascade is bit-exact (the same
    result per point as running it on every point) is recorded beside it."""
    cfg = {**CFG, "cascade": True, "autoattack": {**CFG["autoattack"], "version": version, "attacks": aa_attacks}}
    assert evaluation.cascades(evaluation.AUTOATTACK, cfg) is True
    assert evaluation.cascade_is_exact(evaluation.AUTOATTACK, cfg) is exact
    assert evaluation.cascades(evaluation.SQUARE, cfg) is True
    assert evaluation.cascade_is_exact(evaluation.SQUARE, cfg) is True  # the suite's L∞ Square, per-point stripes
    off = {**cfg, "cascade": False}
    assert evaluation.cascades(evaluation.AUTOATTACK, off) is False
    assert evaluation.cascade_is_exact(evaluation.AUTOATTACK, off) is True  # nothing cascaded: nothing changed
    assert evaluation.cascades(evaluation.SQUARE, off) is False
    assert evaluation.cascades(evaluation.FGSM_CE, cfg) is False


def test_cascade_runs_cw_only_on_points_correct_clean(setting, monkeypatch):
    """CW-L2 (minimal L2) is given only the points correct clean; the others need no perturbation (0). The
    remaining points get the norms of running CW on every point, so the CW summary is unchanged."""
    from robustkd.diagnostics import cw_summary

    cfg = {**CFG, "eps": [0.02], "autoattack": {**CFG["autoattack"], "eps": []}, "square": {"n_queries": 0},
           "cw_l2": {**CFG["cw_l2"], "n_points": 64}}
    seen = []
    cw_l2 = attacks.cw_l2
    monkeypatch.setattr(evaluation.attacks, "cw_l2", lambda m, xs, ys, **kw: seen.append(len(xs)) or cw_l2(m, xs, ys, **kw))
    model, x, y, idx, transfer_adv = setting
    with attacks.frozen(model):
        full = evaluation.evaluate(model, "m", x, y, idx, {**cfg, "cascade": False}, transfer_adv)
        cascaded = evaluation.evaluate(model, "m", x, y, idx, {**cfg, "cascade": True}, transfer_adv)
    correct = full["attacked_clean_correct"]
    assert 0 < sum(correct) < 64  # the setting has points misclassified clean
    assert seen == [64, sum(correct)]
    assert full["n_evaluated"][evaluation.CW_L2] == {"min_l2": 64}
    assert cascaded["n_evaluated"][evaluation.CW_L2] == {"min_l2": sum(correct)}
    # A smaller batch sums in another order; where that flips the sign of a near-zero gradient, Adam takes a step of
    # up to lr in that pixel's tanh-space variable, which moves the pixel by at most lr / 2 per step. So per point
    # the norms agree to within lr (seen: < 1e-5), not to a tolerance fitted to one processor; a mean or median of
    # such norms then agrees to within lr too. Whether an example was found is an outcome: exactly the same.
    lr = cfg["cw_l2"]["lr"]
    for c, a, b in zip(correct, full["cw_l2"]["l2"], cascaded["cw_l2"]["l2"]):
        if not c:
            assert a == 0.0 == b
        elif a is None:
            assert b is None
        else:
            assert b == pytest.approx(a, abs=lr)
    summary_full, summary_cascaded = cw_summary(full), cw_summary(cascaded)
    assert summary_cascaded["cw_l2_success_rate"] == summary_full["cw_l2_success_rate"]
    assert summary_cascaded == pytest.approx(summary_full, abs=lr)


def test_stopwatch_times_each_part_without_changing_the_result(setting):
    cfg = {**CFG, "eps": [0.02], "autoattack": {**CFG["autoattack"], "eps": [0.02]}, "square": {"n_queries": 10},
           "cascade": True}
    model, x, y, idx, transfer_adv = setting
    watch = evaluation.Stopwatch()
    with attacks.frozen(model):
        plain = evaluation.evaluate(model, "m", x, y, idx, cfg, transfer_adv)
        timed = evaluation.evaluate(model, "m", x, y, idx, cfg, transfer_adv, stopwatch=watch)
    assert timed == plain
    assert set(watch.seconds) == {"clean", evaluation.FGSM_CE, evaluation.PGD_CE, evaluation.PGD_MARGIN,
                                  evaluation.TRANSFER, evaluation.AUTOATTACK, evaluation.SQUARE, "sensitivity"}
    assert all(s > 0 for s in watch.seconds.values())
