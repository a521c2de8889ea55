"""Method purification: the CAE, classifier∘purifier models, the purifier losses, and the evaluation protocols
(the paper's, crafted on the classifier alone, and the adaptive one, through the purifier)."""
import copy

import pytest
import torch
import torch.nn.functional as F
import yaml

from attack_fixtures import FMNIST_DIR, fashion_mnist, fashion_mnist_available, trained_fmnist_model
from conftest import ROOT
from robustkd import evaluation, params as params_mod
from robustkd.adversarial import InnerAttack
from robustkd.diagnostics import summarise
from robustkd.errors import ParamsError
from robustkd.losses import AdversarialReconstruction, PurifierDistillation, PurifierReconstruction
from robustkd.models import (ConvAutoencoder, IdentityPurifier, PurifiedClassifier, build_model, load_checkpoint,
                             model_spec, place, purified_spec, save_checkpoint, build_from_spec)
from robustkd.methods.purification import check_feature_matching
from robustkd.training import TrainConfig, make_optimizer

ATTACK = InnerAttack(eps=0.1, steps=2, step_size=0.05)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: 1 thread for small convs


def classifier(seed=0):
    torch.manual_seed(seed)
    return build_model("lenet", 1, 28, 10, [0.3], [0.3]).eval()


def cae(seed=0, width=8, depth=2, channels=1):
    torch.manual_seed(seed)
    return ConvAutoencoder(channels, width, depth)


def batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("channels,size,depth", [(1, 28, 1), (1, 28, 2), (1, 28, 3), (3, 32, 2), (3, 32, 3)])
def test_cae_round_trips_the_shape(channels, size, depth):
    model = cae(width=4, depth=depth, channels=channels)
    x = torch.rand(2, channels, size, size).contiguous(memory_format=torch.channels_last)
    out = model(x)
    assert out.shape == x.shape and 0.0 <= out.min() and out.max() <= 1.0
    code, sizes = model.encode(x)
    assert code.shape[1] == 4 * 2 ** (depth - 1) and code.shape[-1] == -(-size // 2 ** depth)
    assert torch.equal(model.decode(code, sizes), out)


def test_purified_classifier_trains_only_the_purifier():
    clf = classifier()
    before = copy.deepcopy(clf.state_dict())
    model = PurifiedClassifier(cae(), clf).train()
    assert model.purifier.training and not model.classifier.training  # the classifier stays in eval mode
    cfg = TrainConfig(epochs=1, batch_size=8, optimizer="adam", lr=1e-2, momentum=0.0, weight_decay=0.1,
                      schedule="constant", augment=False, seed=0)
    optimizer = make_optimizer(model, cfg)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model.purifier.parameters()}
    x, y = batch()
    loss, logits = AdversarialReconstruction(ATTACK)(model, x, y)
    loss.backward()
    optimizer.step()
    assert logits.shape == (8, 10)
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())  # weight decay did not touch it
    assert all(p.grad is not None for p in model.purifier.parameters())


def test_purified_checkpoint_round_trips(tmp_path):
    meta = {"shape": [1, 28, 28], "num_classes": 10, "mean": [0.3], "std": [0.3]}
    spec = purified_spec("cae", 8, 2, model_spec("lenet", meta))
    torch.manual_seed(0)
    model = place(build_from_spec(spec), "cpu").eval()  # the layout load_checkpoint gives
    save_checkpoint(tmp_path / "p.pt", model, spec, {"role": "student"})
    loaded, info = load_checkpoint(tmp_path / "p.pt")
    x, _ = batch()
    assert isinstance(loaded, PurifiedClassifier) and info == {"role": "student"} and spec["label"] == "cae+lenet"
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="unknown purifier architecture 'vae'"):
        purified_spec("vae", 8, 2, model_spec("lenet", meta))


def test_adaptive_gradient_goes_through_the_purifier():
    """The adaptive attack differentiates classifier∘purifier: its input gradient is non-zero, differs from the
    classifier-only gradient, and differs from treating the purifier as the identity on the way back (BPDA)."""
    clf, x, y = classifier(), *batch()
    model = PurifiedClassifier(cae(), clf).eval()
    grad_full, _ = evaluation.attacks.common.input_grad(model, x, y, F.cross_entropy)
    grad_clf, _ = evaluation.attacks.common.input_grad(clf, x, y, F.cross_entropy)
    purified = model.purifier(x).detach()
    grad_bpda, _ = evaluation.attacks.common.input_grad(clf, purified, y, F.cross_entropy)
    assert grad_full.abs().sum() > 0
    assert not torch.allclose(grad_full, grad_clf, atol=1e-6)
    assert not torch.allclose(grad_full, grad_bpda, atol=1e-6)


def test_reconstruction_losses_match_hand_values():
    clf, (x, y) = classifier(), batch()
    identity = PurifiedClassifier(IdentityPurifier(), clf)
    assert PurifierReconstruction(0.0)(identity, x, y)[0].item() == 0.0
    torch.manual_seed(5)
    noisy_loss = PurifierReconstruction(0.2)(identity, x, y)[0]
    torch.manual_seed(5)
    noise = torch.randn(x.shape)
    assert noisy_loss.item() == pytest.approx(F.mse_loss((x + 0.2 * noise).clamp(0, 1), x).item(), rel=1e-6)
    model = PurifiedClassifier(cae(), clf)
    assert PurifierReconstruction(0.0)(model, x, y)[0].item() == pytest.approx(F.mse_loss(model.purifier(x), x).item())
    # adversarial teacher: through the identity the loss is ||x_adv - x||² per pixel, inside the ε-ball
    adv_loss = AdversarialReconstruction(ATTACK)(identity, x, y)[0].item()
    assert 0 < adv_loss <= ATTACK.eps ** 2 + 1e-6
    assert AdversarialReconstruction(InnerAttack(0.0, 1, 0.1))(identity, x, y)[0].item() == 0.0


def distillation(normal, adversarial, **overrides):
    kw = dict(reconstruction_weight=0.0, output_weight=1.0, feature_weight=0.0, adversarial_teacher_weight=0.5,
              adversarial_fraction=0.5)
    kw.update(overrides)
    return PurifierDistillation(normal, adversarial, ATTACK, **kw)


def test_distillation_limits_and_teacher_weighting():
    clf, (x, y) = classifier(), batch()
    teacher = cae(seed=3)
    student = PurifiedClassifier(copy.deepcopy(teacher), clf)
    # a student equal to both teachers has nothing left to learn from them
    assert distillation(teacher, copy.deepcopy(teacher), feature_weight=1.0)(student, x, y)[0].item() == 0.0
    # a_adv = 1: the normal teacher has no say
    torch.manual_seed(0)
    only_adv = distillation(cae(seed=4), teacher, adversarial_teacher_weight=1.0)(student, x, y)[0].item()
    assert only_adv == 0.0
    torch.manual_seed(0)
    assert distillation(cae(seed=4), teacher, adversarial_teacher_weight=0.0)(student, x, y)[0].item() > 0
    # the reconstruction term alone is the MSE to the clean image, on the inputs the loss builds
    loss = distillation(teacher, teacher, reconstruction_weight=1.0, output_weight=0.0, adversarial_fraction=0.0)
    assert loss(student, x, y)[0].item() == pytest.approx(F.mse_loss(student.purifier(x), x).item(), rel=1e-6)


def test_distillation_inputs_mix_clean_and_classifier_adversarial():
    clf, (x, y) = classifier(), batch(8)
    loss = distillation(cae(), cae(), adversarial_fraction=0.25)
    x_in = loss.inputs(PurifiedClassifier(cae(), clf), x, y)
    assert torch.equal(x_in[2:], x[2:])                     # round(0.25 · 8) = 2 adversarial images
    delta = (x_in[:2] - x[:2]).abs().flatten(1).amax(1)
    assert (delta > 0).all() and (delta <= ATTACK.eps + 1e-6).all()


def test_feature_matching_needs_equal_codes():
    group = {"arch": "cae", "width": 8, "depth": 2, "feature_weight": 1.0}
    check_feature_matching(group, [cae(width=8), cae(width=8)], [1, 28, 28])
    with pytest.raises(ParamsError, match="purifier_student.feature_weight.*same width and depth"):
        check_feature_matching({**group, "width": 4}, [cae(width=8), cae(width=8)], [1, 28, 28])
    with pytest.raises(ParamsError, match="arch: cae"):
        check_feature_matching({**group, "arch": "identity"}, [cae(), cae()], [1, 28, 28])
    check_feature_matching({**group, "width": 4, "feature_weight": 0.0}, [cae(width=8)] * 2, [1, 28, 28])


def test_student_weights_all_zero_is_a_params_error():
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["purifier_student"].update(reconstruction_weight=0.0, output_weight=0.0, feature_weight=0.0)
    with pytest.raises(ParamsError, match="purifier_student"):
        params_mod.validate(p)


ATTACK_CFG = {
    "batch_size": 16, "seed": 0, "eps": [0.1, 0.3], "headline_eps": 0.1,
    "pgd": {"steps": 5, "step_size_ratio": 0.25, "restarts": 1}, "pgd_l2": {"eps": [1.0], "steps": 5, "restarts": 1},
    "cw_l2": {"n_points": 6, "steps": 10, "binary_search_steps": 2, "c_init": 0.1, "lr": 0.01},
    "autoattack": {"version": "custom", "attacks": ["apgd-ce"], "eps": [0.1], "apgd_restarts": 1},
    "square": {"n_queries": 10}, "transfer": {"steps": 5}, "sensitivity_points": 8,
}
THRESHOLDS = {"strong_vs_ce_margin": 0.1, "transfer_margin": 0.02, "fgsm_margin": 0.02, "monotonic_tolerance": 0.02,
              "large_eps_max_acc": 0.1}


@pytest.fixture(scope="module")
def evaluated():
    """An undefended model on real test points, its paper-protocol examples and its own evaluation."""
    if not fashion_mnist_available():
        pytest.skip(f"real Fashion-MNIST IDX files not found in {FMNIST_DIR}")
    clf = trained_fmnist_model(n_train=3000).eval()
    x, y = fashion_mnist("test", 24)
    idx = torch.arange(24)
    surrogate = trained_fmnist_model(n_train=1000, seed=1).eval()
    transfer_adv = evaluation.craft_transfer(surrogate, x, y, ATTACK_CFG)
    on_classifier = evaluation.craft_on_classifier(clf, x, y, ATTACK_CFG)
    result = evaluation.evaluate(clf, "teacher", x, y, idx, ATTACK_CFG, transfer_adv, on_classifier)
    return clf, x, y, idx, transfer_adv, on_classifier, result


def test_identity_purifier_gives_exactly_the_no_purifier_numbers(evaluated):
    clf, x, y, idx, transfer_adv, on_classifier, bare = evaluated
    wrapped = PurifiedClassifier(IdentityPurifier(), clf).eval()
    result = evaluation.evaluate(wrapped, "teacher", x, y, idx, ATTACK_CFG, transfer_adv, on_classifier)
    assert result == bare
    info = {"role": "teacher", "arch": "x", "method": "purification", "temperature": 1.0}
    a = summarise({**bare, "info": info, "eps": ATTACK_CFG["eps"], "headline_eps": 0.1}, THRESHOLDS)
    b = summarise({**result, "info": {**info, "purifier": {"arch": "identity"}}, "eps": ATTACK_CFG["eps"],
                   "headline_eps": 0.1}, THRESHOLDS)
    assert a.pop("purifier") is None and b.pop("purifier") == "identity" and a == b


def test_paper_protocol_on_the_bare_classifier_is_its_own_white_box_attack(evaluated):
    """Crafted on the classifier and evaluated on it, FGSM is the white-box FGSM, and PGD keeping its last
    iterate is never stronger than PGD keeping the first adversarial iterate from the same starts."""
    *_, result = evaluated
    linf = result["linf"]
    assert linf["classifier_fgsm"] == linf["fgsm_softmax_ce"]
    for key in ("eps_0p1", "eps_0p3"):
        assert all(a >= b for a, b in zip(linf["classifier_pgd_ce"][key], linf["pgd_softmax_ce"][key]))
    quality = result["paper_protocol"]["image_quality"]
    assert quality["clean"] == {"psnr_mean": None, "ssim_mean": 1.0}    # nothing purified: x itself
    assert 10 < quality["adversarial"]["psnr_mean"] < 40 and quality["adversarial"]["ssim_mean"] < 1.0


def test_purification_metrics_in_the_summary(evaluated):
    *_, result = evaluated
    info = {"role": "student", "arch": "cae+lenet", "method": "purification", "temperature": 1.0,
            "purifier": {"arch": "cae"}}
    m = summarise({**result, "info": info, "eps": ATTACK_CFG["eps"], "headline_eps": 0.1}, THRESHOLDS)
    linf = result["linf"]
    protocol = [min(v) for v in zip(*(linf[a]["eps_0p1"] for a in evaluation.PAPER_PROTOCOL))]
    white = [min(v) for v in zip(*(linf[a]["eps_0p1"] for a in evaluation.WHITE_BOX))]
    assert m["purifier"] == "cae"
    assert m["paper_protocol_headline"] == round(sum(protocol) / len(protocol), 4)
    assert m["adaptive_headline"] == round(sum(white) / len(white), 4)
    assert m["worst_case_headline"] <= min(m["paper_protocol_headline"], m["adaptive_headline"])
    assert m["paper_protocol_cw_acc"] == round(sum(result["paper_protocol"]["cw_l2"]) / 6, 4)
    plain = summarise({**result, "paper_protocol": None, "info": {**info, "purifier": None},
                       "eps": ATTACK_CFG["eps"], "headline_eps": 0.1}, THRESHOLDS)
    assert plain["paper_protocol_headline"] is None and plain["psnr_adversarial"] is None
