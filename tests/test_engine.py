"""params.yaml `engine`: bf16 autocast on CUDA only (training-time attacks stay fp32), torch.compile as an opt-in.

No GPU here: "CUDA" is faked by patching the device check, and CPU autocast stands in for CUDA's. What this proves:
the autocast context is entered exactly when the device check says CUDA, the loss runs inside it, the attack's
forward passes run outside it in fp32, and on CPU the flag changes no weight.
"""
import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from robustkd import training
from robustkd.adversarial import InnerAttack, maximise
from robustkd.errors import ParamsError
from robustkd.losses import TemperatureCE
from robustkd.params import validate
from robustkd.training import Engine, TrainConfig, autocast_for, train, uses_autocast
from test_training import fresh_model, toy_data

ROOT = Path(__file__).resolve().parents[1]
CFG = TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=2e-3, momentum=0.9, weight_decay=0.0,
                  schedule="cosine", augment=False, seed=0)
TRAINING_STAGES = {"teacher", "assistant", "student", "surrogate"}


def test_autocast_only_on_cuda_and_only_when_asked():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert uses_autocast(cuda, Engine(bf16=True)) and not uses_autocast(cuda, Engine(bf16=False))
    assert not uses_autocast(cpu, Engine(bf16=True))
    assert Engine() == Engine(bf16=True, compile=False)  # the params.yaml defaults
    assert not isinstance(autocast_for(cpu, Engine(bf16=True)), torch.autocast)


def test_cuda_autocast_context_is_bf16(monkeypatch):
    made = []

    class Recorder:
        def __init__(self, **kwargs):
            made.append(kwargs)

    monkeypatch.setattr(training.torch, "autocast", Recorder)
    autocast_for(torch.device("cuda", 0), Engine(bf16=True))
    assert made == [{"device_type": "cuda", "dtype": torch.bfloat16}]


class RecordingPGDAT:
    """PGD-AT that records, for the loss and for each of the attack's forward passes, whether autocast is on."""

    def __init__(self):
        self.loss_autocast, self.attack_autocast, self.attack_dtypes = [], [], []
        self.attack = InnerAttack(eps=0.1, steps=2, step_size=0.05)

    def __call__(self, model, x, y):
        self.loss_autocast.append(torch.is_autocast_enabled("cpu"))

        def objective(z):
            self.attack_autocast.append(torch.is_autocast_enabled("cpu"))
            self.attack_dtypes.append(z.dtype)
            return F.cross_entropy(z, y)

        x_adv = maximise(model, x, objective, self.attack)
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits


def test_loss_under_autocast_when_the_device_is_cuda_attack_in_fp32(monkeypatch):
    """Fake the device check: the real autocast_for then enters a (CPU) bf16 autocast around every step's loss."""
    monkeypatch.setattr(training, "uses_autocast", lambda device, engine: engine.bf16)
    loss = RecordingPGDAT()
    train(fresh_model(), loss, toy_data(64, 0), toy_data(20, 1), CFG, "amp", engine=Engine(bf16=True))
    assert loss.loss_autocast == [True, True]  # two steps, each inside autocast
    assert loss.attack_autocast and not any(loss.attack_autocast)  # crafting switched it off ...
    assert set(loss.attack_dtypes) == {torch.float32}  # ... and ran in fp32

    off = RecordingPGDAT()
    train(fresh_model(), off, toy_data(64, 0), toy_data(20, 1), CFG, "amp", engine=Engine(bf16=False))
    assert off.loss_autocast == [False, False]


def test_bf16_changes_nothing_on_cpu():
    loss = RecordingPGDAT()
    on = train(fresh_model(), loss, toy_data(64, 0), toy_data(20, 1), CFG, "a", engine=Engine(bf16=True)).model
    off = train(fresh_model(), RecordingPGDAT(), toy_data(64, 0), toy_data(20, 1), CFG, "b",
                engine=Engine(bf16=False)).model
    assert loss.loss_autocast == [False, False]
    assert all(torch.equal(p, q) for p, q in zip(on.state_dict().values(), off.state_dict().values()))


def test_compile_is_called_once_and_trains_the_same_weights(monkeypatch):
    """torch.compile is replaced by a recorder around the real one with the eager backend (no C++ compiler needed):
    the loop must train through the compiled wrapper and return the plain model, weights equal to an uncompiled run."""
    real_compile, calls = torch.compile, []

    def recording_compile(model, **kwargs):
        calls.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(training.torch, "compile", recording_compile)
    args = (TemperatureCE(1.0), toy_data(64, 0), toy_data(20, 1), TrainConfig(**{**CFG.__dict__, "epochs": 2}))
    model = fresh_model()
    compiled = train(model, *args, "c", engine=Engine(compile=True)).model
    assert len(calls) == 1 and calls[0] is model and compiled is model
    assert not any("_orig_mod" in k for k in compiled.state_dict())  # checkpoints keep the plain keys
    plain = train(fresh_model(), *args, "p", engine=Engine(compile=False)).model
    assert len(calls) == 1
    for (k, p), q in zip(compiled.state_dict().items(), plain.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), k


BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("change,expected", [
    ({"bf16": "yes"}, "`engine.bf16` = 'yes': must be true or false"),
    ({"compile": 1}, "`engine.compile` = 1: must be true or false"),
    ({"compiled": True}, "`engine.compiled`: unknown key; did you mean `engine.compile`?"),
])
def test_bad_engine_params_name_the_key(change, expected):
    p = copy.deepcopy(BASE)
    p["engine"].update(change)
    with pytest.raises(ParamsError) as err:
        validate(p)
    assert expected in str(err.value)


def test_engine_is_a_param_of_the_training_stages_only():
    assert BASE["engine"] == {"bf16": True, "compile": False}
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert {name for name, stage in stages.items() if "engine" in stage.get("params", [])} == TRAINING_STAGES
    for name in TRAINING_STAGES:  # and each passes it on to train_role, as does every purifier training
        assert 'engine=params["engine"]' in (ROOT / "src" / f"{name}.py").read_text()
    purification = (ROOT / "src" / "robustkd" / "purification.py").read_text()
    assert len(re.findall(r"train_role\(", purification)) == len(re.findall(r'engine=params\["engine"\]', purification))
