"""The adversarial-training and robust-distillation losses (PGD-AT, TRADES, ARD, RSLAD, LTD), their inner
attack, and the method registry: hand-computed values on small tensors, and the limits that pin each formula."""
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from robustkd import params as params_mod
from robustkd.adversarial import InnerAttack, maximise
from robustkd.losses import ARD, LTD, PGDAT, RSLAD, TRADES, kd_kl, kl
from robustkd.methods.base import TEACHER_TRAININGS, loss_params
from robustkd.methods.one_loss import ONE_LOSS_METHODS
from robustkd.methods.registry import METHODS
from robustkd.teacher_config import teacher_training
from robustkd.models import build_model
from conftest import ROOT

NO_ATTACK = InnerAttack(eps=0.0, steps=1, step_size=0.1)  # ε = 0: x_adv == x exactly


def small_model(seed=0, temperature=1.0):
    torch.manual_seed(seed)
    return build_model("lenet", 1, 28, 10, [0.3], [0.3], temperature=temperature)


def batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_kl_matches_hand_computation():
    p = torch.tensor([[0.0, 0.0]])              # softmax (1/2, 1/2)
    q = torch.tensor([[0.0, math.log(3.0)]])    # softmax (1/4, 3/4)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl(p, q).item() == pytest.approx(expected, rel=1e-6)
    assert kl(q, q).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_kl_with_temperature_matches_hand_computation():
    teacher = torch.tensor([[0.0, 2 * math.log(3.0)]])  # at T = 2: softmax (1/4, 3/4)
    student = torch.tensor([[0.0, 0.0]])                 # (1/2, 1/2) at any T
    expected = 4 * (0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5))
    assert kd_kl(student, teacher, 2.0).item() == pytest.approx(expected, rel=1e-6)


def test_trades_with_beta_zero_is_cross_entropy():
    model, (x, y) = small_model(), batch()
    loss, logits = TRADES(InnerAttack(0.1, 3, 0.05, random_start="normal"), beta=0.0)(model, x, y)
    assert torch.equal(loss, F.cross_entropy(model(x), y))
    loss6, _ = TRADES(InnerAttack(0.1, 3, 0.05, random_start="normal"), beta=6.0)(model, x, y)
    assert loss6.item() > loss.item()  # the KL term is >= 0 and > 0 once the attack moved x


def test_pgd_at_trains_on_worse_points_than_clean():
    model, (x, y) = small_model(), batch()
    clean = F.cross_entropy(model(x), y).item()
    loss, _ = PGDAT(InnerAttack(0.1, 5, 0.03))(model, x, y)
    assert loss.item() > clean


def test_ard_reduces_to_kd_and_ce_mix_without_attack():
    student, teacher, (x, y) = small_model(0), small_model(1), batch()
    kd = kd_kl(student(x), teacher(x), 30.0)
    loss, _ = ARD(teacher, NO_ATTACK, temperature=30.0, alpha=1.0)(student, x, y)
    assert loss.item() == pytest.approx(kd.item(), rel=1e-5)
    mixed, _ = ARD(teacher, NO_ATTACK, temperature=30.0, alpha=0.25)(student, x, y)
    expected = 0.25 * kd + 0.75 * F.cross_entropy(student(x), y)
    assert mixed.item() == pytest.approx(expected.item(), rel=1e-5)


def test_rslad_without_attack_is_kl_to_teacher():
    student, teacher, (x, y) = small_model(0), small_model(1), batch()
    loss, _ = RSLAD(teacher, NO_ATTACK, adv_weight=5 / 6)(student, x, y)
    assert loss.item() == pytest.approx(kl(teacher(x), student(x)).item(), rel=1e-5)


def test_ltd_uses_low_temperature_soft_labels_and_the_students_own_temperature():
    teacher, (x, y) = small_model(1), batch()
    student = small_model(0, temperature=2.0)
    raw = small_model(0)  # same weights, temperature 1
    assert torch.allclose(student(x), raw(x) / 2.0)
    loss, _ = LTD(teacher, NO_ATTACK, teacher_temperature=0.5, beta=6.0)(student, x, y)
    expected = kl(teacher(x) / 0.5, raw(x) / 2.0)  # no attack: the TRADES term is KL(p ‖ p) = 0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_maximise_stays_in_the_ball_raises_the_objective_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = build_model("resnet18", 1, 28, 10, [0.3], [0.3])  # has batch norm
    model.train()
    x, y = batch(4)
    running = model.features.bn1.running_mean.clone()
    objective = lambda z: F.cross_entropy(z, y)  # noqa: E731
    x_adv = maximise(model, x, objective, InnerAttack(0.1, 3, 0.05, mode="eval"))
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(model.features.bn1.running_mean, running)  # eval mode: statistics untouched
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert objective(model(x_adv)) > objective(model(x))
    model.train()
    maximise(model, x, objective, InnerAttack(0.1, 1, 0.05, mode="train"))
    assert not torch.equal(model.features.bn1.running_mean, running)  # train mode: batch statistics


def test_maximise_is_reproducible_from_the_global_seed():
    model, (x, y) = small_model(), batch()
    attack = InnerAttack(0.1, 2, 0.05)
    torch.manual_seed(7)
    a = maximise(model, x, lambda z: F.cross_entropy(z, y), attack)
    torch.manual_seed(7)
    b = maximise(model, x, lambda z: F.cross_entropy(z, y), attack)
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [dict(eps=1.5), dict(steps=-1), dict(step_size=0.0), dict(mode="inference")])
def test_inner_attack_rejects_bad_settings(bad):
    settings = dict(eps=0.1, steps=3, step_size=0.05, mode="eval") | bad
    with pytest.raises(ValueError, match=next(iter(bad)) if "step_size" not in bad else "step size"):
        InnerAttack(**settings)


def default_params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_every_method_in_the_schema_is_registered():
    assert set(params_mod.METHOD_NAMES) == set(METHODS)
    assert set(params_mod.TEACHER_TRAININGS) == {"auto", *TEACHER_TRAININGS}


def test_training_attack_epsilon_defaults_to_the_headline_epsilon():
    p = default_params()
    p["train_attack"]["eps"] = None
    attack = InnerAttack.from_params(p)
    assert attack.eps == p["attack"]["headline_eps"]
    assert attack.step_size == pytest.approx(p["train_attack"]["step_size_ratio"] * attack.eps)
    p["train_attack"]["eps"] = 0.2
    assert loss_params(p)["train_attack"]["eps"] == 0.2


@pytest.mark.parametrize("method", sorted(ONE_LOSS_METHODS))
def test_each_method_builds_its_losses(method):
    """Every single-teacher classifier method (purification's losses: tests/test_purification.py; darht's, with K
    teachers and a feature-map student: tests/test_darht.py)."""
    p = default_params()
    p["method"] = method
    params_mod.validate(p)
    m = ONE_LOSS_METHODS[method]
    teacher = small_model(1)
    loss_fn = m.student_loss(p, p["student"], teacher if m.distills else None)
    student = small_model(0, temperature=m.output_temperature(p))
    x, y = batch(4)
    loss, logits = loss_fn(student, x, y)
    assert loss.dim() == 0 and math.isfinite(loss.item()) and logits.shape == (4, 10)
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(q.grad is None for q in teacher.parameters())  # the teacher is frozen
    assert callable(TEACHER_TRAININGS[teacher_training(p)])


def test_teacher_training_override_and_robust_teachers_by_default():
    p = default_params()
    for method in ("ard", "rslad", "ltd"):
        p["method"] = method
        assert teacher_training(p) in ("pgd_at", "trades")
    p["teacher"]["training"] = "trades"
    training = teacher_training(p)
    assert training == "trades" and isinstance(TEACHER_TRAININGS[training](p), TRADES)
