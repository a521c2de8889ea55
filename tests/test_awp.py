"""Adversarial weight perturbation (robustkd.awp) in the training loop: the paper's weight-perturbation step, the
exact restore before the optimiser step, the warm-up, and `enabled: false` as exactly the training without AWP."""
import copy

import pytest
import torch
import torch.nn.functional as F

from robustkd import awp as awp_module
from robustkd import roles, training
from robustkd.adversarial import InnerAttack, maximise
from robustkd.awp import AWPConfig, WeightPerturbation, perturbed_names
from robustkd.errors import ProjectError
from robustkd.losses import LTD, PGDAT, TRADES, RSLAD, TemperatureCE, _trades_adversarial, kl
from robustkd.models import build_model
from robustkd.params import validate
from robustkd.training import TrainConfig, train
from test_training import toy_data

ATTACK = InnerAttack(eps=0.1, steps=2, step_size=0.05)
CFG = TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=2e-3, momentum=0.9, weight_decay=0.0,
                  schedule="cosine", augment=False, seed=0)


def model(arch="lenet", seed=0):
    torch.manual_seed(seed)
    return build_model(arch, 1, 28, 10, [0.2], [0.3], width=8 if arch == "resnet_small" else "mnist")


def batch(n=32):
    x, y = toy_data(n, 3)
    return training.to_float(x), y


def weights(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("loss", [PGDAT(ATTACK), TRADES(ATTACK, 6.0)], ids=["pgd_at", "trades"])
def test_perturbation_is_the_papers_step(loss):
    """Per weight tensor ‖v‖ = γ·‖w‖, along the reference code's proxy step (one SGD step of the negated objective,
    rescaled): the same direction; and the objective rises at w + v."""
    net, (x, y) = model(), batch()
    net.train()
    gamma = 0.01
    torch.manual_seed(1)
    prepared = loss.prepare(net, x, y)
    objective = lambda m: loss.objective(m, x, y, prepared)  # noqa: E731
    v = WeightPerturbation(net, AWPConfig(gamma)).perturbation(objective)

    names = perturbed_names(net)
    params = dict(net.named_parameters())
    assert names and all(params[n].dim() > 1 and "weight" in n for n in names)
    assert not any(n.endswith("bias") for n in names)  # biases (1-D) are not perturbed, as the reference code
    assert set(names) == {n for n, p in params.items() if p.dim() > 1}  # every conv / linear weight is
    # The reference AWP code: a proxy copy, one SGD step on -objective, diff = proxy - w rescaled to ‖w‖.
    proxy = copy.deepcopy(net)
    proxy.train()
    optimizer = torch.optim.SGD(proxy.parameters(), lr=0.1)
    (-objective(proxy)[0]).backward()
    optimizer.step()
    reference = dict(proxy.named_parameters())
    for name, v_l in zip(names, v):
        w = params[name].detach()
        assert float(v_l.norm() / w.norm()) == pytest.approx(gamma, rel=1e-5)  # the layer's budget, exactly used
        diff = (reference[name].detach() - w).flatten()
        cosine = float(F.cosine_similarity(v_l.flatten(), diff, dim=0))
        assert cosine > 0.9999, f"{name}: not the proxy's ascent direction (cosine {cosine})"
    # the objective is higher at w + v than at w (and than at w - v): an ascent step
    at = {}
    for sign in (1, 0, -1):
        moved = copy.deepcopy(net)
        with torch.no_grad():
            for name, v_l in zip(names, v):
                dict(moved.named_parameters())[name].add_(sign * v_l)
        at[sign] = objective(moved)[0].item()
    assert at[1] > at[0] > at[-1]


class Spy(PGDAT):
    """PGD-AT that records, at each call of its objective, which module it ran on and that module's weights."""

    def __init__(self, attack):
        super().__init__(attack)
        self.calls = []

    def objective(self, model, x, y, x_adv):
        self.calls.append((model, weights(model)))
        return super().objective(model, x, y, x_adv)


def test_loss_is_taken_at_the_perturbed_weights_then_restored_exactly():
    """Each step: the proxy's objective at w, the training loss at w + v (‖v_l‖ = γ·‖w_l‖ on the weights, biases
    untouched), then w again, bit for bit: with lr = 0 the optimiser changes nothing and the run ends where it began."""
    net = model()
    start = weights(net)
    spy = Spy(ATTACK)
    cfg = TrainConfig(**{**CFG.__dict__, "lr": 0.0})
    result = train(net, spy, toy_data(96, 0), toy_data(40, 1), cfg, "awp", awp=AWPConfig(0.01))
    assert same(weights(result.model), start)  # every perturbation was undone exactly, step after step
    assert len(spy.calls) == 2 * 3  # 3 steps: the proxy's objective, then the training loss
    names = set(perturbed_names(net))
    for (proxy, at_proxy), (trained, at_loss) in zip(spy.calls[::2], spy.calls[1::2]):
        assert proxy is not net and trained is net
        assert same(at_proxy, start)  # the proxy starts from the model's weights
        for k, w in start.items():
            if k in names:
                assert float((at_loss[k] - w).norm() / w.norm()) == pytest.approx(0.01, rel=1e-4)
            else:
                assert torch.equal(at_loss[k], w)  # biases and buffers are not perturbed


def test_the_optimiser_steps_with_the_gradient_at_the_perturbed_weights():
    """AWP changes the trained weights (γ > 0), and γ = 0 runs the whole AWP path with a zero perturbation: the
    same weights, bit for bit, as no AWP (no random draw, no buffer touched: batch norm's too)."""
    runs = {}
    for name, config in (("off", None), ("gamma0", AWPConfig(0.0)), ("on", AWPConfig(0.02))):
        torch.manual_seed(5)  # the attack's random starts
        runs[name] = weights(train(model("resnet_small"), TRADES(ATTACK, 6.0), toy_data(96, 0), toy_data(40, 1),
                                   CFG, name, awp=config).model)
    assert any("running_mean" in k for k in runs["off"])  # the model has batch norm
    assert same(runs["gamma0"], runs["off"])
    assert not same(runs["on"], runs["off"])


def test_warmup_turns_it_off():
    """No AWP in the first `warmup_epochs` epochs: the weights after them are those of a run without AWP; then on."""
    def run(epochs, config):
        torch.manual_seed(5)
        spy = Spy(ATTACK)
        cfg = TrainConfig(**{**CFG.__dict__, "epochs": epochs, "schedule": "constant"})
        result = train(model(), spy, toy_data(96, 0), toy_data(40, 1), cfg, "w", awp=config)
        return weights(result.model), len(spy.calls)

    off, calls_off = run(1, None)
    warm, calls_warm = run(1, AWPConfig(0.01, warmup_epochs=1))
    assert same(warm, off) and calls_warm == calls_off == 3  # one objective call per step: no proxy
    _, calls = run(2, AWPConfig(0.01, warmup_epochs=1))
    assert calls == 3 + 2 * 3  # epoch 2: the proxy and the loss at each of its 3 steps
    assert AWPConfig(0.01, 1).active(1) and not AWPConfig(0.01, 1).active(0) and AWPConfig(0.01).active(0)


# The three losses as they were written before AWP split them into prepare + objective.
def legacy_pgd_at(model, x, y):
    x_adv = maximise(model, x, lambda z: F.cross_entropy(z, y), ATTACK)
    logits = model(x_adv)
    return F.cross_entropy(logits, y), logits


def legacy_trades(model, x, y):
    x_adv = _trades_adversarial(model, x, ATTACK)
    logits = model(x)
    return F.cross_entropy(logits, y) + 6.0 * kl(logits, model(x_adv)), logits


def test_disabled_is_exactly_the_training_without_awp():
    """`awp.enabled: false` gives no AWP config, and the split losses train the same weights, bit for bit, as the
    losses written in one piece (the code before AWP), in the same loop."""
    assert AWPConfig.from_params({"enabled": False, "gamma": 0.005, "warmup_epochs": 0}) is None
    assert AWPConfig.from_params(None) is None
    for legacy, split in ((legacy_pgd_at, PGDAT(ATTACK)), (legacy_trades, TRADES(ATTACK, 6.0))):
        got = []
        for loss in (legacy, split):
            torch.manual_seed(5)
            got.append(weights(train(model(), loss, toy_data(96, 0), toy_data(40, 1), CFG, "d", awp=None).model))
        assert same(*got)
    teacher = model(seed=9).eval()
    ltd = LTD(teacher, ATTACK, 0.5, 6.0)
    torch.manual_seed(5)
    x, y = batch()
    whole = ltd(model(), x, y)[0]
    torch.manual_seed(5)
    soft = teacher(x).detach() / 0.5
    net = model()
    x_adv = _trades_adversarial(net, x, ATTACK)
    logits = net(x)
    assert torch.equal(whole, kl(soft, logits) + 6.0 * kl(logits, net(x_adv)))  # LTD: the paper's loss, unchanged


def test_awp_applies_to_pgd_at_trades_ltd_only():
    teacher = model(seed=9)
    assert all(awp_module.supports(loss) for loss in (PGDAT(ATTACK), TRADES(ATTACK, 1.0), LTD(teacher, ATTACK, 0.5, 1.0)))
    assert not any(awp_module.supports(loss) for loss in (TemperatureCE(1.0), RSLAD(teacher, ATTACK, 0.8)))
    with pytest.raises(ProjectError, match="AWP .* needs an adversarial-training loss"):
        train(model(), TemperatureCE(1.0), toy_data(64, 0), toy_data(20, 1), CFG, "x", awp=AWPConfig(0.01))
    run = roles.TrainingRun({}, (), (), False, None, {"enabled": True, "gamma": 0.005, "warmup_epochs": 2})
    spec = lambda loss: roles.RoleSpec("student", {}, 0, loss, None, None, {})  # noqa: E731
    assert roles.awp_for(spec(PGDAT(ATTACK)), run) == AWPConfig(0.005, 2)
    assert AWPConfig(0.005, 2).record() == {"enabled": True, "gamma": 0.005, "warmup_epochs": 2}
    assert roles.awp_for(spec(TemperatureCE(1.0)), run) is None
    assert roles.awp_for(spec(PGDAT(ATTACK)), roles.TrainingRun({}, (), (), False)) is None  # the stage reads no awp


def test_under_bf16_autocast_the_perturbation_is_fp32_and_of_size_gamma():
    net, (x, y) = model(), batch()
    loss = TRADES(ATTACK, 6.0)
    perturbation = WeightPerturbation(net, AWPConfig(0.01))
    start = weights(net)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value, _ = perturbation.perturb(loss, net, x, y)
    assert value.dtype == torch.float32  # the KL / CE are autocast's fp32 ops; the forward ran in bf16
    params = dict(net.named_parameters())
    for name in perturbed_names(net):
        w = start[name]
        assert params[name].dtype == torch.float32
        assert float((params[name].detach() - w).norm() / w.norm()) == pytest.approx(0.01, rel=1e-4)
    value.backward()
    perturbation.restore()
    assert same(weights(net), start)


def test_bad_awp_params_name_the_key():
    from robustkd.params import load

    params = load()
    assert params["awp"] == {"enabled": False, "gamma": 0.005, "warmup_epochs": 0}
    for key, value, message in (("gamma", 0.0, "`awp.gamma` = 0.0: out of range"),
                                ("warmup_epochs", -1, "`awp.warmup_epochs` = -1: out of range"),
                                ("enabled", "yes", "`awp.enabled` = 'yes': must be true or false")):
        bad = copy.deepcopy(params)
        bad["awp"][key] = value
        with pytest.raises(Exception, match=message.replace("(", r"\(").replace(".", r"\.")):
            validate(bad)
    bad = copy.deepcopy(params)
    bad["awp"]["gama"] = bad["awp"].pop("gamma")
    with pytest.raises(Exception, match="did you mean `awp.gamma`"):
        validate(bad)

