"""Writers of small datasets in the REAL on-disk formats (IDX, CIFAR pickle batches, Tiny ImageNet zip).

Plain functions shared by the data tests and the end-to-end pipeline test. Every image carries a unique id in
its first two pixels (see ``pixel_id``), so tests can tell exactly which images ended up in which split.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
import re
import struct
import zipfile
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def pixel_id(x) -> np.ndarray:
    """Image ids written by ``write_fashion_mnist_idx``: pixel (0,0) + 256 * pixel (0,1) of channel 0."""
    x = np.asarray(x)
    if x.ndim == 4:  # N,C,H,W
        x = x[:, 0]
    return x[:, 0, 0].astype(np.int64) + 256 * x[:, 0, 1].astype(np.int64)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """IDX file (images N,H,W: magic 2051; labels N: magic 2049), gzipped when the name ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = {3: 2051, 1: 2049}[array.ndim]
    raw = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)
    return path


def make_idx_images(n: int, rng: np.random.Generator, first_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 images: a bright 2-row band whose position encodes the label, on low noise."""
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    x = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        x[i, 4 + 2 * label: 6 + 2 * label, 2:26] = 230
    ids = np.arange(first_id, first_id + n)
    x[:, 0, 0], x[:, 0, 1] = ids % 256, ids // 256
    return x, labels


def write_fashion_mnist_idx(raw_dir: Path, n_train: int, n_test: int, seed: int, gz: bool = True,
                            subdir: str = "FashionMNIST/raw") -> dict[str, np.ndarray]:
    """Write the four Fashion-MNIST IDX files into ``raw_dir/subdir`` (where ``load_raw`` looks first).

    Returns the arrays written: train_x (N,28,28 uint8), train_y, test_x, test_y. Train images have ids
    0..n_train-1, test images n_train..n_train+n_test-1 (``pixel_id``).
    """
    rng = np.random.default_rng(seed)
    train_x, train_y = make_idx_images(n_train, rng)
    test_x, test_y = make_idx_images(n_test, rng, first_id=n_train)
    folder = Path(raw_dir) / subdir
    ext = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{ext}", train_x)
    write_idx(folder / f"train-labels-idx1-ubyte{ext}", train_y)
    write_idx(folder / f"t10k-images-idx3-ubyte{ext}", test_x)
    write_idx(folder / f"t10k-labels-idx1-ubyte{ext}", test_y)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


# ---------------------------------------------------------------- CIFAR

def foolbox_data_dir() -> Path | None:
    """foolbox's bundled sample images (20 real CIFAR-10 and 20 CIFAR-100 PNGs); None when absent."""
    spec = importlib.util.find_spec("foolbox")  # locating the package does not import it
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "data"
    return d if d.is_dir() else None


def load_foolbox_pngs(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 N,3,32,32 in C,H,W order; y int64) of foolbox's ``<prefix>_<k>_<label>.png`` files, k order."""
    from PIL import Image

    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)_(\d+)\.png$")
    found = sorted((int(m[1]), int(m[2]), p) for p in foolbox_data_dir().iterdir() if (m := pattern.match(p.name)))
    x = np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for _, _, p in found])
    return np.ascontiguousarray(x), np.array([label for _, label, _ in found], dtype=np.int64)


def _dump(obj, path: Path, protocol: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)


def write_cifar10_batches(raw_dir: Path, x: np.ndarray, y: np.ndarray, n_test: int, protocol: int = 2) -> Path:
    """The official ``cifar-10-batches-py`` layout: data_batch_1..5 (train), test_batch, batches.meta.

    x is N,3,32,32 (C,H,W); each row of b"data" is the R, G, B planes flattened, as in the real files.
    The last ``n_test`` images form the test batch.
    """
    folder = Path(raw_dir) / "cifar-10-batches-py"
    flat = x.reshape(len(x), 3072)
    parts = np.array_split(np.arange(len(x) - n_test), 5)
    for i, idx in enumerate(parts, start=1):
        _dump({b"batch_label": f"training batch {i} of 5".encode(), b"labels": [int(v) for v in y[idx]],
               b"data": flat[idx], b"filenames": [f"img_{j}.png".encode() for j in idx]},
              folder / f"data_batch_{i}", protocol)
    test = np.arange(len(x) - n_test, len(x))
    _dump({b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in y[test]], b"data": flat[test],
           b"filenames": [f"img_{j}.png".encode() for j in test]}, folder / "test_batch", protocol)
    _dump({b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072},
          folder / "batches.meta", protocol)
    return folder


def write_cifar100(raw_dir: Path, x: np.ndarray, y: np.ndarray, n_test: int, protocol: int = 4) -> Path:
    """The official ``cifar-100-python`` layout: train, test, meta (fine and coarse labels)."""
    folder = Path(raw_dir) / "cifar-100-python"
    flat = x.reshape(len(x), 3072)
    for name, idx in (("train", np.arange(len(x) - n_test)), ("test", np.arange(len(x) - n_test, len(x)))):
        _dump({b"filenames": [f"img_{j}.png".encode() for j in idx], b"batch_label": f"{name} batch".encode(),
               b"fine_labels": [int(v) for v in y[idx]], b"coarse_labels": [int(v) // 5 for v in y[idx]],
               b"data": flat[idx]}, folder / name, protocol)
    _dump({b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
           b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)]}, folder / "meta", protocol)
    return folder


# ---------------------------------------------------------------- Tiny ImageNet

def _jpeg(img: np.ndarray, grey: bool = False) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    pil = Image.fromarray(img).convert("L") if grey else Image.fromarray(img)
    pil.save(buf, format="JPEG", quality=100)
    return buf.getvalue()


def write_tinyimagenet(raw_dir: Path, wnids: list[str], n_train_per_class: int, n_val: int, seed: int,
                       as_zip: bool = True) -> dict:
    """The official tiny-imagenet-200 layout, as ``raw_dir/tiny-imagenet-200.zip`` or an extracted folder.

    Images are smooth (flat colour + gentle gradient) so JPEG at quality 100 is nearly lossless; the first
    training image of each class is stored greyscale, as some real ones are. Returns the expected RawData
    fields as numpy arrays (x N,3,64,64) in loader order: classes in wnids.txt order, images by number.
    """
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 30, 64, dtype=np.float64)

    def image() -> np.ndarray:
        base = rng.integers(40, 200, size=3).astype(np.float64)
        return np.clip(base[None, None, :] + ramp[None, :, None], 0, 255).astype(np.uint8).repeat(64, 0)

    files: dict[str, bytes] = {}
    train_x, train_y = [], []
    for label, w in enumerate(wnids):
        for k in range(n_train_per_class):
            img, grey = image(), k == 0
            if grey:
                from PIL import Image
                img = np.asarray(Image.fromarray(img).convert("L").convert("RGB"))
            files[f"train/{w}/images/{w}_{k}.JPEG"] = _jpeg(img, grey)
            train_x.append(img)
            train_y.append(label)
        files[f"train/{w}/{w}_boxes.txt"] = b"".join(f"{w}_{k}.JPEG\t0\t0\t63\t63\n".encode()
                                                    for k in range(n_train_per_class))
    val_labels = rng.integers(0, len(wnids), size=n_val)
    test_x, lines = [], []
    for i, label in enumerate(val_labels):
        img = image()
        files[f"val/images/val_{i}.JPEG"] = _jpeg(img)
        test_x.append(img)
        lines.append(f"val_{i}.JPEG\t{wnids[label]}\t1\t2\t60\t61\n")
    files["val/val_annotations.txt"] = "".join(lines).encode()
    files["wnids.txt"] = "".join(f"{w}\n" for w in wnids).encode()
    names = {w: f"name of {w}, alias" for w in wnids}
    files["words.txt"] = "".join(f"{w}\t{t}\n" for w, t in {**names, "n99999999": "unused class"}.items()).encode()
    files["test/images/test_0.JPEG"] = _jpeg(image())  # official test set: no labels, must be ignored

    order = list(files)
    rng.shuffle(order)  # the loader must not depend on member order inside the zip
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    if as_zip:
        with zipfile.ZipFile(raw_dir / "tiny-imagenet-200.zip", "w") as zf:
            for name in order:
                zf.writestr(zipfile.ZipInfo(f"tiny-imagenet-200/{name}", date_time=(2015, 1, 1, 0, 0, 0)), files[name])
    else:
        for name in order:
            p = raw_dir / "tiny-imagenet-200" / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(files[name])
    return {
        "train_x": np.stack(train_x).transpose(0, 3, 1, 2), "train_y": np.array(train_y, dtype=np.int64),
        "test_x": np.stack(test_x).transpose(0, 3, 1, 2), "test_y": val_labels.astype(np.int64),
        "class_names": [names[w] for w in wnids],
    }
