"""Method darht (Deng et al. 2024): the feature-map head, the new teacher architectures, the DARHT loss (weights,
schedule, adversarial batches, reduction to plain KD), its params, the teacher-stage marker and the
transferability matrix."""
import copy
import itertools
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml
from fractions import Fraction
from torch import nn

from conftest import ROOT
from robustkd import losses, params as params_mod
from robustkd.adversarial import InnerAttack
from robustkd.diagnostics import masking_reasons, summarise, transferability
from robustkd.errors import ParamsError
from robustkd.losses import DARHT, Distillation, kd_kl
from robustkd.method_names import TEACHER_TRAINING
from robustkd.methods import darht_pool, darht_select
from robustkd.methods.darht import Darht, student_loss
from robustkd.methods.registry import METHODS
from robustkd.models import (Classifier, FeatureMapHead, build_model, load_checkpoint, model_spec, place,
                             save_checkpoint)
from robustkd.training import TrainConfig, train

NO_ATTACK = InnerAttack(eps=0.0, steps=1, step_size=0.1)
META = {"shape": [1, 28, 28], "num_classes": 10, "mean": [0.3], "std": [0.3]}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: 1 thread for small convs


def student(k, seed=0, arch="lenet", channels=1, size=28):
    torch.manual_seed(seed)
    return build_model(arch, channels, size, 10, [0.3] * channels, [0.3] * channels, head_teachers=k)


def teacher(seed):
    torch.manual_seed(seed)
    return build_model("lenet", 1, 28, 10, [0.3], [0.3]).eval()


class FixedLogits(nn.Module):
    """A 'teacher' that returns given logits whatever the input: its CE on a batch is known exactly."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.logits[: len(x)]


def batch(n=8, seed=1, channels=1, size=28):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


# --- the feature-map head ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("arch,channels,size", [("lenet", 1, 28), ("papernot_cnn", 1, 28), ("papernot_cnn", 3, 32)])
def test_feature_map_head_has_c_times_k_then_c(k, arch, channels, size):
    model = student(k, arch=arch, channels=channels, size=size)
    head = model.head
    assert isinstance(head, FeatureMapHead)
    assert (head.linear1.in_features, head.linear1.out_features) == (model.feature_dim, 10 * k)
    assert (head.linear2.in_features, head.linear2.out_features) == (10 * k, 10)
    x, _ = batch(5, channels=channels, size=size)
    logits, fmap = model.forward_with_map(x)
    assert logits.shape == (5, 10) and fmap.shape == (5, k, 10)
    assert torch.equal(model(x), logits)  # to every attack it is a plain classifier
    features = model.features(model.normalize(x))
    assert torch.allclose(fmap, head.linear1(features).view(5, k, 10))           # slice i = values i*C .. i*C + C-1
    assert torch.allclose(logits, head.linear2(fmap.reshape(5, 10 * k)), atol=1e-6)


def test_plain_classifier_has_no_feature_map():
    with pytest.raises(TypeError, match="feature-map head"):
        build_model("lenet", 1, 28, 10, [0.3], [0.3]).forward_with_map(batch(2)[0])
    with pytest.raises(ValueError, match="at least 1 teacher"):
        FeatureMapHead(8, 10, 0)


def test_feature_map_student_checkpoint_round_trip(tmp_path):
    spec = model_spec("lenet", META, head_teachers=3)
    torch.manual_seed(0)
    model = build_model(**spec)
    save_checkpoint(tmp_path / "s.pt", model, spec, {"darht_teachers": ["a", "b", "c"]})
    loaded, info = load_checkpoint(tmp_path / "s.pt")
    x, _ = batch(3)
    assert isinstance(loaded.head, FeatureMapHead) and loaded.head.num_teachers == 3
    assert torch.allclose(loaded(x), model(x)) and info["darht_teachers"] == ["a", "b", "c"]
    assert "head_teachers" not in model_spec("lenet", META) and "depth" not in model_spec("lenet", META)


# --- the teacher families ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,width,depth", [("resnet_small", 12, 1), ("resnet_small", "mnist", 2),
                                              ("mobilenetv2_small", 12, 1), ("mobilenetv2_small", "cifar", None),
                                              ("vit_small", 48, 3), ("vit_small", 32, 1)])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_new_architectures_take_both_image_sizes_and_give_input_gradients(arch, width, depth, channels, size):
    torch.manual_seed(0)
    model = place(build_model(arch, channels, size, 10, [0.5] * channels, [0.25] * channels, width=width,
                              depth=depth), "cpu").eval()
    x = torch.rand(3, channels, size, size).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    logits = model(x)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    grad, = torch.autograd.grad(logits[:, 0].sum(), x)
    assert grad.abs().sum() > 0
    # normalisation lives inside the model: the features see (x - mean) / std
    assert torch.equal(model.normalize.mean.flatten(), torch.full((channels,), 0.5))
    assert torch.allclose(model.head(model.features((x.detach() - 0.5) / 0.25)), logits.detach(), atol=1e-5)


def test_width_and_depth_size_the_models():
    n = lambda arch, w, d: sum(p.numel() for p in build_model(arch, 1, 28, 10, [0.3], [0.3], width=w,  # noqa: E731
                                                               depth=d).parameters())
    for arch in ("resnet_small", "mobilenetv2_small", "vit_small"):
        assert n(arch, 16, 1) < n(arch, 32, 1) and n(arch, 16, 1) < n(arch, 16, 2)
    with pytest.raises(ValueError, match="width"):
        build_model("resnet_small", 1, 28, 10, [0.3], [0.3], width="huge")


def test_vit_is_a_transformer_over_4x4_patches():
    model = build_model("vit_small", 1, 28, 10, [0.3], [0.3], width=48, depth=3)
    vit = model.features
    assert vit.embed.kernel_size == (4, 4) and vit.embed.stride == (4, 4)
    assert vit.pos.shape == (1, 7 * 7 + 1, 48) and len(vit.encoder.layers) == 3
    assert isinstance(vit.encoder.layers[0], nn.TransformerEncoderLayer)


# --- the DARHT loss ---------------------------------------------------------------------------------------------

def darht(teachers, **kw):
    settings = dict(attack=NO_ATTACK, adversarial_prob=0.0, ce_kd_from=0.0, kd_only_from=0.0) | kw
    return DARHT(teachers, **settings)


def test_weights_follow_each_teachers_cross_entropy():
    x, y = batch(6)
    good = F.one_hot(y, 10).float() * 6.0          # confident and right: small CE
    unsure = torch.zeros(6, 10)                      # uniform: CE = log 10
    wrong = F.one_hot((y + 1) % 10, 10).float() * 6.0  # confident and wrong: large CE
    teachers = [FixedLogits(good), FixedLogits(unsure), FixedLogits(wrong)]
    loss = darht(teachers)
    w = loss.teacher_weights([t.logits for t in teachers], y)
    for i, t in enumerate(teachers):
        assert w[i].item() == pytest.approx(math.exp(-F.cross_entropy(t.logits, y).item()), rel=1e-6)
    assert w[1].item() == pytest.approx(0.1, rel=1e-6)  # exp(-log 10)
    assert w[0] > w[1] > w[2]
    normalized = darht(teachers, normalize_weights=True).teacher_weights([t.logits for t in teachers], y)
    assert normalized.sum().item() == pytest.approx(1.0) and torch.allclose(normalized, w / w.sum())
    # the KD term is the weighted sum of the per-slice distances, recomputed per batch
    model = student(3)
    _, fmap = model.forward_with_map(x)
    expected = sum(w[i] * kd_kl(fmap[:, i], t.logits, 1.0) for i, t in enumerate(teachers))
    total, _ = loss(model, x, y)   # KD only: ce_kd_from = kd_only_from = 0
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_each_slice_is_matched_to_its_own_teacher():
    x, y = batch(4)
    t0, t1 = teacher(1), teacher(2)
    model = student(2)
    loss = darht([t0, t1], normalize_weights=True)
    _, fmap = model.forward_with_map(x)
    w = loss.teacher_weights([t0(x), t1(x)], y)
    right = w[0] * kd_kl(fmap[:, 0], t0(x), 1.0) + w[1] * kd_kl(fmap[:, 1], t1(x), 1.0)
    swapped = w[0] * kd_kl(fmap[:, 1], t0(x), 1.0) + w[1] * kd_kl(fmap[:, 0], t1(x), 1.0)
    total, _ = loss(model, x, y)
    assert total.item() == pytest.approx(right.item(), rel=1e-5)
    assert abs(right.item() - swapped.item()) > 1e-4


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_one_teacher_kd_only_is_plain_kd(temperature):
    """K = 1, KD phase, clean batches: the loss is the existing distillation loss (losses.Distillation, λ = 1) of the
    single slice, times w_1 (exactly it with normalised weights)."""
    x, y = batch(8)
    t = teacher(1)
    model = student(1)

    class Slice(nn.Module):  # the student's only slice, as a model, for the existing KD loss
        def forward(self, z):
            return model.forward_with_map(z)[1][:, 0]

    plain, _ = Distillation(t, temperature, kd_lambda=1.0)(Slice(), x, y)
    normalized, _ = darht([t], kd_temperature=temperature, normalize_weights=True)(model, x, y)
    assert normalized.item() == pytest.approx(plain.item(), rel=1e-6)
    raw, _ = darht([t], kd_temperature=temperature)(model, x, y)
    w1 = math.exp(-F.cross_entropy(t(x), y).item())
    assert raw.item() == pytest.approx(w1 * plain.item(), rel=1e-5)


def test_mse_option_matches_the_logits():
    x, y = batch(4)
    t = teacher(1)
    model = student(1)
    loss, _ = darht([t], kd_loss="mse", normalize_weights=True)(model, x, y)
    assert loss.item() == pytest.approx(F.mse_loss(model.forward_with_map(x)[1][:, 0], t(x)).item(), rel=1e-6)


def test_phases_compose_ce_and_kd():
    x, y = batch(8)
    t = FixedLogits(torch.randn(8, 10, generator=torch.Generator().manual_seed(3)))
    model = student(1)
    loss = darht([t], ce_kd_from=0.2, kd_only_from=0.6)
    logits, fmap = model.forward_with_map(x)
    ce = F.cross_entropy(logits, y)
    kd = loss.kd(fmap, [t.logits], y)
    values = {}
    for progress in (0.0, 0.19, 0.2, 0.59, 0.6, 0.99):
        loss.set_progress(progress)
        values[progress] = (loss.phase(), loss(model, x, y)[0].item())
    assert [values[p][0] for p in sorted(values)] == ["ce", "ce", "ce_kd", "ce_kd", "kd", "kd"]
    assert values[0.0][1] == pytest.approx(ce.item(), rel=1e-6)
    assert values[0.2][1] == pytest.approx((ce + kd).item(), rel=1e-6)
    assert values[0.6][1] == pytest.approx(kd.item(), rel=1e-6)
    t.calls = 0
    loss.set_progress(0.0)
    loss(model, x, y)
    assert t.calls == 0  # CE phase: the teachers are not even queried


def test_schedule_switches_at_the_configured_epochs_in_the_training_loop():
    """4 epochs, CE+KD from 1/4 of training, KD only from 1/2: epoch 1 is CE, epoch 2 CE+KD, epochs 3-4 KD."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(32, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    y = torch.randint(0, 10, (32,), generator=g)
    seen = []

    class Recording(DARHT):
        def __call__(self, model, xb, yb):
            seen.append(self.phase())
            return super().__call__(model, xb, yb)

    spy = Recording([teacher(1), teacher(2)], NO_ATTACK, 0.0, ce_kd_from=0.25, kd_only_from=0.5)

    cfg = TrainConfig(epochs=4, batch_size=8, optimizer="adam", lr=1e-3, momentum=0.0, weight_decay=0.0,
                      schedule="constant", augment=False, seed=0)
    train(student(2), spy, (x, y), (x[:8], y[:8]), cfg, role="test")
    assert seen == ["ce"] * 4 + ["ce_kd"] * 4 + ["kd"] * 8  # 4 steps per epoch


def test_batches_are_adversarial_with_the_configured_probability(monkeypatch):
    x, y = batch(4)
    calls = []
    real = losses.maximise

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(losses, "maximise", counting)
    attack = InnerAttack(0.1, 2, 0.05)
    model = student(1)
    for prob, expected in ((0.0, 0), (1.0, 20)):
        calls.clear()
        loss = darht([teacher(1)], attack=attack, adversarial_prob=prob)
        torch.manual_seed(0)
        for _ in range(20):
            loss(model, x, y)
        assert len(calls) == expected
    calls.clear()
    loss = darht([teacher(1)], attack=attack, adversarial_prob=0.5)
    torch.manual_seed(0)
    for _ in range(200):
        loss(model, x, y)
    assert 70 <= len(calls) <= 130
    # the draw comes from the seeded global RNG: the same seed gives the same batches
    torch.manual_seed(5)
    a = loss(model, x, y)[0]
    torch.manual_seed(5)
    assert torch.equal(loss(model, x, y)[0], a)


def test_loss_settings_are_checked():
    with pytest.raises(ValueError, match="at least one teacher"):
        darht([])
    with pytest.raises(ValueError, match="schedule"):
        darht([teacher(1)], ce_kd_from=0.6, kd_only_from=0.5)
    with pytest.raises(ValueError, match="kd_loss"):
        darht([teacher(1)], kd_loss="l1")
    with pytest.raises(ValueError, match="2 slices for 1 teachers"):
        darht([teacher(1)])(student(2), *batch(2))


def test_the_method_registry_builds_darht_from_params():
    p = default_params()
    p["method"] = "darht"
    params_mod.validate(p)
    m = METHODS["darht"]
    assert isinstance(m, Darht) and TEACHER_TRAINING["darht"] == "natural" and m.single_process_reason
    loss = student_loss(p, [teacher(1), teacher(2)])
    assert isinstance(loss, DARHT) and len(loss.teachers) == 2
    assert loss.attack.eps == p["attack"]["headline_eps"] and loss.adversarial_prob == p["darht"]["adversarial_prob"]
    model = student(2)
    value, logits = loss(model, *batch(4))
    value.backward()
    assert logits.shape == (4, 10) and all(q.grad is None for t in loss.teachers for q in t.parameters())


# --- params -----------------------------------------------------------------------------------------------------

def default_params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def errors_of(p):
    with pytest.raises(ParamsError) as err:
        params_mod.validate(p)
    return str(err.value)


def test_default_pool_spans_four_families_and_is_valid():
    p = default_params()
    p["method"] = "darht"
    params_mod.validate(p)
    used = [t for t in p["darht"]["pool"].values() if t["use"]]
    assert [t["arch"] for t in used] == ["papernot_cnn", "resnet_small", "mobilenetv2_small", "vit_small"]
    assert all(t["training"] == "pgd_at" for t in used)


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d.update(ce_kd_from=0.5, kd_only_from=0.2), "`darht.ce_kd_from` = 0.5 is after `darht.kd_only_from`"),
    (lambda d: [t.update(use=False) for t in d["pool"].values()], "needs at least one teacher with `use: true`"),
    (lambda d: d["pool"].update(BadName=dict(d["pool"]["papernot"])), "`darht.pool.BadName`: bad name"),
    (lambda d: d["pool"]["papernot"].update(width=32), "`darht.pool.papernot.width` = 32: arch papernot_cnn takes a"),
    (lambda d: d["pool"]["vit"].update(width="wide"), "`darht.pool.vit.width` = 'wide': must be a width preset"),
    (lambda d: d["pool"]["vit"].update(epoch=2), "`darht.pool.vit.epoch`: unknown key; did you mean `darht.pool.vit.epochs`?"),
    (lambda d: d["pool"]["resnet"].update(training="auto"), "`darht.pool.resnet.training` = 'auto': unknown"),
    (lambda d: d.update(kd_loss="l2"), "`darht.kd_loss` = 'l2': unknown; allowed: kl, mse"),
    (lambda d: d.update(adversarial_prob=1.5), "`darht.adversarial_prob` = 1.5: out of range"),
    (lambda d: d.update(pool={}), "`darht.pool` = {}: must be a mapping of at least 1"),
])
def test_bad_darht_params_name_the_key(mutate, expected):
    p = default_params()
    p["method"] = "darht"
    mutate(p["darht"])
    assert expected in errors_of(p)


def test_member_overrides_are_optional_and_checked():
    p = default_params()
    p["darht"]["pool"]["vit"].update(epochs=3, lr=0.001)
    params_mod.validate(p)
    g = darht_pool.training_group(p, "vit")
    assert g["epochs"] == 3 and g["lr"] == 0.001 and g["arch"] == "vit_small" and g["depth"] == 3
    assert darht_pool.training_group(p, "resnet")["epochs"] == p["darht"]["teacher_training"]["epochs"]
    p["darht"]["pool"]["vit"]["epochs"] = 0
    assert "`darht.pool.vit.epochs` = 0: out of range" in errors_of(p)


# --- the teacher stage for unused entries -----------------------------------------------------------------------

def test_unused_teacher_stage_writes_a_marker_without_importing_torch(tmp_path):
    """For other methods (and `use: false`) `darht_teacher@<name>` must cost nothing: no torch import, an empty
    manifest saying why."""
    p = default_params()
    assert p["method"] != "darht"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    code = ("import runpy, sys; sys.argv = ['darht_teacher.py', 'vit']; "
            f"sys.path.insert(0, {str(ROOT / 'src')!r}); "
            f"runpy.run_path({str(ROOT / 'src' / 'darht_teacher.py')!r}, run_name='__main__'); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    written = json.loads((tmp_path / "models/darht/vit/models.json").read_text())
    assert written["models"] == [] and "not darht" in written["note"] and written["stage"] == "darht_teacher@vit"
    assert written["index"] == list(yaml.safe_load((tmp_path / "params.yaml").read_text())["darht"]["pool"]).index("vit")
    note = json.loads((tmp_path / "dvclive/darht/vit/teacher.json").read_text())
    assert note["used"] is False and "not darht" in note["reason"] and note["arch"] == "vit_small"
    assert not (tmp_path / "models/darht/vit/teacher.pt").exists()
    bad = subprocess.run([sys.executable, str(ROOT / "src" / "darht_teacher.py"), "nope"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "`darht.pool` has no teacher 'nope'" in bad.stderr


def test_student_stage_names_the_missing_teacher_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = default_params()
    p["method"] = "darht"
    with pytest.raises(ParamsError, match=r"dvc repro darht_teacher@papernot"):
        darht_pool.teacher_checkpoints(p)


# --- the transferability matrix ---------------------------------------------------------------------------------

def fake_result(name, clean_correct, fooled_by, teacher_name=None):
    """Per-point results of 4 attacked points: ``fooled_by[source]`` lists the points that source's examples fool."""
    linf = {f"transfer_{s}": {"eps_0p1": [0 if i in pts else 1 for i in range(4)]} for s, pts in fooled_by.items()}
    return {"model": name, "headline_eps": 0.1, "eps": [0.1], "attacked_clean_correct": clean_correct, "linf": linf,
            "info": {"darht_teacher": teacher_name} if teacher_name else {}}


def test_transferability_counts_only_points_the_target_gets_right_when_clean():
    results = [
        fake_result("teacher", [1, 1, 1, 1], {"darht_a": [0], "darht_b": [0, 1]}),
        fake_result("darht_a", [1, 1, 1, 0], {"darht_a": [0, 1, 2, 3], "darht_b": [1, 3]}, "a"),
        fake_result("darht_b", [1, 1, 0, 0], {"darht_a": [0, 2, 3], "darht_b": [0, 1]}, "b"),
        fake_result("student", [1, 1, 1, 1], {"darht_a": [], "darht_b": [3]}),
    ]
    m = transferability(results)
    assert m["teachers"] == ["darht_a", "darht_b"]
    assert m["success_rate"]["darht_a"]["darht_a"] == 1.0      # 3 of its 3 clean-correct points
    assert m["success_rate"]["darht_b"]["darht_a"] == pytest.approx(1 / 3, abs=1e-4)  # point 3 was wrong anyway: not counted
    assert m["success_rate"]["darht_a"]["darht_b"] == 0.5      # points 2, 3 were wrong clean: only point 0 counts
    assert m["success_rate"]["darht_b"]["darht_b"] == 1.0
    assert m["success_rate_on_student"] == {"darht_a": 0.0, "darht_b": 0.25}
    assert m["n_clean_correct"] == {"darht_a": 3, "darht_b": 2, "student": 4}
    assert m["mean_off_diagonal"] == pytest.approx((1 / 3 + 0.5) / 2, abs=1e-4)
    assert transferability([fake_result("teacher", [1], {})])["teachers"] == []


def test_a_models_own_transfer_is_not_a_black_box_attack():
    """transfer_<model> on that model is white-box: it must not trip the 'black-box beats white-box' check."""
    from test_diagnostics import healthy_result

    r = copy.deepcopy(healthy_result())
    r["model"] = "darht_a"
    weak = r["linf"]["pgd_margin"]["eps_0p1"]
    r["linf"]["transfer_darht_a"] = {k: [0] * len(v) for k, v in r["linf"]["pgd_margin"].items()}  # fools all
    thresholds = default_params()["metrics"]["masking"]
    assert not any("black-box transfer_darht_a" in s for s in masking_reasons(r, thresholds))
    assert "black_box" not in summarise(r, thresholds)["masking_codes"]
    r["model"] = "student"  # crafted on another model: a black-box attack that beats white-box is a flag
    assert sum(weak) > 0 and any("black-box transfer_darht_a" in s for s in masking_reasons(r, thresholds))
    assert "black_box" in summarise(r, thresholds)["masking_codes"].split(",")


# --- teacher selection by transferability (darht.select) --------------------------------------------------------

NAMES = ["a", "b", "c", "d", "e"]


def matrix_of(off_diagonal, diagonal=1.0, names=NAMES):
    """T[s][t]: ``off_diagonal(s, t)`` off the diagonal."""
    return {s: {t: diagonal if s == t else off_diagonal(s, t) for t in names} for s in names}


def test_choose_returns_the_argmin_subset_of_a_hand_made_matrix():
    # a, c and e transfer little among themselves; b and d transfer much, to and from everyone
    m = matrix_of(lambda s, t: 0.1 if {s, t} <= {"a", "c", "e"} else 0.8)
    chosen, score = darht_select.choose(NAMES, m, 3)
    assert chosen == ["a", "c", "e"] and score == Fraction(0.1)
    others = [darht_select.subset_score(sub, m) for sub in itertools.combinations(NAMES, 3) if list(sub) != chosen]
    assert len(others) == 9 and all(s > score for s in others)  # every other subset scores strictly worse
    # a subset's score: the mean over its pairs of the symmetric mean (T[i][j] + T[j][i]) / 2
    assert darht_select.subset_score(["a", "b", "c"], m) == (Fraction(0.8) + Fraction(0.8) + Fraction(0.1)) / 3


def test_choose_uses_both_directions_and_ignores_the_diagonal():
    names = ["a", "b", "c"]
    t = {("a", "b"): 0.0, ("b", "a"): 0.9, ("a", "c"): 0.4, ("c", "a"): 0.4, ("b", "c"): 0.5, ("c", "b"): 0.5}
    m = matrix_of(lambda s, u: t[s, u], names=names)
    # one direction alone would pick {a, b} (0.0); the symmetric mean is 0.45 there, 0.4 for {a, c}
    assert darht_select.choose(names, m, 2) == (["a", "c"], Fraction(0.4))
    assert darht_select.choose(names, matrix_of(lambda s, u: t[s, u], diagonal=0.0, names=names), 2)[0] == ["a", "c"]


def test_ties_go_to_the_first_subset_in_pool_order():
    flat = matrix_of(lambda s, t: 0.5)
    assert darht_select.choose(NAMES, flat, 2) == (["a", "b"], Fraction(0.5))
    assert darht_select.choose(NAMES, flat, 3)[0] == ["a", "b", "c"]
    assert darht_select.choose(["e", "d", "c", "b", "a"], flat, 2)[0] == ["e", "d"]  # pool order, not the names
    # {a, d} and {b, c} tie at the minimum: {a, d} comes first in combinations order
    low = ({"a", "d"}, {"b", "c"})
    m = matrix_of(lambda s, t: 0.2 if {s, t} in low else 0.7)
    assert darht_select.choose(NAMES, m, 2) == (["a", "d"], Fraction(0.2))
    assert darht_select.choose(NAMES, m, 2) == darht_select.choose(NAMES, copy.deepcopy(m), 2)


def test_k_equal_to_the_pool_chooses_all_and_k_one_the_first():
    m = matrix_of(lambda s, t: 0.1 * (NAMES.index(s) + 1))
    chosen, score = darht_select.choose(NAMES, m, 5)
    assert chosen == NAMES
    assert score == sum((Fraction(0.1 * (NAMES.index(s) + 1)) + Fraction(0.1 * (NAMES.index(t) + 1))) / 2
                        for s, t in itertools.combinations(NAMES, 2)) / 10
    assert darht_select.choose(NAMES, m, 1) == (["a"], None)  # no pair to score
    for k in (0, 6):
        with pytest.raises(ValueError, match=f"k = {k} for 5"):
            darht_select.choose(NAMES, m, k)


def test_a_pair_with_no_point_both_classify_correctly_counts_as_fully_transferable():
    names = ["a", "b", "c"]
    m = matrix_of(lambda s, t: None if {s, t} == {"a", "b"} else 0.9, names=names)
    assert darht_select.choose(names, m, 2) == (["a", "c"], Fraction(0.9))  # the unmeasured pair scores 1


class Reader(nn.Module):
    """Predicts the class written in the first pixel (class / 10), but shifts the classes in ``wrong`` by one."""

    def __init__(self, wrong=()):
        super().__init__()
        self.wrong = set(wrong)

    def forward(self, x):
        c = (x[:, 0, 0, 0] * 10).round().long() % 10
        shifted = torch.tensor([int(v) in self.wrong for v in c])
        return F.one_hot(torch.where(shifted, (c + 1) % 10, c), 10).float() * 5


def test_measure_counts_only_points_both_teachers_classify_correctly(monkeypatch):
    """Source a's examples fool points 0, 1, 4; source b's points 2, 5. Teacher b gets classes 4 and 5 wrong."""
    from robustkd import attacks

    y = torch.arange(6)
    x = (y.float() / 10).view(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    a, b = Reader(), Reader(wrong={4, 5})
    crafted = {id(a): [0, 1, 4], id(b): [2, 5]}
    seen = []

    def fake_attack(attack, model, xb, yb, batch_size, generator=None, **kw):
        seen.append((attack, kw["eps"], kw["steps"], kw["step_size"], kw["loss"], generator.initial_seed()))
        out = xb.clone()
        out[crafted[id(model)]] += 0.1  # one class up: every reader is fooled there
        return out

    monkeypatch.setattr(attacks, "attack_in_batches", fake_attack)
    measured = darht_select.measure({"a": a, "b": b}, x, y, eps=0.1, steps=3, step_size=0.05, batch_size=4, seed=7)
    assert measured["clean_correct"] == {"a": 6, "b": 4}
    assert measured["n_both"] == {"a": {"a": 6, "b": 4}, "b": {"a": 4, "b": 4}}
    # a -> b: point 4 is fooled but b gets it wrong anyway; b -> a: point 5 is not counted, b gets it wrong
    assert measured["hits"] == {"a": {"a": 3, "b": 2}, "b": {"a": 1, "b": 1}}
    assert darht_select.rates(measured) == {"a": {"a": Fraction(1, 2), "b": Fraction(1, 2)},
                                            "b": {"a": Fraction(1, 4), "b": Fraction(1, 4)}}
    assert seen == [(attacks.transfer, 0.1, 3, 0.05, "margin", 7)] * 2


def selection_params(k=2):
    p = default_params()
    p["method"] = "darht"
    lenet = {"use": True, "arch": "lenet", "width": "mnist", "training": "pgd_at"}
    p["darht"]["pool"] = {"one": {**lenet, "seed": 1}, "two": {**lenet, "seed": 2}, "off": {**lenet, "seed": 3, "use": False},
                          "three": {**lenet, "seed": 4}}
    p["darht"]["select"].update(k=k, n_points=30, steps=2, batch_size=16)
    return params_mod.validate(p)


def test_the_selection_stage_measures_on_the_validation_split_only(tmp_path, monkeypatch):
    from fixtures_data import write_fashion_mnist_idx
    from robustkd import data

    monkeypatch.chdir(tmp_path)
    write_fashion_mnist_idx(tmp_path / "raw", n_train=150, n_test=40, seed=0)
    meta = data.prepare("fashion_mnist", tmp_path / "raw", tmp_path / "data/prepared", val_size=40, seed=0)
    spec = model_spec("lenet", meta)
    for seed, name in enumerate(("one", "two", "three")):
        torch.manual_seed(seed)
        save_checkpoint(darht_pool.checkpoint_path(name), build_model(**spec), spec, {"darht_teacher": name})
    (tmp_path / "data/prepared/test.pt").unlink()  # loading the test split would fail
    loaded = []
    real = data.load_split
    monkeypatch.setattr(data, "load_split", lambda folder, split: loaded.append(split) or real(folder, split))
    p = selection_params(k=2)
    darht_select.run_stage(p)
    assert loaded == ["val"]
    record = json.loads((tmp_path / "results/darht_select.json").read_text())
    assert record["selected"] and record["split"] == "val" and record["n_points"] == 30 and record["k"] == 2
    assert record["candidates"] == ["one", "two", "three"]  # the `use: true` entries, in pool order
    assert record["attack"] == {"name": "pgd_linf_margin_last_iterate", "eps": 0.1, "steps": 2, "step_size": 0.025,
                                "seed": 0}
    exact = {s: {t: Fraction(record["n_fooled"][s][t], n) if n else None for t, n in row.items()}
             for s, row in record["n_both_correct"].items()}
    chosen, score = darht_select.choose(record["candidates"], exact, 2)
    assert record["chosen"] == chosen and record["score"] == round(float(score), 4)
    correct = record["n_clean_correct"]
    assert all(record["n_fooled"][s][t] <= record["n_both_correct"][s][t] <= min(correct[s], correct[t])
               for s in correct for t in correct)
    assert all(record["n_both_correct"][s][s] == correct[s] for s in correct)
    cells = json.loads((tmp_path / "plots/darht_select.json").read_text())
    assert len(cells) == 9 and sum(c["source_chosen"] and c["target_chosen"] for c in cells) == 4
    # the student reads the chosen set, checked against the params
    assert darht_select.student_teachers(p) == chosen
    assert darht_select.student_record(p)["darht_selection"]["chosen"] == chosen
    with pytest.raises(ParamsError, match=r"written for other settings.*dvc repro darht_select"):
        darht_select.student_teachers(selection_params(k=3))
    p["darht"]["select"]["n_points"] = 41
    with pytest.raises(ParamsError, match=r"`darht.select.n_points` = 41: the prepared validation split has only 40"):
        darht_select.run_stage(p)
    assert not (tmp_path / "results/darht_select.json").exists()
    with pytest.raises(ParamsError, match=r"results/darht_select.json: not found.*dvc repro darht_select"):
        darht_select.student_teachers(selection_params(k=2))
    p["darht"]["select"]["k"] = None  # no selection: every `use: true` entry, the file is not read
    assert darht_select.student_teachers(p) == ["one", "two", "three"]


@pytest.mark.parametrize("method,k,reason", [("defensive_distillation", 2, "not darht"), ("darht", None, "is null")])
def test_without_a_selection_the_stage_writes_a_marker_without_importing_torch(tmp_path, method, k, reason):
    p = default_params()
    p["method"] = method
    p["darht"]["select"]["k"] = k
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    code = ("import runpy, sys; sys.argv = ['darht_select.py']; "
            f"sys.path.insert(0, {str(ROOT / 'src')!r}); "
            f"runpy.run_path({str(ROOT / 'src' / 'darht_select.py')!r}, run_name='__main__'); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    marker = json.loads((tmp_path / "results/darht_select.json").read_text())
    assert marker["selected"] is False and reason in marker["reason"] and set(marker) == {"selected", "reason"}
    assert json.loads((tmp_path / "plots/darht_select.json").read_text()) == []


@pytest.mark.parametrize("mutate,expected", [
    (lambda p: p["darht"]["select"].update(k=5),
     "`darht.select.k` = 5: larger than the pool of 4 candidate(s) (the `use: true` entries of `darht.pool`: "
     "papernot, resnet, mobilenetv2, vit)"),
    (lambda p: (p["darht"]["select"].update(k=4), p["darht"]["pool"]["vit"].update(use=False)),
     "`darht.select.k` = 4: larger than the pool of 3 candidate(s)"),
    (lambda p: p["darht"]["select"].update(k=0), "`darht.select.k` = 0: out of range"),
    (lambda p: p["darht"]["select"].update(k=-1), "`darht.select.k` = -1: out of range"),
    (lambda p: p["darht"]["select"].update(kk=2), "`darht.select.kk`: unknown key; did you mean `darht.select.k`?"),
    (lambda p: p["darht"]["select"].update(steps=0), "`darht.select.steps` = 0: out of range"),
    (lambda p: p["darht"]["select"].update(k=2, n_points=5001),
     "`darht.select.n_points` = 5001: larger than the validation split (`data.val_size` = 5000)"),
    (lambda p: (p["darht"]["pool"].update({f"extra_{i}": dict(p["darht"]["pool"]["papernot"], seed=10 + i)
                                            for i in range(20)}), p["darht"]["select"].update(k=12)),
     "`darht.select.k` = 12: 2704156 subsets of the 24 candidates to score, more than the exhaustive search's limit"),
])
def test_bad_selection_params_are_refused_naming_the_pool(mutate, expected):
    p = default_params()
    p["method"] = "darht"
    mutate(p)
    assert expected in errors_of(p)


def test_selection_params_of_another_method_are_ignored():
    p = default_params()
    assert p["method"] != "darht" and p["darht"]["select"]["k"] is None
    p["darht"]["select"]["k"] = 9  # more than the pool: ignored, the method does not select
    params_mod.validate(p)
    assert not darht_select.selection_active(p) and darht_select.student_record(p) == {}
    p["darht"]["select"]["k"] = 0  # the value itself is still checked
    assert "`darht.select.k` = 0: out of range" in errors_of(p)


def test_the_test_split_matrix_marks_the_chosen_teachers(tmp_path):
    results = [
        fake_result("darht_a", [1, 1, 1, 1], {"darht_a": [0], "darht_b": [1]}, "a"),
        fake_result("darht_b", [1, 1, 1, 1], {"darht_a": [2], "darht_b": [3]}, "b"),
        fake_result("student", [1, 1, 1, 1], {"darht_a": [], "darht_b": []}),
    ]
    assert "chosen" not in transferability(results)
    selection = {"k": 1, "split": "val", "n_points": 4, "attack": {"eps": 0.1}, "candidates": ["a", "b"],
                 "chosen": ["b"], "score": None, "success_rate": {"a": {"a": 1.0, "b": 0.5}, "b": {"a": 0.0, "b": 1.0}}}
    results[-1]["info"]["darht_selection"] = selection
    assert transferability(results)["chosen"] == ["darht_b"]
    from robustkd import plotting
    plotting.selection_heatmap(selection, tmp_path / "selection.png")
    plotting.transferability_heatmap(transferability(results), tmp_path / "transferability.png")
    assert (tmp_path / "selection.png").read_bytes()[:4] == (tmp_path / "transferability.png").read_bytes()[:4] == b"\x89PNG"
