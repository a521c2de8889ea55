"""`train_attack.bf16`: training-time attacks craft in the training step's precision (bf16 autocast where
`engine.bf16` is on and the device has native bf16), or in fp32 when `train_attack.bf16` is false; evaluation
attacks always run in fp32, whatever context they are called from.

Native bf16 is faked by patching `training.native_bf16` (as tests/test_engine.py does): CPU autocast computes in bf16
on any x86 processor, only more slowly without AVX512-BF16, so these tests do not depend on the machine. Forward hooks
on every convolution and linear layer record the dtype each one computed in, tagged with whether the call came from the
attack (crafting) or the training loss.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustkd import attacks, evaluation, losses, training
from robustkd.adversarial import InnerAttack, crafting_precision, maximise
from robustkd.losses import (ARD, DARHT, LTD, PGDAT, RSLAD, TRADES, AdversarialReconstruction,
                             PurifierDistillation)
from robustkd.models import ConvAutoencoder, PurifiedClassifier, build_model
from robustkd.training import Engine, TrainConfig, train
from test_training import fresh_model, toy_data

CFG = TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=2e-3, momentum=0.9, weight_decay=0.0,
                  schedule="cosine", augment=False, seed=0)
BF16, FP32 = torch.bfloat16, torch.float32

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: 1 thread for small convs


class Probe:
    """Records the dtype of every Conv2d / Linear output of the hooked models, per phase ("attack" while a training
    attack crafts, "train" otherwise)."""

    def __init__(self, monkeypatch, *models: nn.Module):
        self.phase, self.seen = "train", {"attack": set(), "train": set()}
        for model in models:
            for module in model.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    module.register_forward_hook(self._hook)
        # The two crafting entry points the losses call: maximise, and TRADES' inner step (its clean forward too).
        for name in ("maximise", "_trades_adversarial"):
            monkeypatch.setattr(losses, name, self._tagged(getattr(losses, name)))

    def _hook(self, module, inputs, output):
        self.seen[self.phase].add(output.dtype)

    def _tagged(self, fn):
        def run(*args, **kwargs):
            before, self.phase = self.phase, "attack"
            try:
                return fn(*args, **kwargs)
            finally:
                self.phase = before
        return run


def lenet(seed):
    torch.manual_seed(seed)
    return build_model("lenet", 1, 28, 10, [0.2], [0.3])


def purified(seed=0):
    torch.manual_seed(seed)
    return PurifiedClassifier(ConvAutoencoder(1, 4, 2), lenet(seed + 1))


# Every loss with a training-time attack: (name, build(attack) -> (student model, loss, models to hook)).
def _pgd_at(a):
    m = fresh_model()
    return m, PGDAT(a), [m]


def _trades(a):
    m = fresh_model()
    return m, TRADES(a, 6.0), [m]


def _ard(a):
    m = fresh_model()
    return m, ARD(lenet(5), a, 30.0, 0.9), [m]


def _rslad(a):
    m = fresh_model()
    return m, RSLAD(lenet(5), a, 5 / 6), [m]


def _ltd(a):
    m = fresh_model()
    return m, LTD(lenet(5), a, 0.5, 6.0), [m]


def _darht(a):
    torch.manual_seed(0)
    m = build_model("lenet", 1, 28, 10, [0.2], [0.3], head_teachers=2)
    return m, DARHT([lenet(5), lenet(6)], a, adversarial_prob=1.0, ce_kd_from=0.0, kd_only_from=1.0), [m]


def _purifier_adversarial(a):
    m = purified()
    return m, AdversarialReconstruction(a), [m.classifier]


def _purifier_student(a):
    m = purified()
    normal, adversarial = ConvAutoencoder(1, 4, 2), ConvAutoencoder(1, 4, 2)
    return m, PurifierDistillation(normal, adversarial, a, 1.0, 1.0, 0.0, 0.5, 0.5), [m.classifier]


LOSSES = {"pgd_at": _pgd_at, "trades": _trades, "ard": _ard, "rslad": _rslad, "ltd": _ltd, "darht": _darht,
          "purifier_adversarial": _purifier_adversarial, "purifier_student": _purifier_student}


def trained_dtypes(monkeypatch, build, *, native: bool, engine_bf16: bool, attack_bf16: bool,
                   random_start: str = "uniform") -> dict[str, set]:
    monkeypatch.setattr(training, "native_bf16", lambda device: native)
    model, loss, hooked = build(InnerAttack(eps=0.1, steps=2, step_size=0.05, random_start=random_start,
                                            bf16=attack_bf16))
    probe = Probe(monkeypatch, *hooked)
    train(model, loss, toy_data(64, 0), toy_data(20, 1), CFG, "p", engine=Engine(bf16=engine_bf16))
    return probe.seen


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_training_attack_crafts_in_bf16_under_bf16_training_and_in_fp32_when_asked(monkeypatch, name):
    seen = trained_dtypes(monkeypatch, LOSSES[name], native=True, engine_bf16=True, attack_bf16=True)
    assert seen["attack"] == {BF16}, name  # every layer of every crafting forward: bf16
    fp32 = trained_dtypes(monkeypatch, LOSSES[name], native=True, engine_bf16=True, attack_bf16=False)
    assert fp32["attack"] == {FP32}, name  # train_attack.bf16: false
    if name not in ("purifier_adversarial", "purifier_student"):  # their classifier never trains
        # the training loss ran in bf16 either way (validation, also in this phase, is fp32)
        assert BF16 in seen["train"] and BF16 in fp32["train"], name


@pytest.mark.parametrize("native,engine_bf16", [(False, True), (True, False), (False, False)])
def test_training_attacks_stay_fp32_when_training_is_fp32(monkeypatch, native, engine_bf16):
    """train_attack.bf16 never turns autocast on by itself: without native bf16, or with engine.bf16 false, crafting
    is fp32 (the training loop's one decision)."""
    for name in ("pgd_at", "trades"):
        seen = trained_dtypes(monkeypatch, LOSSES[name], native=native, engine_bf16=engine_bf16, attack_bf16=True)
        assert seen == {"attack": {FP32}, "train": {FP32}}, name


def test_crafting_precision_follows_the_surrounding_autocast_only_when_asked():
    on, off = InnerAttack(0.1, 1, 0.05), InnerAttack(0.1, 1, 0.05, bf16=False)
    with torch.autocast("cpu", dtype=BF16):
        with crafting_precision(on, "cpu"):
            assert torch.is_autocast_enabled("cpu")
        with crafting_precision(off, "cpu"):
            assert not torch.is_autocast_enabled("cpu")
    with crafting_precision(on, "cpu"):  # no autocast around: none inside
        assert not torch.is_autocast_enabled("cpu")


def edge_batch(n=16):
    """Images with many pixels at exactly 0 and 1 (where the [0, 1] clamp binds) and the rest in between."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, 1, 28, 28, generator=g)
    x[:, :, :8] = 0.0
    x[:, :, -8:] = 1.0
    return x.contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("random_start", ["uniform", "normal"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_bf16_crafting_stays_in_the_ball_and_the_box_in_fp32(random_start, mode):
    model = lenet(0)
    x, y = edge_batch()
    eps = 0.1
    seen: list = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
            break
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=BF16):  # as the training loop calls the loss
        x_adv = maximise(model, x, lambda z: F.cross_entropy(z, y),
                         InnerAttack(eps, 5, eps / 4, random_start=random_start, mode=mode))
    assert set(seen) == {BF16}  # the model ran in bf16 ...
    assert x_adv.dtype == FP32 and not x_adv.requires_grad  # ... x' is fp32
    assert x_adv.is_contiguous(memory_format=torch.channels_last)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert ((x_adv - x).abs() <= eps + 1e-6).all()
    # The signed steps moved the inner pixels (sign of a zero gradient would leave them at the start) and reached
    # the ball's surface on many of them: 5 steps of ε/4 from inside.
    inner = x[:, :, 8:-8]
    moved = (x_adv[:, :, 8:-8] - inner).abs()
    assert (moved > 0).float().mean() > 0.5
    assert ((moved - eps).abs() <= 1e-6).float().mean() > 0.2
    # Pixels at 0 or 1 stay on their side of the box.
    assert (x_adv[:, :, :8] >= 0).all() and (x_adv[:, :, :8] <= eps + 1e-6).all()
    assert (x_adv[:, :, -8:] <= 1).all() and (x_adv[:, :, -8:] >= 1 - eps - 1e-6).all()


def test_bf16_crafting_raises_the_loss_like_fp32_crafting():
    """Per point: the bf16-crafted examples raise the fp32 loss of (almost) every point above its clean value, as the
    fp32-crafted ones do; the sign of a bf16 gradient is a working ascent direction."""
    model = lenet(0).eval()
    x, y = edge_batch(32)
    results = {}
    for bf16 in (True, False):
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=BF16):
            x_adv = maximise(model, x, lambda z: F.cross_entropy(z, y), InnerAttack(0.1, 3, 0.05, bf16=bf16))
        with torch.no_grad():
            results[bf16] = F.cross_entropy(model(x_adv), y, reduction="none") > F.cross_entropy(model(x), y,
                                                                                                  reduction="none")
    assert results[False].all()
    assert results[True].all()


def tiny_hooked_model(seen: list):
    model = lenet(0).eval()

    def hook(module, inputs, output):
        seen.append((output.dtype, torch.is_autocast_enabled("cpu")))
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(hook)
    return model


ATTACKS = {
    "pgd": lambda m, x, y: attacks.pgd(m, x, y, eps=0.1, steps=2, step_size=0.05, generator=torch.Generator()),
    "fgsm": lambda m, x, y: attacks.fgsm(m, x, y, eps=0.1),
    "cw_l2": lambda m, x, y: attacks.cw_l2(m, x, y, steps=2, binary_search_steps=1),
    "square": lambda m, x, y: attacks.square(m, x, y, eps=0.1, n_queries=3),
    "transfer": lambda m, x, y: attacks.transfer(m, x, y, eps=0.1, steps=2, step_size=0.05,
                                                 generator=torch.Generator()),
    "autoattack": lambda m, x, y: attacks.autoattack(m, x, y, eps=0.1, version="custom", attacks=["apgd-ce"],
                                                     apgd_restarts=1),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_evaluation_attacks_run_in_fp32_even_under_a_callers_autocast(name):
    if name == "autoattack":
        pytest.importorskip("pyautoattack")
    seen: list = []
    model = tiny_hooked_model(seen)
    x, y = edge_batch(4)
    with attacks.frozen(model), torch.autocast("cpu", dtype=BF16):
        out = ATTACKS[name](model, x, y)
        assert torch.is_autocast_enabled("cpu")  # the caller's context is back afterwards
    x_adv = out[0] if isinstance(out, tuple) else out
    assert seen and set(seen) == {(FP32, False)}  # every layer, every call: fp32, autocast off
    assert x_adv.dtype == FP32


def test_every_public_attack_and_the_suite_are_fp32():
    """Each attack the package exports (and evaluation.evaluate, the attack stage's suite) carries attacks.fp32."""
    public = [attacks.pgd, attacks.fgsm, attacks.cw_l2, attacks.square, attacks.transfer, attacks.autoattack,
              evaluation.evaluate]
    assert all(getattr(fn, "__wrapped__", None) is not None and fn.__code__ is attacks.fp32(len).__code__
               for fn in public)


def default_params():
    import yaml
    from conftest import ROOT
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("change,expected", [
    ({"bf16": "yes"}, "`train_attack.bf16`"),
    ({"bf17": True}, "`train_attack.bf17`: unknown key; did you mean `train_attack.bf16`?"),
])
def test_bad_train_attack_bf16_names_the_key(change, expected):
    from robustkd.errors import ParamsError
    from robustkd.params import validate
    p = default_params()
    if "bf17" in change:
        del p["train_attack"]["bf16"]
    p["train_attack"].update(change)
    with pytest.raises(ParamsError) as err:
        validate(p)
    assert expected in str(err.value)


def test_train_attack_bf16_is_read_recorded_and_part_of_the_run_identity():
    from robustkd.methods.base import loss_params
    p = default_params()
    assert p["train_attack"]["bf16"] is True  # the default: craft in the training step's precision
    assert InnerAttack.from_params(p).bf16 is True
    on = loss_params(p)
    p["train_attack"]["bf16"] = False
    assert InnerAttack.from_params(p).bf16 is False
    assert loss_params(p)["train_attack"]["bf16"] is False and on["train_attack"]["bf16"] is True
    with pytest.raises(ValueError, match="train_attack.bf16"):
        InnerAttack(0.1, 1, 0.05, bf16="false")
