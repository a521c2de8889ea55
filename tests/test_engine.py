"""params.yaml `engine`: bf16 autocast where the device computes bf16 natively (training-time attacks too, unless
`train_attack.bf16` is false: tests/test_train_attack_precision.py), torch.compile as an opt-in.

No GPU here: "CUDA" is faked by patching the device checks, and CPU autocast stands in for CUDA's. What this
proves: the autocast context is entered exactly when `engine.bf16` is on and the device has native bf16, the loss
runs inside it, the attack's model forward passes run inside it with `train_attack.bf16` and outside it (fp32)
without, the attack's objective gets fp32 logits with autocast off, the precision is recorded, and without native
bf16 the flag changes no weight.
"""
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from robustkd import teacher_config, training
from robustkd.adversarial import InnerAttack, maximise
from robustkd.errors import ParamsError
from robustkd.losses import TemperatureCE
from robustkd.params import validate
from robustkd.training import (Engine, TrainConfig, autocast_for, native_bf16, precision_name, train,
                               uses_autocast)
from test_training import fresh_model, toy_data

ROOT = Path(__file__).resolve().parents[1]
CFG = TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=2e-3, momentum=0.9, weight_decay=0.0,
                  schedule="cosine", augment=False, seed=0)
TRAINING_STAGES = {"teacher", "assistant", "student", "surrogate"}


def test_autocast_only_when_asked_and_the_device_has_native_bf16(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert Engine() == Engine(bf16=True, compile=False)  # the params.yaml defaults
    for native in (True, False):
        monkeypatch.setattr(training, "native_bf16", lambda device, native=native: native)
        for device in (cpu, cuda):
            assert uses_autocast(device, Engine(bf16=True)) is native
            assert not uses_autocast(device, Engine(bf16=False))
            assert precision_name(device, Engine(bf16=True)) == ("bf16-autocast" if native else "fp32")
            assert precision_name(device, Engine(bf16=False)) == "fp32"
    assert not isinstance(autocast_for(cpu, precision_name(cpu, Engine(bf16=True))), torch.autocast)  # not native
    monkeypatch.setattr(training, "native_bf16", lambda device: True)
    assert isinstance(autocast_for(cpu, precision_name(cpu, Engine(bf16=True))), torch.autocast)


def test_native_bf16_reads_the_hardware(monkeypatch):
    """CPU: AVX512-BF16 or AMX, as torch reports them; CUDA: bf16 units, emulation not counted."""
    expected_cpu = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert native_bf16(torch.device("cpu")) is expected_cpu
    asked = []

    def fake_is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return False

    monkeypatch.setattr(training.torch.cuda, "is_bf16_supported", fake_is_bf16_supported)
    assert native_bf16(torch.device("cuda", 0)) is False and asked == [False]
    monkeypatch.setattr(training.torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(training.torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert native_bf16(torch.device("cpu")) is True
    monkeypatch.setattr(training.torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert native_bf16(torch.device("cpu")) is False
    assert native_bf16(torch.device("meta")) is False


def test_cuda_autocast_context_is_bf16(monkeypatch):
    made = []

    class Recorder:
        def __init__(self, **kwargs):
            made.append(kwargs)

    monkeypatch.setattr(training.torch, "autocast", Recorder)
    monkeypatch.setattr(training, "native_bf16", lambda device: True)  # a GPU with bf16 units
    cuda = torch.device("cuda", 0)
    autocast_for(cuda, precision_name(cuda, Engine(bf16=True)))
    assert made == [{"device_type": "cuda", "dtype": torch.bfloat16}]


class RecordingPGDAT:
    """PGD-AT that records, for the loss and for each of the attack's objective evaluations, whether autocast is on,
    and the dtype of the logits the objective gets."""

    def __init__(self, attack_bf16: bool = True):
        self.loss_autocast, self.attack_autocast, self.attack_dtypes = [], [], []
        self.attack = InnerAttack(eps=0.1, steps=2, step_size=0.05, bf16=attack_bf16)

    def __call__(self, model, x, y):
        self.loss_autocast.append(torch.is_autocast_enabled("cpu"))

        def objective(z):
            self.attack_autocast.append(torch.is_autocast_enabled("cpu"))
            self.attack_dtypes.append(z.dtype)
            return F.cross_entropy(z, y)

        x_adv = maximise(model, x, objective, self.attack)
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits


def test_loss_under_autocast_when_the_device_has_native_bf16_attack_objective_in_fp32(monkeypatch):
    """Fake the hardware check: the real autocast_for then enters a (CPU) bf16 autocast around every step's loss.
    The attack's model forward runs in it (train_attack.bf16, the default) or not (false), and its objective always
    gets fp32 logits with autocast off."""
    monkeypatch.setattr(training, "native_bf16", lambda device: True)
    for attack_bf16 in (True, False):
        loss = RecordingPGDAT(attack_bf16)
        conv_dtypes = []
        model = fresh_model()
        first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        first_conv.register_forward_hook(lambda m, i, o: conv_dtypes.append(o.dtype))
        train(model, loss, toy_data(64, 0), toy_data(20, 1), CFG, "amp", engine=Engine(bf16=True))
        assert loss.loss_autocast == [True, True]  # two steps, each inside autocast
        assert loss.attack_autocast and not any(loss.attack_autocast)  # the objective: autocast off ...
        assert set(loss.attack_dtypes) == {torch.float32}  # ... on fp32 logits
        # per step: 2 crafting forwards, then the loss's own (bf16); then validation (fp32)
        crafting = [d for step in range(2) for d in conv_dtypes[3 * step:3 * step + 2]]
        assert set(crafting) == {torch.bfloat16 if attack_bf16 else torch.float32}
        assert conv_dtypes[2] == conv_dtypes[5] == torch.bfloat16

    off = RecordingPGDAT()
    train(fresh_model(), off, toy_data(64, 0), toy_data(20, 1), CFG, "amp", engine=Engine(bf16=False))
    assert off.loss_autocast == [False, False]


def test_bf16_changes_nothing_without_native_bf16(monkeypatch):
    monkeypatch.setattr(training, "native_bf16", lambda device: False)
    loss = RecordingPGDAT()
    on = train(fresh_model(), loss, toy_data(64, 0), toy_data(20, 1), CFG, "a", engine=Engine(bf16=True))
    off = train(fresh_model(), RecordingPGDAT(), toy_data(64, 0), toy_data(20, 1), CFG, "b", engine=Engine(bf16=False))
    assert loss.loss_autocast == [False, False]
    assert on.precision == off.precision == "fp32"
    assert all(torch.equal(p, q) for p, q in zip(on.model.state_dict().values(), off.model.state_dict().values()))


def test_bf16_with_native_bf16_changes_the_weights_and_is_recorded(monkeypatch):
    """The other side of the test above: under bf16 the same run ends elsewhere (close to fp32, not equal), is
    reproducible, and says what it ran in."""
    monkeypatch.setattr(training, "native_bf16", lambda device: True)
    bf16 = train(fresh_model(), TemperatureCE(1.0), toy_data(64, 0), toy_data(20, 1), CFG, "a", engine=Engine())
    again = train(fresh_model(), TemperatureCE(1.0), toy_data(64, 0), toy_data(20, 1), CFG, "a", engine=Engine())
    fp32 = train(fresh_model(), TemperatureCE(1.0), toy_data(64, 0), toy_data(20, 1), CFG, "b",
                 engine=Engine(bf16=False))
    assert (bf16.precision, fp32.precision) == ("bf16-autocast", "fp32")
    pairs = list(zip(bf16.model.state_dict().values(), fp32.model.state_dict().values()))
    assert not all(torch.equal(p, q) for p, q in pairs)
    assert all(torch.allclose(p, q, atol=1e-2) for p, q in pairs)  # 2 Adam steps of lr 2e-3 move each weight <= 4e-3
    assert all(torch.equal(p, q) for p, q in zip(bf16.model.state_dict().values(), again.model.state_dict().values()))


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
    # the teacher stage reads it through its resolved configuration (results/config/teacher.json), not as a param
    assert {name for name, stage in stages.items() if "engine" in stage.get("params", [])} == TRAINING_STAGES - {"teacher"}
    assert "engine" in teacher_config.resolve(validate(BASE))
    for name in TRAINING_STAGES - {"teacher"}:  # and each hands it to train_role, in the stage's TrainingRun
        assert "load_training_run(params" in (ROOT / "src" / f"{name}.py").read_text()
    assert "load_training_run(config" in (ROOT / "src" / "teacher.py").read_text()
    assert 'params["cuda_deterministic"], params["engine"],' in (ROOT / "src" / "robustkd" / "roles.py").read_text()
