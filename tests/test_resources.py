"""Resource checks: a full disk stops a stage with a ResourceError before it writes anything."""
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from fixtures_data import write_fashion_mnist_idx
from robustkd import data, io as rio
from robustkd.errors import ResourceError
from robustkd.losses import TemperatureCE
from robustkd.models import build_model, save_checkpoint
from robustkd.training import TrainConfig, train

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
