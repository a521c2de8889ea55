"""Tests of robustkd.data on small files written in the real on-disk formats (see fixtures_data.py)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch

from fixtures_data import (
    CIFAR10_NAMES, foolbox_data_dir, load_foolbox_pngs, pixel_id, write_cifar10_batches, write_cifar100,
    write_fashion_mnist_idx, write_idx, write_tinyimagenet,
)
from robustkd import data
from robustkd.errors import DataError

REAL_FASHION_MNIST = data.SYSTEM_FASHION_MNIST_DIR  # captured before any test hides it
needs_foolbox = pytest.mark.skipif(foolbox_data_dir() is None, reason="foolbox sample images not installed")


@pytest.fixture
def no_system_data(monkeypatch, tmp_path):
    """Hide /usr/share/datasets/fashion-mnist so only the files a test writes are found."""
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "no-system-dataset")


@pytest.fixture
def fashion(tmp_path, no_system_data):
    raw = tmp_path / "raw"
    return raw, write_fashion_mnist_idx(raw, n_train=30, n_test=10, seed=0)


# ---------------------------------------------------------------- registry

def test_registry_and_unknown_name(tmp_path):
    assert set(data.DATASETS) == {"fashion_mnist", "mnist", "cifar10", "cifar100", "tinyimagenet", "imagenet"}
    assert data.DATASETS["tinyimagenet"] == data.DatasetSpec("tinyimagenet", 200, 3, 64)
    assert data.DATASETS["fashion_mnist"] == data.DatasetSpec("fashion_mnist", 10, 1, 28)
    with pytest.raises(DataError, match=r"dataset.*'imagenet21k'.*fashion_mnist.*tinyimagenet"):
        data.load_raw("imagenet21k", tmp_path)


# ---------------------------------------------------------------- IDX

def test_idx_round_trip(fashion):
    raw_dir, written = fashion
    raw = data.load_raw("fashion_mnist", raw_dir)
    assert raw.train_x.dtype == torch.uint8 and raw.train_x.shape == (30, 1, 28, 28) and raw.train_x.is_contiguous()
    assert raw.train_y.dtype == torch.int64 and raw.test_x.shape == (10, 1, 28, 28)
    np.testing.assert_array_equal(raw.train_x[:, 0].numpy(), written["train_x"])
    np.testing.assert_array_equal(raw.train_y.numpy(), written["train_y"])
    np.testing.assert_array_equal(raw.test_x[:, 0].numpy(), written["test_x"])
    np.testing.assert_array_equal(raw.test_y.numpy(), written["test_y"])
    assert raw.class_names[0] == "T-shirt/top" and len(raw.class_names) == 10
    assert len(raw.sources) == 4 and all(len(h) == 64 for h in raw.sources.values())


def test_idx_uncompressed_and_alternative_folder(tmp_path, no_system_data):
    written = write_fashion_mnist_idx(tmp_path, 12, 4, seed=1, gz=False, subdir="mnist")
    raw = data.load_raw("mnist", tmp_path)
    np.testing.assert_array_equal(raw.train_x[:, 0].numpy(), written["train_x"])
    np.testing.assert_array_equal(raw.test_y.numpy(), written["test_y"])


def test_idx_bad_magic_names_file(fashion):
    raw_dir, written = fashion
    bad = raw_dir / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    write_idx(bad, written["train_x"])  # an images file (magic 2051) where labels (2049) belong
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*magic number 2051, expected 2049"):
        data.load_raw("fashion_mnist", raw_dir)


def test_idx_truncated_file(fashion):
    raw_dir, _ = fashion
    path = raw_dir / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    (raw_dir / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz").unlink()
    path.write_bytes(struct.pack(">IIII", 2051, 10, 28, 28) + bytes(100))  # header promises 7840 bytes
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*7840 bytes.*100 data bytes"):
        data.load_raw("fashion_mnist", raw_dir)


def test_offline_missing_data_explains_fixes(tmp_path, no_system_data):
    with pytest.raises(DataError) as err:
        data.load_raw("fashion_mnist", tmp_path, download=False)
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "data.download" in msg
    assert str(tmp_path / "FashionMNIST" / "raw") in msg and "no-system-dataset" in msg


@pytest.mark.skipif(not data.SYSTEM_FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist package not installed")
def test_real_fashion_mnist(tmp_path):
    raw = data.load_raw("fashion_mnist", tmp_path / "empty")
    assert raw.train_x.shape == (60000, 1, 28, 28) and raw.test_x.shape == (10000, 1, 28, 28)
    assert raw.train_x.dtype == torch.uint8 and raw.train_y.dtype == torch.int64
    assert sorted(raw.train_y.unique().tolist()) == list(range(10)) and len(raw.class_names) == 10
    assert torch.bincount(raw.train_y).tolist() == [6000] * 10


@pytest.mark.skipif(not data.SYSTEM_FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist package not installed")
def test_real_fashion_mnist_files_have_published_md5s():
    """The Debian package's four files match their listed md5s (Zalando's are listed too, for the original .gz)."""
    for name in data.IDX_FILES.values():
        path = data.SYSTEM_FASHION_MNIST_DIR / name
        assert data.check_published_md5("fashion_mnist", path, data.OFFICIAL_COUNTS[name.removesuffix(".gz")])


def _copy_real_labels(tmp_path, no_system_data, gz=True):
    """A raw folder with a small synthetic training set and the real Debian test set (labels: 5 kB .gz)."""
    raw_dir = tmp_path / "raw"
    write_fashion_mnist_idx(raw_dir, n_train=30, n_test=10, seed=0)
    folder = raw_dir / "FashionMNIST" / "raw"
    shutil.copy(REAL_FASHION_MNIST / "t10k-images-idx3-ubyte.gz", folder / "t10k-images-idx3-ubyte.gz")
    real = (REAL_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    if gz:
        (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(real)
        return raw_dir, folder / "t10k-labels-idx1-ubyte.gz"
    import gzip
    (folder / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(real))
    return raw_dir, folder / "t10k-labels-idx1-ubyte"


@pytest.mark.skipif(not data.SYSTEM_FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist package not installed")
def test_damaged_gz_is_a_one_line_error_naming_the_file(tmp_path, no_system_data):
    """Flipped bytes in a real .gz (zlib.error, CRC error, bad header) and truncations: a DataError, never zlib's."""
    import random
    import zlib  # noqa: F401 - the exception this used to leak

    raw_dir, path = _copy_real_labels(tmp_path, no_system_data)
    good = path.read_bytes()
    assert len(data.load_raw("fashion_mnist", raw_dir).test_y) == 10000  # the intact copy loads
    cases = [bytes(good[:n]) for n in (5, len(good) // 2, len(good) - 4)]
    for pos in random.Random(0).sample(range(len(good)), 20):
        damaged = bytearray(good)
        damaged[pos] ^= 0xFF
        cases.append(bytes(damaged))
    for damaged in cases:
        path.write_bytes(damaged)
        with pytest.raises(DataError) as err:
            data.load_raw("fashion_mnist", raw_dir)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(not data.SYSTEM_FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist package not installed")
def test_full_size_file_with_another_md5_is_refused(tmp_path, no_system_data):
    """A flipped label in an uncompressed copy still parses (a valid label): only the published md5 catches it."""
    raw_dir, path = _copy_real_labels(tmp_path, no_system_data, gz=False)
    good = path.read_bytes()
    assert len(data.load_raw("fashion_mnist", raw_dir).test_y) == 10000
    damaged = bytearray(good)
    damaged[100] = (damaged[100] + 1) % 10
    path.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: md5 .* not the published md5.*damaged"):
        data.load_raw("fashion_mnist", raw_dir)


def test_subset_files_have_no_published_md5_to_match(fashion):
    """Files with fewer items than the official ones (test fixtures, subsets) are not held to the published md5."""
    raw_dir, _ = fashion
    path = raw_dir / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    assert data.check_published_md5("fashion_mnist", path, 10) is False
    with pytest.raises(DataError, match="not the published md5"):
        data.check_published_md5("fashion_mnist", path, 10000)


# ---------------------------------------------------------------- CIFAR

@needs_foolbox
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_round_trip(tmp_path, protocol):
    x, y = load_foolbox_pngs("cifar10")
    assert x.shape == (20, 3, 32, 32)
    write_cifar10_batches(tmp_path, x, y, n_test=4, protocol=protocol)
    raw = data.load_raw("cifar10", tmp_path)
    # Pixels come back in C,H,W order: compare against the PNGs decoded independently.
    np.testing.assert_array_equal(raw.train_x.numpy(), x[:16])
    np.testing.assert_array_equal(raw.test_x.numpy(), x[16:])
    np.testing.assert_array_equal(raw.train_y.numpy(), y[:16])
    np.testing.assert_array_equal(raw.test_y.numpy(), y[16:])
    assert raw.class_names == CIFAR10_NAMES and raw.train_x.is_contiguous()
    assert len(raw.sources) == 7


@needs_foolbox
def test_cifar100_round_trip(tmp_path):
    x, y = load_foolbox_pngs("cifar100")
    write_cifar100(tmp_path, x, y, n_test=5)
    raw = data.load_raw("cifar100", tmp_path)
    np.testing.assert_array_equal(raw.train_x.numpy(), x[:15])
    np.testing.assert_array_equal(raw.test_x.numpy(), x[15:])
    np.testing.assert_array_equal(raw.train_y.numpy(), y[:15])  # fine labels, not coarse
    np.testing.assert_array_equal(raw.test_y.numpy(), y[15:])
    assert len(raw.class_names) == 100 and raw.class_names[49] == "fine_49"


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@needs_foolbox
def test_cifar_malicious_pickle_refused(tmp_path):
    x, y = load_foolbox_pngs("cifar10")
    folder = write_cifar10_batches(tmp_path, x, y, n_test=4)
    marker = tmp_path / "pwned"
    batch = folder / "data_batch_3"
    with open(batch, "rb") as fh:
        d = pickle.load(fh)
    d[b"extra"] = _Payload(marker)
    with open(batch, "wb") as fh:
        pickle.dump(d, fh)
    with pytest.raises(DataError, match=r"data_batch_3: refused to unpickle.*(posix|os)\.system"):
        data.load_raw("cifar10", tmp_path)
    assert not marker.exists()


def test_cifar_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"cifar100: raw files missing.*cifar-100-python.*data\.download"):
        data.load_raw("cifar100", tmp_path)


# ---------------------------------------------------------------- Tiny ImageNet

@pytest.mark.parametrize("as_zip", [True, False])
def test_tinyimagenet(tmp_path, monkeypatch, as_zip):
    monkeypatch.setitem(data.DATASETS, "tinyimagenet", data.DatasetSpec("tinyimagenet", 3, 3, 64))
    wnids = ["n03000000", "n01000000", "n02000000"]  # not sorted: labels must follow wnids.txt order
    want = write_tinyimagenet(tmp_path, wnids, n_train_per_class=3, n_val=7, seed=0, as_zip=as_zip)
    assert not as_zip or not (tmp_path / "tiny-imagenet-200").exists()
    raw = data.load_raw("tinyimagenet", tmp_path)
    assert raw.train_x.shape == (9, 3, 64, 64) and raw.test_x.shape == (7, 3, 64, 64)
    assert raw.train_x.dtype == torch.uint8 and raw.train_x.is_contiguous()
    np.testing.assert_array_equal(raw.train_y.numpy(), want["train_y"])
    np.testing.assert_array_equal(raw.test_y.numpy(), want["test_y"])  # via val_annotations.txt -> wnids order
    assert raw.class_names == want["class_names"]
    for got, ref in ((raw.train_x, want["train_x"]), (raw.test_x, want["test_x"])):
        assert np.abs(got.numpy().astype(int) - ref.astype(int)).max() <= 4  # JPEG quality 100
    assert len(raw.sources) == 1


def test_tinyimagenet_checks_class_count_and_missing(tmp_path):
    write_tinyimagenet(tmp_path, ["n01000000", "n02000000"], 1, 2, seed=0)
    with pytest.raises(DataError, match="2 class names, expected 200"):
        data.load_raw("tinyimagenet", tmp_path)
    with pytest.raises(DataError, match=r"tiny-imagenet-200\.zip.*data\.download"):
        data.load_raw("tinyimagenet", tmp_path / "empty")


# ---------------------------------------------------------------- prepare / load_split

def _prepare(raw_dir, out, seed=0, **kw):
    return data.prepare("fashion_mnist", raw_dir, out, val_size=kw.pop("val_size", 6), seed=seed, **kw)


def test_prepare_splits_and_meta(fashion, tmp_path):
    raw_dir, written = fashion
    out = tmp_path / "prepared"
    meta = _prepare(raw_dir, out)
    assert meta == data.load_meta(out) == json.loads((out / "meta.json").read_text())
    assert meta["splits"] == {"train": 24, "val": 6, "test": 10}
    assert meta["dataset"] == "fashion_mnist" and meta["num_classes"] == 10 and meta["shape"] == [1, 28, 28]
    assert meta["seed"] == 0 and meta["val_size"] == 6 and len(meta["sources"]) == 4
    assert set(meta["files"]) == {"train.pt", "val.pt", "test.pt"}

    (tx, ty), (vx, vy), (sx, sy) = (data.load_split(out, s) for s in ("train", "val", "test"))
    train_ids, val_ids = pixel_id(tx), pixel_id(vx)
    assert not set(train_ids) & set(val_ids)
    assert sorted([*train_ids, *val_ids]) == list(range(30))
    np.testing.assert_array_equal(ty.numpy(), written["train_y"][train_ids])  # labels follow their images
    np.testing.assert_array_equal(vy.numpy(), written["train_y"][val_ids])
    np.testing.assert_array_equal(sx[:, 0].numpy(), written["test_x"])
    np.testing.assert_array_equal(sy.numpy(), written["test_y"])

    train_pixels = written["train_x"][train_ids] / 255.0
    assert meta["mean"] == pytest.approx([train_pixels.mean()], abs=1e-12)
    assert meta["std"] == pytest.approx([train_pixels.std()], abs=1e-12)


def test_prepare_deterministic_and_seeded(fashion, tmp_path):
    raw_dir, _ = fashion
    _prepare(raw_dir, tmp_path / "a", seed=3)
    _prepare(raw_dir, tmp_path / "b", seed=3)
    _prepare(raw_dir, tmp_path / "c", seed=4)
    for name in ("train.pt", "val.pt", "test.pt", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert set(pixel_id(data.load_split(tmp_path / "a", "val")[0])) != set(pixel_id(data.load_split(tmp_path / "c", "val")[0]))
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_prepare_subsets(fashion, tmp_path):
    raw_dir, _ = fashion
    meta = _prepare(raw_dir, tmp_path / "p", train_subset=10, test_subset=5)
    assert meta["splits"] == {"train": 10, "val": 6, "test": 5}
    tx, _ = data.load_split(tmp_path / "p", "train")
    vx, _ = data.load_split(tmp_path / "p", "val")
    sx, _ = data.load_split(tmp_path / "p", "test")
    assert not set(pixel_id(tx)) & set(pixel_id(vx))
    assert len(set(pixel_id(sx))) == 5 and set(pixel_id(sx)) <= set(range(30, 40))


@pytest.mark.parametrize("kw, param", [
    ({"val_size": 0}, "data.val_size"), ({"val_size": 30}, "data.val_size"), ({"val_size": 2.5}, "data.val_size"),
    ({"train_subset": 25}, "data.train_subset"), ({"test_subset": 11}, "data.test_subset"),
    ({"test_subset": 0}, "data.test_subset"),
])
def test_prepare_rejects_bad_params(fashion, tmp_path, kw, param):
    raw_dir, _ = fashion
    with pytest.raises(DataError, match=param.replace(".", r"\.")):
        _prepare(raw_dir, tmp_path / "p", **kw)
    assert not (tmp_path / "p" / "meta.json").exists()


@pytest.fixture
def prepared(fashion, tmp_path):
    out = tmp_path / "prepared"
    _prepare(fashion[0], out)
    return out


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_load_split_detects_damage(prepared, damage):
    path = prepared / "train.pt"
    blob = bytearray(path.read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0x01
        path.write_bytes(bytes(blob))
    elif damage == "truncate":
        path.write_bytes(bytes(blob[: len(blob) // 2]))
    else:
        path.unlink()
    with pytest.raises(DataError, match=r"train\.pt.*dvc repro --force prepare"):
        data.load_split(prepared, "train")
    data.load_split(prepared, "val")  # the other splits are unaffected


def test_load_split_checks_dtype_even_with_matching_hash(prepared):
    x, y = data.load_split(prepared, "val")
    torch.save({"x": x.float(), "y": y}, prepared / "val.pt")
    meta = json.loads((prepared / "meta.json").read_text())
    meta["files"]["val.pt"] = data.sha256_file(prepared / "val.pt")
    (prepared / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"val\.pt: expected .*uint8.*torch\.float32"):
        data.load_split(prepared, "val")


def test_load_meta_missing(prepared, tmp_path):
    with pytest.raises(DataError, match=r"meta\.json.*dvc repro prepare.*python src/prepare\.py"):
        data.load_meta(tmp_path / "nowhere")
    shutil.copytree(prepared, tmp_path / "copy")
    (tmp_path / "copy" / "meta.json").unlink()
    with pytest.raises(DataError, match=r"meta\.json.*dvc repro prepare"):
        data.load_split(tmp_path / "copy", "train")
    with pytest.raises(DataError, match=r"split.*'holdout'"):
        data.load_split(prepared, "holdout")
