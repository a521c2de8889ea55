"""Every shipped preset merges into params.yaml and passes the schema (alone, and robust on top of a dataset); the
paper-scale presets (GPU) also build every model and run one training and one attack step on the CPU."""
from pathlib import Path

import pytest
import torch
import yaml

from apply_preset import merge
from conftest import ROOT
from robustkd import teacher_config
from robustkd.params import validate

PRESETS = ROOT / "src" / "presets"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("dataset", ["cifar10.yaml", "cifar100.yaml"])
def test_dataset_presets_alone_and_with_robust_training(dataset):
    base = load(ROOT / "params.yaml")
    with_dataset = validate(merge(base, load(PRESETS / dataset)))
    robust = validate(merge(with_dataset, load(PRESETS / "robust_resnet18.yaml")))
    assert robust["student"]["arch"] == robust["teacher"]["arch"] == "resnet18"
    assert robust["train_attack"]["eps"] is None and robust["attack"]["headline_eps"] == pytest.approx(8 / 255)
    assert robust["train_attack"]["steps"] == 10


def test_darht_homogeneous_preset_swaps_the_families_for_one_family_and_keeps_k():
    base = validate(load(ROOT / "params.yaml"))
    homo = validate(merge(base, load(PRESETS / "darht_homogeneous.yaml")))
    used = lambda p: [t for t in p["darht"]["pool"].values() if t["use"]]  # noqa: E731
    hetero = used({**base, "method": "darht"})
    assert homo["method"] == "darht" and len(used(homo)) == len(hetero) == 4
    assert {t["arch"] for t in used(homo)} == {"papernot_cnn"} and len({t["seed"] for t in used(homo)}) == 4
    assert len({t["arch"] for t in hetero}) == 4  # the default set spans four families
    # everything else (student, training budget, evaluation) is the same
    for key in ("student", "train_attack", "attack"):
        assert homo[key] == base[key]
    assert {k: v for k, v in homo["darht"].items() if k != "pool"} == {k: v for k, v in base["darht"].items() if k != "pool"}


def test_quick_autoattack_preset_switches_to_the_custom_subset_only():
    base = load(ROOT / "params.yaml")
    assert base["attack"]["autoattack"]["version"] == "standard"  # the headline protocol is the default
    quick = validate(merge(base, load(PRESETS / "quick_autoattack.yaml")))
    assert quick["attack"]["autoattack"]["version"] == "custom"
    assert quick["attack"]["autoattack"]["attacks"] == ["apgd-ce", "apgd-dlr"]
    assert {k: v for k, v in quick.items() if k != "attack"} == {k: v for k, v in base.items() if k != "attack"}


# ---------------------------------------------------------------- paper-scale presets: every model builds and trains

PAPER_PRESETS = {  # preset -> the dataset preset it goes on top of (None: self-contained)
    "dd_chain6_cifar10.yaml": "cifar10.yaml",
    "darht_cifar10.yaml": "cifar10.yaml",
    "purification_cifar10.yaml": "cifar10.yaml",
    "ltd_awp_cifar10.yaml": "cifar10.yaml",
    "ltd_awp_imagenet.yaml": None,
}
AWP_KEYS = {"enabled", "gamma", "warmup_epochs"}
SMOKE_SIZE = {"cifar10": 32, "imagenet": 128}  # ImageNet at 128 px, not 224, to stay fast (> 64: its own stem)


def paper_params(name: str) -> dict:
    params = load(ROOT / "params.yaml")
    if PAPER_PRESETS[name]:
        params = merge(params, load(PRESETS / PAPER_PRESETS[name]))
    return validate(merge(params, load(PRESETS / name)))


def one_step(model, loss_fn, x, y, group, awp: dict | None = None) -> None:
    """One optimizer step of the role's own loss (with the preset's adversarial weight perturbation, as the training
    loop applies it after its warm-up, where the loss takes it); the loss must be finite and the weights must move."""
    from robustkd.awp import AWPConfig, WeightPerturbation, supports
    from robustkd.training import TrainConfig, make_optimizer

    model.train()
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(model, TrainConfig.from_params(group, 0))
    config = AWPConfig.from_params(awp)
    perturbation = WeightPerturbation(model, config) if config is not None and supports(loss_fn) else None
    loss, logits = perturbation.perturb(loss_fn, model, x, y) if perturbation else loss_fn(model, x, y)
    assert torch.isfinite(loss) and logits.shape[0] == len(y)
    optimizer.zero_grad()
    loss.backward()
    if perturbation:
        perturbation.restore()
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, (p for p in model.parameters() if p.requires_grad)))


def attack_step(model, x, y, params) -> None:
    from robustkd import attacks

    model.eval()
    eps = params["attack"]["headline_eps"]
    with attacks.frozen(model):
        x_adv = attacks.pgd(model, x, y, eps=eps, steps=1, step_size=eps, loss="margin",
                            generator=torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and float((x_adv - x).abs().max()) <= eps + 1e-6


def test_every_paper_preset_is_covered():
    assert set(PAPER_PRESETS) | {"cifar10.yaml", "cifar100.yaml", "robust_resnet18.yaml", "darht_homogeneous.yaml",
                               "quick_autoattack.yaml", "darht_select_pool.yaml"} \
        == {p.name for p in PRESETS.glob("*.yaml")}
    for name in PAPER_PRESETS:
        assert "Never run on a GPU here" in (PRESETS / name).read_text()


# WRN-34-10, the DARHT pool and ResNet-50 take 25-60 s each on this 2-core CPU: slow (CI still runs them)
HEAVY = {"ltd_awp_cifar10.yaml", "darht_cifar10.yaml", "ltd_awp_imagenet.yaml"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
                                  for n in sorted(PAPER_PRESETS)])
def test_paper_preset_models_build_train_one_step_and_attack_on_cpu(name, one_thread):
    """Each model the preset trains, with the preset's architecture, size and loss (inner attacks cut to 1 step): one
    training step and one PGD step on 2 images of the preset's size (ImageNet: 128 px). Chains of identical models
    (6 assistants) are built once."""
    from robustkd.methods.base import TEACHER_TRAININGS
    from robustkd.methods.registry import method_for
    from robustkd.models import PURIFIERS, PurifiedClassifier, build_model, model_spec
    from robustkd.params import darht_teacher_settings, role_settings

    params = paper_params(name)
    fast = {**params, "train_attack": {**params["train_attack"], "steps": 1}}
    size = SMOKE_SIZE[params["dataset"]]
    classes = 1000 if params["dataset"] == "imagenet" else 10
    meta = {"shape": [3, size, size], "num_classes": classes, "mean": [0.5] * 3, "std": [0.25] * 3}
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, size, size), torch.tensor([0, 1])
    method = method_for(params)

    def classifier(group, **kw):
        return build_model(**model_spec(group["arch"], meta, group["width"], depth=group.get("depth"), **kw))

    teacher_group = role_settings(params, "teacher")
    teacher = classifier(teacher_group)
    one_step(teacher, TEACHER_TRAININGS[teacher_config.teacher_training(params)](fast), x, y, teacher_group,
             params["awp"])
    attack_step(teacher, x, y, params)
    surrogate_group = role_settings(params, "surrogate")
    surrogate = classifier(surrogate_group)
    one_step(surrogate, TEACHER_TRAININGS["natural"](fast), x, y, surrogate_group)
    built = {"teacher": teacher_group["arch"], "surrogate": surrogate_group["arch"]}

    if params["method"] == "darht":
        from robustkd.methods.darht import student_loss

        teachers = []
        for member, settings in params["darht"]["pool"].items():
            if not settings["use"]:
                continue
            group = darht_teacher_settings(params, member)
            model = classifier(group)
            one_step(model, TEACHER_TRAININGS[settings["training"]](fast), x, y, group)
            attack_step(model, x, y, params)
            teachers.append(model.eval())
            built[member] = group["arch"]
        group = role_settings(params, "student")
        student = classifier(group, head_teachers=len(teachers))
        one_step(student, student_loss(fast, teachers), x, y, group)
    elif params["method"] == "purification":
        from robustkd.adversarial import InnerAttack
        from robustkd.losses import AdversarialReconstruction, PurifierDistillation, PurifierReconstruction

        attack = InnerAttack.from_params(fast)
        teacher.eval()

        def purified(group):
            return PurifiedClassifier(PURIFIERS[group["arch"]](3, group["width"], group["depth"]), teacher)

        group = role_settings(params, "purifier_teachers")
        normal, adversarial = purified(group), purified(group)
        one_step(normal, PurifierReconstruction(group["noise_std"]), x, y, group)
        one_step(adversarial, AdversarialReconstruction(attack), x, y, group)
        sg = role_settings(params, "purifier_student")
        student = purified(sg)
        one_step(student, PurifierDistillation(normal.purifier.eval(), adversarial.purifier.eval(), attack,
                                               sg["reconstruction_weight"], sg["output_weight"], sg["feature_weight"],
                                               sg["adversarial_teacher_weight"], sg["adversarial_fraction"]),
                 x, y, sg)
        built.update(purifier_teachers=group["arch"], purifier_student=sg["arch"])
    else:  # the one-loss methods: the chain's assistants (identical settings: one is built), then the student
        previous = teacher.eval()
        if method.chain_length(params):
            group = role_settings(params, "assistant")
            assistant = classifier(group)
            one_step(assistant, method.student_loss(fast, group, previous), x, y, group)
            previous = assistant.eval()
            built["assistant"] = group["arch"]
        group = role_settings(params, "student")
        student = classifier(group, temperature=method.output_temperature(params))
        one_step(student, method.student_loss(fast, group, previous if method.distills else None), x, y, group,
                 params["awp"])
    attack_step(student, x, y, params)
    built["student"] = role_settings(params, "student")["arch"]
    expected = {  # what each seed paper's preset must contain
        "dd_chain6_cifar10.yaml": {"assistant": "papernot_cnn", "student": "papernot_cnn"},
        "darht_cifar10.yaml": {"vit": "vit_small", "wrn": "wide_resnet", "student": "resnet18"},
        "purification_cifar10.yaml": {"purifier_teachers": "cae", "purifier_student": "cae", "teacher": "resnet18"},
        "ltd_awp_cifar10.yaml": {"teacher": "wide_resnet", "student": "wide_resnet"},
        "ltd_awp_imagenet.yaml": {"teacher": "resnet50", "student": "resnet50"},
    }[name]
    assert {k: built.get(k) for k in expected} == expected


def test_paper_presets_say_what_they_are():
    dd, darht = paper_params("dd_chain6_cifar10.yaml"), paper_params("darht_cifar10.yaml")
    assert dd["chain_length"] == 6 and dd["method"] == "defensive_distillation" and dd["dataset"] == "cifar10"
    pool = {k: v for k, v in darht["darht"]["pool"].items() if v["use"]}
    assert {v["arch"] for v in pool.values()} >= {"vit_small", "wide_resnet"} and len(pool) >= 4
    ltd = paper_params("ltd_awp_cifar10.yaml")
    assert (ltd["training"]["arch"], ltd["training"]["depth"], ltd["training"]["width"]) == ("wide_resnet", 34, 10)
    imagenet = paper_params("ltd_awp_imagenet.yaml")
    assert imagenet["dataset"] == "imagenet" and imagenet["data"]["loader"] == "stream"
    assert imagenet["attack"]["headline_eps"] == pytest.approx(4 / 255)
    for name in ("ltd_awp_cifar10.yaml", "ltd_awp_imagenet.yaml"):
        assert set(load(PRESETS / name)["awp"]) == AWP_KEYS and paper_params(name)["awp"]["enabled"] is True


def test_darht_select_pool_preset_gives_six_candidates_of_four_families_and_k():
    base = validate(load(ROOT / "params.yaml"))
    preset = validate(merge(base, load(PRESETS / "darht_select_pool.yaml")))
    candidates = [t for t in preset["darht"]["pool"].values() if t["use"]]
    assert preset["method"] == "darht" and len(candidates) >= 6
    assert {t["arch"] for t in candidates} == {"papernot_cnn", "resnet_small", "mobilenetv2_small", "vit_small"}
    assert len({(t["arch"], t["width"], t.get("depth"), t["seed"]) for t in candidates}) == len(candidates)
    assert 2 <= preset["darht"]["select"]["k"] < len(candidates)
    # `dvc exp run -S darht.select.k=3` on top of it is valid too; the training budget is the default pool's
    validate({**preset, "darht": {**preset["darht"], "select": {**preset["darht"]["select"], "k": 3}}})
    assert preset["darht"]["teacher_training"] == base["darht"]["teacher_training"]
