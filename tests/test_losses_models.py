"""Losses against hand-computed values; models' [0,1] contract, shapes and safe checkpoints."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from robustkd.errors import CheckpointError
from robustkd.losses import Distillation, TemperatureCE, kd_kl
from robustkd.models import ARCHITECTURES, build_model, load_checkpoint, save_checkpoint


def test_kd_kl_matches_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.0]])
    t = torch.tensor([[0.0, 3.0, 1.0]])
    T = 2.0
    p_t = [math.exp(v / T) for v in (0.0, 3.0, 1.0)]
    p_t = [v / sum(p_t) for v in p_t]
    p_s = [math.exp(v / T) for v in (1.0, 2.0, 0.0)]
    p_s = [v / sum(p_s) for v in p_s]
    expected = T * T * sum(a * math.log(a / b) for a, b in zip(p_t, p_s))
    assert kd_kl(s, t, T).item() == pytest.approx(expected, rel=1e-6)
    assert kd_kl(t, t, T).item() == pytest.approx(0.0, abs=1e-7)


class Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_temperature_ce_divides_logits():
    logits = torch.tensor([[4.0, 0.0, -2.0]])
    loss, _ = TemperatureCE(4.0)(Fixed(logits), torch.zeros(1, 1), torch.tensor([0]))
    assert loss.item() == pytest.approx(F.cross_entropy(logits / 4, torch.tensor([0])).item())


def test_distillation_mixes_soft_and_hard_terms():
    teacher = Fixed(torch.tensor([[0.0, 3.0, 1.0]]))
    student = Fixed(torch.tensor([[1.0, 2.0, 0.0]]))
    x, y = torch.zeros(1, 1), torch.tensor([2])
    T, lam = 3.0, 0.25
    loss, _ = Distillation(teacher, T, lam)(student, x, y)
    expected = lam * kd_kl(student.logits, teacher.logits, T) + (1 - lam) * F.cross_entropy(student.logits, y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # λ = 1 is pure soft labels: the hard label has no influence
    a, _ = Distillation(teacher, T, 1.0)(student, x, torch.tensor([0]))
    b, _ = Distillation(teacher, T, 1.0)(student, x, torch.tensor([1]))
    assert a.item() == b.item()
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("shape", [(1, 28), (3, 32)])
def test_architectures_map_unit_images_to_logits(arch, shape):
    channels, size = shape
    model = build_model(arch, channels, size, 10, [0.5] * channels, [0.25] * channels).eval()
    out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 10)
    # normalisation is inside the model: its buffers are saved with the weights
    assert torch.equal(model.normalize.mean.flatten(), torch.full((channels,), 0.5))


def test_papernot_width_presets():
    small = build_model("papernot_cnn", 1, 28, 10, [0.0], [1.0], width="mnist")
    wide = build_model("papernot_cnn", 3, 32, 10, [0.0] * 3, [1.0] * 3, width="cifar")
    convs = lambda m: [l.out_channels for l in m.modules() if isinstance(l, torch.nn.Conv2d)]  # noqa: E731
    assert convs(small) == [32, 32, 64, 64] and convs(wide) == [64, 64, 128, 128]
    assert small.feature_dim == 200 and wide.feature_dim == 256


def test_checkpoint_round_trip(tmp_path):
    spec = dict(arch="lenet", channels=1, size=28, num_classes=10, mean=[0.3], std=[0.3], width="mnist")
    model = build_model(**spec)
    save_checkpoint(tmp_path / "m.pt", model, spec, {"role": "teacher"})
    loaded, info = load_checkpoint(tmp_path / "m.pt")
    assert info == {"role": "teacher"}
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    x = torch.rand(3, 1, 28, 28)
    # loaded models run channels_last: same weights, summation order may differ in the last bits
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=1e-5, atol=1e-6)


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PAYLOAD_MARKER']}",))


def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PAYLOAD_MARKER", str(marker))
    torch.save({"format": "robustkd-checkpoint-v1", "state_dict": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    spec = dict(arch="lenet", channels=1, size=28, num_classes=10, mean=[0.3], std=[0.3], width="mnist")
    save_checkpoint(tmp_path / "m.pt", build_model(**spec), spec, {})
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="m.pt"):
        load_checkpoint(tmp_path / "m.pt")
