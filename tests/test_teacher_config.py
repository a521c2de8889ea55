"""The teacher stage's resolved configuration (robustkd.teacher_config), a teacher from a file (robustkd.pretrained,
`teacher.init_from`), a 0-epoch teacher, and `purifier_student.teachers` (params and the single-teacher loss).
The DVC side (what reruns): tests/test_pipeline.py."""
import copy
import os

import pytest
import torch
import yaml

from conftest import ROOT
from robustkd import params as params_mod, teacher_config
from robustkd.adversarial import InnerAttack
from robustkd.errors import CheckpointError, ParamsError
from robustkd.losses import PurifierDistillation
from robustkd.models import ConvAutoencoder, PurifiedClassifier, build_model, model_spec, save_checkpoint
from robustkd.pretrained import load_state, spec_for
from robustkd.training import TrainConfig, train

META = {"shape": [1, 28, 28], "num_classes": 10, "mean": [0.3], "std": [0.35]}


def default_params():
    return params_mod.read_yaml((ROOT / "params.yaml").read_text())


def resolved(**changes):
    """resolve() of the default params with dotted changes ('ard.kd_temperature': 4.0)."""
    p = default_params()
    for dotted, value in changes.items():
        node, keys = p, dotted.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return teacher_config.resolve(params_mod.validate(p))


def test_methods_that_need_the_same_teacher_resolve_to_the_same_configuration():
    ard = resolved(method="ard")
    assert ard["teacher"]["training"] == "pgd_at" and ard["train_attack"]["eps"] == 0.1
    assert resolved(method="rslad") == ard == resolved(method="ltd")
    # the students' settings and the unused temperature are not the teacher's
    assert resolved(**{"method": "ard", "temperature": 50, "ard.kd_temperature": 4.0, "trades.beta": 1.0,
                       "student.epochs": 9, "attack.n_points": 100}) == ard
    # what the robust teacher does depend on
    assert resolved(**{"method": "ard", "teacher.epochs": 5}) != ard
    assert resolved(**{"method": "ard", "awp.enabled": True}) != ard  # a PGD-AT teacher gets AWP
    assert "awp" not in resolved(method="defensive_distillation")  # a temperature-CE teacher never does
    assert resolved(**{"method": "ard", "training.lr": 0.01}) != ard
    assert resolved(**{"method": "ard", "train_attack.steps": 5}) != ard
    assert resolved(**{"method": "ard", "attack.headline_eps": 0.2, "attack.autoattack.eps": [0.2]}
                    )["train_attack"]["eps"] == 0.2  # eps: null
    assert resolved(**{"method": "ard", "seed": 1}) != ard


def test_each_training_records_only_its_own_loss_params():
    dd = resolved(method="defensive_distillation")
    assert dd["temperature"] == 20 and "train_attack" not in dd and "trades" not in dd
    assert resolved(method="defensive_distillation", temperature=50) != dd
    natural = resolved(method="natural")
    assert resolved(method="pgd_at") == natural == resolved(method="trades") == resolved(method="darht")
    assert {"temperature", "trades", "train_attack"}.isdisjoint(natural)
    trades = resolved(**{"method": "ard", "teacher.training": "trades"})
    assert trades["trades"] == {"beta": 6.0} and "train_attack" in trades
    assert resolved(**{"method": "ard", "teacher.training": "trades", "trades.beta": 1.0}) != trades
    assert resolved(**{"method": "natural", "trades.beta": 1.0}) == natural


def test_purification_records_its_listed_purifier_teachers():
    both = resolved(method="purification")
    assert both["teacher_extras"] == "purification" and both["teacher"]["training"] == "natural"
    assert both["purifier_student"] == {"teachers": ["normal", "adversarial"]} and "train_attack" in both
    assert resolved(**{"method": "purification", "purifier_student.teachers": ["adversarial", "normal"]}) == both
    adversarial = resolved(**{"method": "purification", "purifier_student.teachers": ["adversarial"]})
    assert "noise_std" not in adversarial["purifier_teachers"] and adversarial != both
    assert resolved(**{"method": "purification", "purifier_student.teachers": ["adversarial"],
                       "purifier_teachers.noise_std": 0.3}) == adversarial
    normal = resolved(**{"method": "purification", "purifier_student.teachers": ["normal"]})
    assert "train_attack" not in normal and normal["purifier_teachers"]["noise_std"] == 0.1
    # the student's own settings are not the teacher stage's
    assert resolved(**{"method": "purification", "purifier_student.adversarial_teacher_weight": 1.0}) == both


@pytest.mark.parametrize("teachers, message", [
    ([], "must be a non-empty list of normal, adversarial"),
    (["adversarial", "adversarial"], "'adversarial' listed more than once; list each once"),
    (["normal", "adverserial"], "`purifier_student.teachers[1]` = 'adverserial': unknown; allowed: normal, "
                                "adversarial (did you mean 'adversarial'?)"),
    ("adversarial", "must be a non-empty list"),
])
def test_purifier_student_teachers_are_checked(teachers, message):
    p = default_params()
    p["purifier_student"]["teachers"] = teachers
    with pytest.raises(ParamsError) as err:
        params_mod.validate(p)
    assert message in str(err.value)


@pytest.mark.parametrize("changes, message", [
    ({"teacher.epochs": 0}, "`teacher.epochs` = 0: trains nothing"),
    ({"training.epochs": 0}, "`training.epochs` = 0: out of range"),
    ({"teacher.init_from": "/tmp/teacher.pt"}, "must be a relative path to a file under pretrained/"),
    ({"teacher.init_from": "pretrained/../models/teacher.pt"}, "under pretrained/"),
    ({"teacher.init_from": "pretrained"}, "under pretrained/"),
])
def test_teacher_init_from_and_epochs_are_checked(changes, message):
    with pytest.raises(ParamsError) as err:
        resolved(**changes)
    assert message in str(err.value)


@pytest.fixture()
def in_tmp(tmp_path):
    """Run in a temporary folder with a pretrained/ folder (paths are relative to the repository root)."""
    (tmp_path / "pretrained").mkdir()
    here = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(here)


def teacher_spec():
    return spec_for(teacher_config.resolve(params_mod.validate(default_params()))["teacher"], "fashion_mnist")


def test_init_from_a_missing_file_names_the_param_and_the_file(in_tmp):
    with pytest.raises(ParamsError) as err:
        resolved(**{"teacher.init_from": "pretrained/robust.pt"})
    assert "`teacher.init_from` = 'pretrained/robust.pt': not found" in str(err.value)
    assert str(in_tmp / "pretrained" / "robust.pt") in str(err.value)


def test_init_from_records_the_files_sha256(in_tmp):
    torch.manual_seed(0)
    torch.save(build_model(**teacher_spec()).state_dict(), "pretrained/robust.pt")
    first = resolved(**{"teacher.init_from": "pretrained/robust.pt"})["init_from"]
    assert first["path"] == "pretrained/robust.pt" and len(first["sha256"]) == 64
    torch.save(build_model(**teacher_spec()).state_dict(), "pretrained/robust.pt")  # other weights, same name
    assert resolved(**{"teacher.init_from": "pretrained/robust.pt"})["init_from"]["sha256"] != first["sha256"]


def test_init_from_accepts_the_common_checkpoint_forms(in_tmp):
    spec = teacher_spec()
    torch.manual_seed(0)
    model = build_model(**spec)
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    forms = {
        "plain.pt": model.state_dict(),
        "nested.pt": {"state_dict": {f"module.{k}": v for k, v in weights.items()}, "epoch": 10},  # DataParallel
        "model.pt": {"model": weights, "best_acc": torch.tensor(0.5)},
    }
    for name, obj in forms.items():
        torch.save(obj, in_tmp / "pretrained" / name)
    save_checkpoint(in_tmp / "pretrained" / "sealed.pt", model, spec, {"role": "teacher"})
    for name in [*forms, "sealed.pt"]:
        state = load_state(f"pretrained/{name}", spec)
        assert state.keys() == model.state_dict().keys(), name
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()), name


def test_init_from_of_another_architecture_names_the_mismatching_keys(in_tmp):
    spec = teacher_spec()
    lenet = build_model(**{**spec, "arch": "lenet"})
    torch.save(lenet.state_dict(), "pretrained/lenet.pt")
    with pytest.raises(CheckpointError) as err:
        load_state("pretrained/lenet.pt", spec)
    text = str(err.value)
    assert text.startswith("`teacher.init_from` = 'pretrained/lenet.pt': does not fit the teacher's architecture")
    assert "missing keys" in text and "unexpected keys" in text and "`teacher.arch`" in text
    wide = build_model(**{**spec, "width": "cifar"})
    torch.save(wide.state_dict(), "pretrained/wide.pt")
    with pytest.raises(CheckpointError) as err:
        load_state("pretrained/wide.pt", spec)
    assert "mismatched shapes" in str(err.value) and "(model: [32, 1, 3, 3])" in str(err.value)


class Payload:
    """Not a tensor: weights_only=True refuses to unpickle it (and never runs its code)."""

    def __reduce__(self):
        return (os.system, ("echo should never run",))


def test_init_from_refuses_a_pickle_payload_and_a_non_checkpoint(in_tmp):
    spec = teacher_spec()
    torch.save({"state_dict": Payload()}, "pretrained/payload.pt")
    with pytest.raises(CheckpointError) as err:
        load_state("pretrained/payload.pt", spec)
    assert "`teacher.init_from` = 'pretrained/payload.pt': holds objects other than tensors" in str(err.value)
    assert "weights_only=True refuses" in str(err.value) and "torch.save(model.state_dict(), path)" in str(err.value)
    (in_tmp / "pretrained" / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        load_state("pretrained/notes.pt", spec)
    assert "`teacher.init_from` = 'pretrained/notes.pt': not a PyTorch checkpoint" in str(err.value)
    torch.save({"epoch": 3}, "pretrained/no_state.pt")
    with pytest.raises(CheckpointError) as err:
        load_state("pretrained/no_state.pt", spec)
    assert "not a state_dict" in str(err.value)


def test_zero_epochs_keeps_the_initial_weights(one_thread):
    torch.manual_seed(0)
    model = build_model(**model_spec("papernot_cnn", META))
    before = copy.deepcopy(model.state_dict())
    g = torch.Generator().manual_seed(0)
    data = (torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g), torch.randint(0, 10, (64,), generator=g))
    cfg = TrainConfig(epochs=0, batch_size=32, optimizer="adam", lr=0.01, momentum=0.9, weight_decay=0.0,
                      schedule="cosine", augment=False, seed=0)
    result = train(model, lambda m, x, y: (m(x).sum(), m(x)), data, data, cfg, "teacher")
    assert result.best_epoch == 0 and result.history == [] and 0 <= result.best_val_acc <= 1
    assert all(torch.equal(result.model.state_dict()[k], v) for k, v in before.items())


def test_a_single_purifier_teacher_gets_the_whole_weight(one_thread):
    torch.manual_seed(0)
    clf = build_model(**model_spec("papernot_cnn", META))
    t_normal, t_adv = ConvAutoencoder(1, 8, 2), ConvAutoencoder(1, 8, 2)
    student = PurifiedClassifier(ConvAutoencoder(1, 8, 2), clf)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    attack = InnerAttack(0.1, 1, 0.05)
    kw = dict(reconstruction_weight=0.0, output_weight=1.0, feature_weight=0.0, adversarial_fraction=0.0)
    alone = PurifierDistillation(None, t_adv, attack, adversarial_teacher_weight=0.3, **kw)
    assert alone.teacher_weights == (1.0,) and alone.teachers == [t_adv]
    # one teacher at weight 1 == the ensemble with a_adv = 1 (adversarial_teacher_weight is not used)
    ensemble = PurifierDistillation(t_normal, t_adv, attack, adversarial_teacher_weight=1.0, **kw)
    assert alone(student, x, y)[0].item() == ensemble(student, x, y)[0].item()
    normal = PurifierDistillation(t_normal, None, attack, adversarial_teacher_weight=0.9, **kw)
    assert normal.teacher_weights == (1.0,) and normal.teachers == [t_normal]
    with pytest.raises(ValueError):
        PurifierDistillation(None, None, attack, adversarial_teacher_weight=0.5, **kw)


def test_params_yaml_documents_the_new_keys():
    text = (ROOT / "params.yaml").read_text()
    p = yaml.safe_load(text)
    assert p["teacher"]["init_from"] is None and p["purifier_student"]["teachers"] == ["normal", "adversarial"]
