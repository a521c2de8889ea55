"""Resource checks: a full disk or a too-large batch stops a stage with a ResourceError before it writes anything;
`cuda_deterministic` sets the CUDA flags (their effect on a GPU is not testable on this CPU-only machine)."""
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
import yaml

from fixtures_data import write_fashion_mnist_idx
from robustkd import data, io as rio, roles
from robustkd.errors import ResourceError
from robustkd.losses import TemperatureCE
from robustkd.models import build_model, save_checkpoint
from robustkd.training import TrainConfig, is_out_of_memory, train

ROOT = Path(__file__).resolve().parents[1]
Usage = namedtuple("Usage", "total used free")
MiB = 1 << 20


@pytest.fixture
def disk(monkeypatch):
    """Pretend the disk has ``disk.free`` bytes free; records the folders asked about."""
    class FakeDisk:
        free = 10**15
        asked: list[Path] = []

    def fake_usage(path):
        FakeDisk.asked.append(Path(path))
        return Usage(2 * 10**15, 10**15, FakeDisk.free)

    monkeypatch.setattr(shutil, "disk_usage", fake_usage)
    return FakeDisk


def files_under(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) if path.exists() else []


# ---------------------------------------------------------------- disk

def test_ensure_free_space_needs_size_plus_margin(tmp_path, disk):
    target = tmp_path / "not" / "yet" / "there.pt"
    needed = 40 * MiB
    margin = rio.DISK_MARGIN_BYTES + needed // 20
    disk.free = needed + margin
    rio.ensure_free_space(target, needed)  # exactly enough
    assert disk.asked[-1] == tmp_path  # the nearest folder that exists
    disk.free = needed + margin - 1
    with pytest.raises(ResourceError) as err:
        rio.ensure_free_space(target, needed)
    msg = str(err.value)
    assert str(target) in msg and "40.0 MiB" in msg and f"{(needed + margin - 1) / MiB:.1f} MiB free" in msg
    assert "Nothing was written" in msg and "dvc gc" in msg and "dvc repro" in msg
    assert files_under(tmp_path) == []


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, disk):
    spec = dict(arch="lenet", channels=1, size=28, num_classes=10, mean=[0.3], std=[0.3], width="mnist")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.pt", build_model(**spec), spec, {"v": 1})
    before = (tmp_path / "m.pt").read_bytes()
    disk.free = rio.DISK_MARGIN_BYTES  # the margin alone: not enough for any file
    torch.manual_seed(1)
    with pytest.raises(ResourceError, match=r"m\.pt: not enough free disk space"):
        save_checkpoint(tmp_path / "m.pt", build_model(**spec), spec, {"v": 2})
    assert (tmp_path / "m.pt").read_bytes() == before
    assert files_under(tmp_path) == ["m.pt"]  # no temporary file left behind


def test_full_disk_stops_training_at_the_resume_save(tmp_path, disk):
    cfg = TrainConfig(epochs=2, batch_size=16, optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0,
                      schedule="constant", augment=False, seed=0)
    x, y = torch.randint(0, 255, (32, 1, 28, 28), dtype=torch.uint8), torch.arange(32) % 10
    disk.free = 0
    with pytest.raises(ResourceError, match=r"r\.pt: not enough free disk space"):
        train(build_model("lenet", 1, 28, 10, [0.3], [0.3]), TemperatureCE(1.0), (x, y), (x, y), cfg, "t",
              resume_path=tmp_path / "resume" / "r.pt")
    assert files_under(tmp_path) == []  # checked before the temporary file (or its folder) exists


def test_prepare_checks_all_splits_before_writing_any(tmp_path, disk, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "no-system-dataset")
    write_fashion_mnist_idx(tmp_path / "raw", n_train=30, n_test=10, seed=0)
    total = 40 * (28 * 28 + 8)  # 40 uint8 images + 40 int64 labels, over the three splits
    # Enough for train.pt on its own, one byte short for all three: only the up-front check can refuse.
    disk.free = total + rio.DISK_MARGIN_BYTES + total // 20 - 1
    out = tmp_path / "prepared"
    with pytest.raises(ResourceError, match=r"prepared: not enough free disk space"):
        data.prepare("fashion_mnist", tmp_path / "raw", out, val_size=6, seed=0)
    assert files_under(out) == []
    disk.free += 1
    data.prepare("fashion_mnist", tmp_path / "raw", out, val_size=6, seed=0)
    assert files_under(out) == ["meta.json", "test.pt", "train.pt", "val.pt"]


# ---------------------------------------------------------------- memory

CPU_OOM = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 4503599627370496 bytes. Error code 12 (Cannot allocate memory)")
CUDA_OOM = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                       "of 79.10 GiB of which 1.06 GiB is free.")


def raising_loss(err):
    def loss_fn(model, x, y):
        model(x)  # a real forward pass first, as an allocation failure would come mid-step
        raise err
    return loss_fn


def test_out_of_memory_recognised():
    assert is_out_of_memory(CPU_OOM) and is_out_of_memory(CUDA_OOM) and is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x10 and 3x5)"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only allocation errors, not any message


GROUP = dict(arch="lenet", width="mnist", epochs=2, batch_size=32, optimizer="adam", lr=1e-3, momentum=0.9,
             weight_decay=0.0, schedule="cosine", augment=False)
META = {"shape": [1, 28, 28], "num_classes": 10, "mean": [0.3], "std": [0.3], "files": {"train.pt": "0" * 64}}


@pytest.mark.parametrize("role, params_group, err, expected", [
    ("teacher", None, CPU_OOM, "teacher.batch_size"),
    ("surrogate", None, CUDA_OOM, "surrogate.batch_size"),
    ("assistant_2", "assistant", CUDA_OOM, "assistant.batch_size"),  # the assistants share one params group
])
def test_out_of_memory_names_the_batch_size_param_and_writes_nothing(tmp_path, monkeypatch, role, params_group,
                                                                     err, expected):
    monkeypatch.chdir(tmp_path)
    x, y = torch.randint(0, 255, (64, 1, 28, 28), dtype=torch.uint8), torch.arange(64) % 10
    with pytest.raises(ResourceError) as caught:
        roles.train_role(roles.RoleSpec(role, GROUP, 0, raising_loss(err), Path("models/m.pt"), Path("dvclive") / role,
                                        record={}, params_group=params_group),
                         roles.TrainingRun(META, (x, y), (x, y), cuda_deterministic=False))
    msg = str(caught.value)
    assert f"`{expected}` = 32" in msg and f"Lower `{expected}`" in msg and "e.g. to 16" in msg
    assert str(err).splitlines()[0][:40] in msg  # the allocator's own words, for the record
    assert files_under(tmp_path) == []  # no resume file, no dvclive folder, no checkpoint


def test_other_runtime_errors_are_not_disguised(tmp_path):
    x, y = torch.randint(0, 255, (32, 1, 28, 28), dtype=torch.uint8), torch.arange(32) % 10
    cfg = TrainConfig(**{k: GROUP[k] for k in ("epochs", "batch_size", "optimizer", "lr", "momentum",
                                                "weight_decay", "schedule", "augment")}, seed=0)
    bug = RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x10 and 3x5)")
    with pytest.raises(RuntimeError) as caught:
        train(build_model("lenet", 1, 28, 10, [0.3], [0.3]), raising_loss(bug), (x, y), (x, y), cfg, "t")
    assert caught.value is bug


# ---------------------------------------------------------------- cuda_deterministic

@pytest.fixture
def restore_torch_flags():
    env, det, bench = os.environ.get("CUBLAS_WORKSPACE_CONFIG"), torch.are_deterministic_algorithms_enabled(), \
        torch.backends.cudnn.benchmark
    yield
    if env is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = env
    torch.use_deterministic_algorithms(det)
    torch.backends.cudnn.benchmark = bench


def test_cuda_deterministic_changes_nothing_on_cpu(restore_torch_flags):
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = False
    for flag in (True, False):
        roles.configure_cuda_determinism(flag, torch.device("cpu"))
        assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_cuda_deterministic_sets_the_cuda_flags(restore_torch_flags):
    """Only the flags: the kernels they select need a GPU, which this machine lacks."""
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    torch.use_deterministic_algorithms(False)
    roles.configure_cuda_determinism(True, torch.device("cuda"))
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"

    torch.use_deterministic_algorithms(False)
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"  # the other valid setting is kept
    roles.configure_cuda_determinism(True, torch.device("cuda"))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"

    torch.use_deterministic_algorithms(False)
    roles.configure_cuda_determinism(False, torch.device("cuda"))
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark


def test_cuda_deterministic_is_a_param_of_the_training_stages_only():
    assert yaml.safe_load((ROOT / "params.yaml").read_text())["cuda_deterministic"] is False
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    using = {name for name, stage in stages.items() if "cuda_deterministic" in stage.get("params", [])}
    assert using == {"assistant", "student", "surrogate"}  # the teacher: through results/config/teacher.json
    from robustkd import teacher_config
    from robustkd.params import load
    assert "cuda_deterministic" in teacher_config.resolve(load(ROOT / "params.yaml"))
    for name in using:  # and each of those stages hands it to train_role, in the stage's TrainingRun
        assert "load_training_run(params" in (ROOT / "src" / f"{name}.py").read_text()
