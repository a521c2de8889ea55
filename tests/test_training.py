"""The shared training loop: learns, picks the best validation epoch, and resumes to identical weights."""
import shutil

import pytest
import torch

from robustkd import training
from robustkd.losses import TemperatureCE
from robustkd.models import build_model
from robustkd.training import TrainConfig, augment_batch, train


def toy_data(n, seed):
    """Separable 1x28x28 images: a bright row whose position is the label."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = torch.randint(0, 40, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    for i in range(n):
        x[i, 0, 2 + 2 * y[i]] = 230
    return x, y


CFG = TrainConfig(epochs=3, batch_size=32, optimizer="adam", lr=2e-3, momentum=0.9, weight_decay=0.0,
                  schedule="cosine", augment=False, seed=0)


def fresh_model():
    torch.manual_seed(0)
    return build_model("lenet", 1, 28, 10, [0.2], [0.3])


def test_training_learns_and_keeps_best_val_epoch():
    result = train(fresh_model(), TemperatureCE(1.0), toy_data(320, 0), toy_data(100, 1), CFG, "t")
    assert result.best_val_acc > 0.9
    best = max(result.history, key=lambda r: r["val_acc"])
    assert result.best_epoch == best["epoch"]
    assert training.accuracy(result.model, *toy_data(100, 1)) == pytest.approx(result.best_val_acc)


def test_same_seed_same_weights():
    a = train(fresh_model(), TemperatureCE(5.0), toy_data(160, 0), toy_data(50, 1), CFG, "a").model
    b = train(fresh_model(), TemperatureCE(5.0), toy_data(160, 0), toy_data(50, 1), CFG, "b").model
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_resume_after_crash_gives_identical_weights(tmp_path, monkeypatch):
    args = (TemperatureCE(1.0), toy_data(160, 0), toy_data(50, 1), CFG, "r")
    reference = train(fresh_model(), *args).model

    calls = {"n": 0}
    real_accuracy = training.accuracy

    def crash_on_second_validation(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2 is trained but not saved: the run dies mid-way
            raise KeyboardInterrupt("simulated kill")
        return real_accuracy(*a, **k)

    monkeypatch.setattr(training, "accuracy", crash_on_second_validation)
    with pytest.raises(KeyboardInterrupt):
        train(fresh_model(), *args, resume_path=tmp_path / "r.pt", run_id="x")
    saved = torch.load(tmp_path / "r.pt", weights_only=True)
    assert saved["epoch"] == 1
    monkeypatch.setattr(training, "accuracy", real_accuracy)
    resumed = train(fresh_model(), *args, resume_path=tmp_path / "r.pt", run_id="x").model
    assert all(torch.equal(p, q) for p, q in zip(reference.state_dict().values(), resumed.state_dict().values()))


def _live_files(live_dir):
    return {p.relative_to(live_dir).as_posix(): p.read_text() for p in sorted(live_dir.rglob("*")) if p.is_file()}


def test_resume_rebuilds_the_dvclive_log_that_dvc_deleted(tmp_path, monkeypatch):
    """`dvc repro` deletes a stage's outputs, dvclive/<role> included, before rerunning a killed stage."""
    args = (TemperatureCE(1.0), toy_data(96, 0), toy_data(30, 1), CFG, "r")
    train(fresh_model(), *args, live_dir=tmp_path / "live_ref")
    reference = _live_files(tmp_path / "live_ref")
    assert '"step": 2' in reference["metrics.json"] and reference["plots/metrics/val_acc.tsv"].count("\n") == 4

    real_accuracy, calls = training.accuracy, {"n": 0}

    def crash_on_third_validation(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # epochs 1 and 2 saved, epoch 3 lost
            raise KeyboardInterrupt("simulated kill")
        return real_accuracy(*a, **k)

    monkeypatch.setattr(training, "accuracy", crash_on_third_validation)
    with pytest.raises(KeyboardInterrupt):
        train(fresh_model(), *args, live_dir=tmp_path / "live", resume_path=tmp_path / "r.pt", run_id="x")
    monkeypatch.setattr(training, "accuracy", real_accuracy)
    shutil.rmtree(tmp_path / "live")  # what DVC does to the stage's outputs before running it again
    train(fresh_model(), *args, live_dir=tmp_path / "live", resume_path=tmp_path / "r.pt", run_id="x")
    assert _live_files(tmp_path / "live") == reference


def test_resume_file_of_another_run_is_ignored(tmp_path):
    args = (TemperatureCE(1.0), toy_data(96, 0), toy_data(30, 1))
    one_epoch = TrainConfig(**{**CFG.__dict__, "epochs": 1})
    train(fresh_model(), *args, one_epoch, "r", resume_path=tmp_path / "r.pt", run_id="config-A")
    result = train(fresh_model(), *args, one_epoch, "r", resume_path=tmp_path / "r.pt", run_id="config-B")
    assert len(result.history) == 1  # trained from scratch rather than "resuming" a finished foreign run


def test_augment_batch_crops_and_flips_on_tensors():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=0)
    for i in range(2):  # with no padding only flips remain
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))
    shifted = augment_batch(x, torch.Generator().manual_seed(1), pad=2)
    assert shifted.shape == x.shape


def test_stage_killed_after_its_first_model_does_not_train_it_again(tmp_path, monkeypatch):
    """A stage that trains two models (the teacher and its purifiers, an assistant chain), killed while training
    the second: the rerun rebuilds the first model's checkpoint byte for byte from its finished resume file,
    without a single training step, and its dvclive log too. Both finished resume files are kept afterwards (a stage
    killed after its script ended, before DVC recorded it, reruns in seconds the same way)."""
    from robustkd import roles

    monkeypatch.chdir(tmp_path)
    group = dict(arch="lenet", width="mnist", epochs=2, batch_size=32, optimizer="adam", lr=2e-3, momentum=0.9,
                 weight_decay=0.0, schedule="cosine", augment=False)
    meta = {"shape": [1, 28, 28], "num_classes": 10, "mean": [0.2], "std": [0.3], "files": {"train.pt": "0" * 64}}
    data, val = toy_data(96, 0), toy_data(32, 1)

    def role(name, loss, upstream=()):
        return roles.train_role(roles.RoleSpec(name, group, 0, loss, tmp_path / f"{name}.pt", tmp_path / "live" / name,
                                               record={}, upstream=list(upstream)),
                                roles.TrainingRun(meta, data, val, cuda_deterministic=False))

    def killed(model, x, y):
        raise KeyboardInterrupt("simulated kill")

    def must_not_train(model, x, y):
        raise AssertionError("the finished model was trained again")

    first_info = role("first", TemperatureCE(1.0))
    first_bytes = (tmp_path / "first.pt").read_bytes()
    first_live = _live_files(tmp_path / "live" / "first")
    with pytest.raises(KeyboardInterrupt):
        role("second", killed, upstream=[tmp_path / "first.pt"])
    # the rerun, as `dvc repro` does it: outputs deleted first
    shutil.rmtree(tmp_path / "live")
    (tmp_path / "first.pt").unlink()
    assert role("first", must_not_train) == first_info
    assert (tmp_path / "first.pt").read_bytes() == first_bytes
    assert _live_files(tmp_path / "live" / "first") == first_live
    second_info = role("second", TemperatureCE(1.0), upstream=[tmp_path / "first.pt"])
    second_bytes = (tmp_path / "second.pt").read_bytes()
    assert sorted(p.name for p in (tmp_path / ".resume").iterdir()) == ["first.pt", "second.pt"]
    (tmp_path / "second.pt").unlink()
    assert role("second", must_not_train, upstream=[tmp_path / "first.pt"]) == second_info
    assert (tmp_path / "second.pt").read_bytes() == second_bytes


def _other_precision(real):
    """The precision this device would not use (fp32 where bf16 is native, bf16 autocast elsewhere)."""
    return lambda device, engine: training.FP32 if real(device, engine) == training.BF16_AUTOCAST else training.BF16_AUTOCAST


@pytest.mark.parametrize("part, patch", [
    ("threads", lambda mp: mp.setattr(torch, "get_num_threads", lambda: 977)),
    ("torch", lambda mp: mp.setattr(torch, "__version__", "0.0.1-other")),
    ("precision", lambda mp: mp.setattr(training, "precision_name", _other_precision(training.precision_name))),
])
def test_resume_fingerprint_covers_what_changes_the_weights(tmp_path, monkeypatch, capsys, part, patch):
    """Thread count, torch version and precision change the weights: a resume file from a run that differed in any
    of them is not used, and the log says which part differed."""
    args = (TemperatureCE(1.0), toy_data(96, 0), toy_data(30, 1))
    one_epoch = TrainConfig(**{**CFG.__dict__, "epochs": 1})
    train(fresh_model(), *args, one_epoch, "r", resume_path=tmp_path / "r.pt", run_id="same")
    parts = torch.load(tmp_path / "r.pt", weights_only=True)["fingerprint"]
    assert set(parts) >= {"run", "config", "threads", "precision", "device", "torch", "world_size"}
    capsys.readouterr()
    with monkeypatch.context() as mp:
        patch(mp)
        result = train(fresh_model(), *args, one_epoch, "r", resume_path=tmp_path / "r.pt", run_id="same")
    out = capsys.readouterr().out
    assert len(result.history) == 1 and "rebuilding" not in out
    assert "not resuming from" in out and f"{part}: " in out, out
    assert [p for p in ("threads", "torch", "precision", "config", "run") if f"{p}: " in out] == [part]


def test_finished_resume_file_rebuilds_without_training_and_a_damaged_one_is_ignored(tmp_path, capsys):
    args = (TemperatureCE(1.0), toy_data(96, 0), toy_data(30, 1), CFG, "r")
    first = train(fresh_model(), *args, resume_path=tmp_path / "r.pt", run_id="x")
    assert torch.load(tmp_path / "r.pt", weights_only=True)["epoch"] == CFG.epochs  # kept after training ends
    capsys.readouterr()

    def must_not_train(model, x, y):
        raise AssertionError("trained again")

    again = train(fresh_model(), must_not_train, *args[1:], resume_path=tmp_path / "r.pt", run_id="x")
    assert "rebuilding the checkpoint without training" in capsys.readouterr().out
    assert all(torch.equal(p, q) for p, q in zip(first.model.state_dict().values(), again.model.state_dict().values()))
    assert again.seconds == first.seconds and again.fingerprint == first.fingerprint
    data = bytearray((tmp_path / "r.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "r.pt").write_bytes(bytes(data))
    fresh = train(fresh_model(), *args, resume_path=tmp_path / "r.pt", run_id="x")
    out = capsys.readouterr().out
    assert "not resuming" in out and "r.pt: damaged" in out and len(fresh.history) == CFG.epochs
    assert all(torch.equal(p, q) for p, q in zip(first.model.state_dict().values(), fresh.model.state_dict().values()))
