"""Dataset registry, raw-format loaders, ``prepare`` (seeded splits) and checked loading of prepared data.

Every loader has an offline path (files already on disk) and keeps the real download code for users with
internet (``download=True``). Raw files are parsed here, not through torchvision, so offline use needs nothing
but the files, and pickled CIFAR batches are unpickled with a whitelist (a crafted file cannot run code).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, DataError
from .io import atomic_torch_save, atomic_write_json, ensure_free_space, safe_torch_load, sha256_file


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    channels: int
    size: int  # images are channels x size x size


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec("fashion_mnist", 10, 1, 28),
        DatasetSpec("mnist", 10, 1, 28),
        DatasetSpec("cifar10", 10, 3, 32),
        DatasetSpec("cifar100", 100, 3, 32),
        DatasetSpec("tinyimagenet", 200, 3, 64),
        # Streamed (robustkd.imagefolder): 1000 classes, images cropped to `data.image_size` (default 224).
        DatasetSpec("imagenet", 1000, 3, 224),
    )
}

SPLITS = ("train", "val", "test")
REGENERATE = "Regenerate it with `dvc repro --force prepare` (or `python src/prepare.py`)."
# Where Debian's `dataset-fashion-mnist` package puts the files; a module constant so tests can point it away.
SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINYIMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"

# Published md5s of the raw files, by dataset and file name; checked by ``check_published_md5`` whenever a file holds
# as many items as the official one (a subset or a test fixture has no published checksum). Only values verified
# on this machine are listed:
# * Fashion-MNIST .gz: Zalando's README (github.com/zalandoresearch/fashion-mnist), the same values as torchvision
#   0.x's FashionMNIST.resources; and the files of the Debian package `dataset-fashion-mnist`, which are the same
#   deflate streams re-gzipped without the file name in the header (each is exactly len(name) + 1 bytes shorter), so
#   they have other md5s: those below match the package's own /var/lib/dpkg/info/dataset-fashion-mnist.md5sums.
#   Uncompressed IDX files: the md5s of the Debian files decompressed (not published by Zalando).
# * MNIST .gz: torchvision's MNIST.resources (LeCun's files as mirrored by torchvision). Uncompressed: none known.
# * CIFAR-10 / CIFAR-100 python batches: torchvision's CIFAR10/CIFAR100 train_list, test_list and meta md5s (of the
#   files inside the official tarballs; the tarballs themselves are not read here).
# * Tiny ImageNet: TINYIMAGENET_MD5 is checked when the zip is downloaded; a zip's members carry CRCs of their own.
PUBLISHED_MD5: dict[str, dict[str, set[str]]] = {
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": {"8d4fb7e6c68d591d4c3dfef9ec88bf0d", "cf8536b0aa1a6ac5fa3f23001093305c"},
        "train-labels-idx1-ubyte.gz": {"25c81989df183df01b3e8a0aad5dffbe", "10bea18fdb374794d4bb42e356e600c9"},
        "t10k-images-idx3-ubyte.gz": {"bef4ecab320f06d8554ea6380940ec79", "f78720b4224f21cce2f2ccf2d7a94c9a"},
        "t10k-labels-idx1-ubyte.gz": {"bb300cfdad3c16e7a12a480ee83cd310", "0d30e22e447f3c33dab9ed536400ac01"},
        "train-images-idx3-ubyte": {"f4a8712d7a061bf5bd6d2ca38dc4d50a"},
        "train-labels-idx1-ubyte": {"9018921c3c673c538a1fc5bad174d6f9"},
        "t10k-images-idx3-ubyte": {"8181f5470baa50b63fa0f6fddb340f0a"},
        "t10k-labels-idx1-ubyte": {"15d484375f8d13e6eb1aabb0c3f46965"},
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": {"f68b3c2dcbeaaa9fbdd348bbdeb94873"},
        "train-labels-idx1-ubyte.gz": {"d53e105ee54ea40749a09fcbcd1e9432"},
        "t10k-images-idx3-ubyte.gz": {"9fb629c4189551a2d022fa330f9573f3"},
        "t10k-labels-idx1-ubyte.gz": {"ec29112dd5afa0611ce80d1b7f02629c"},
    },
    "cifar10": {
        "data_batch_1": {"c99cafc152244af753f735de768cd75f"}, "data_batch_2": {"d4bba439e000b95fd0a9bffe97cbabec"},
        "data_batch_3": {"54ebc095f3ab1f0389bbae665268c751"}, "data_batch_4": {"634d18415352ddfa80567beed471001a"},
        "data_batch_5": {"482c414d41f54cd18b22e5b47cb7c3cb"}, "test_batch": {"40351d587109b95175f43aff81a1287e"},
        "batches.meta": {"5ff9c542aee3614f3951f8cda6e48888"},
    },
    "cifar100": {
        "train": {"16019d7e3df5f24257cddd939b257f8d"}, "test": {"f0ef6b0ae62326f3e7ffdfab6717acfc"},
        "meta": {"7973b15100ade9c7d40fb424638fde48"},
    },
}
# How many items the official file holds: a file that holds as many must have a published md5 (if one is known).
OFFICIAL_COUNTS = {"train-images-idx3-ubyte": 60_000, "train-labels-idx1-ubyte": 60_000,
                   "t10k-images-idx3-ubyte": 10_000, "t10k-labels-idx1-ubyte": 10_000,
                   "data_batch_1": 10_000, "data_batch_2": 10_000, "data_batch_3": 10_000, "data_batch_4": 10_000,
                   "data_batch_5": 10_000, "test_batch": 10_000, "train": 50_000, "test": 10_000}


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_published_md5(dataset: str, path: Path, n_items: int) -> bool:
    """True if ``path`` has a published md5 of its file name; a DataError if it holds as many items as the official
    file but matches none (a damaged or altered copy); False when no check applies (a subset, or no md5 known)."""
    path = Path(path)
    known = PUBLISHED_MD5.get(dataset, {}).get(path.name)
    if not known:
        return False
    md5 = md5_file(path)
    if md5 in known:
        return True
    if n_items == OFFICIAL_COUNTS.get(path.name.removesuffix(".gz")):
        raise DataError(f"{path}: md5 {md5} is not the published md5 of {dataset}'s {path.name} "
                        f"({' or '.join(sorted(known))}), though it holds the official {n_items} items: the file is "
                        f"damaged or altered. Delete it and get the official file again (see docs/data.md).")
    return False


FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@dataclass
class RawData:
    train_x: torch.Tensor  # uint8, N x C x H x W, contiguous
    train_y: torch.Tensor  # int64, N
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    sources: dict[str, str] = field(default_factory=dict)  # source file path -> sha256


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"dataset: unknown dataset {name!r}; allowed values: {', '.join(DATASETS)}.")
    return DATASETS[name]


def load_raw(name: str, raw_dir: Path, download: bool = False) -> RawData:
    """Read the official raw files of dataset ``name`` under ``raw_dir`` (downloading them first if asked)."""
    spec = get_spec(name)
    raw_dir = Path(raw_dir)
    if name == "imagenet":
        raise DataError("imagenet: no in-memory loader (1.28M images do not fit in memory); it is streamed from its "
                        "image files: `data.loader: auto` or `stream` (docs/data.md).")
    loader = {"fashion_mnist": _load_idx_dataset, "mnist": _load_idx_dataset, "cifar10": _load_cifar,
              "cifar100": _load_cifar, "tinyimagenet": _load_tinyimagenet}[name]
    raw = loader(name, raw_dir, download)
    _check_raw(raw, spec)
    return raw


def _check_raw(raw: RawData, spec: DatasetSpec) -> None:
    shape = (spec.channels, spec.size, spec.size)
    for split, x, y in (("train", raw.train_x, raw.train_y), ("test", raw.test_x, raw.test_y)):
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != shape or y.dtype != torch.int64 or len(x) != len(y):
            raise DataError(f"{spec.name} raw {split} data: expected uint8 N x {list(shape)} images with as many "
                            f"int64 labels; got {x.dtype} {list(x.shape)} and {y.dtype} {list(y.shape)}.")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
            raise DataError(f"{spec.name} raw {split} labels outside [0, {spec.num_classes - 1}].")
    if len(raw.class_names) != spec.num_classes:
        raise DataError(f"{spec.name}: found {len(raw.class_names)} class names, expected {spec.num_classes}.")


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

IDX_FILES = {  # our key -> official file name (also accepted without .gz)
    "train_x": "train-images-idx3-ubyte.gz", "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz", "test_y": "t10k-labels-idx1-ubyte.gz",
}
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one IDX file (gzipped or not): uint8 images (N,H,W) for magic 2051, labels (N,) for 2049."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as err:  # a flipped byte in a .gz: zlib.error or CRC
        raise DataError(f"{path}: cannot read IDX file, corrupted or truncated ({type(err).__name__}: {err}). "
                        f"Delete it and get the official file again (see docs/data.md).") from None
    ndim = 3 if magic == IDX_IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header.")
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        raise DataError(f"{path}: bad IDX magic number {found}, expected {magic} "
                        f"({'images' if ndim == 3 else 'labels'} file). Wrong or corrupted file.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(dims)):
        raise DataError(f"{path}: IDX header says {list(dims)} ({int(np.prod(dims))} bytes) "
                        f"but {len(raw) - header} data bytes follow. Truncated or corrupted file.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx_search_dirs(name: str, raw_dir: Path) -> list[Path]:
    if name == "fashion_mnist":
        return [raw_dir / "FashionMNIST" / "raw", raw_dir / "fashion-mnist", SYSTEM_FASHION_MNIST_DIR]
    return [raw_dir / "MNIST" / "raw", raw_dir / "mnist"]


def _find_idx_files(dirs: list[Path]) -> dict[str, Path] | None:
    """The first folder holding all four files (each gzipped or not) wins."""
    for d in dirs:
        found = {}
        for key, fname in IDX_FILES.items():
            for cand in (d / fname, d / fname[: -len(".gz")]):
                if cand.is_file():
                    found[key] = cand
                    break
        if len(found) == len(IDX_FILES):
            return found
    return None


def _load_idx_dataset(name: str, raw_dir: Path, download: bool) -> RawData:
    dirs = _idx_search_dirs(name, raw_dir)
    files = _find_idx_files(dirs)
    if files is None and download:
        import torchvision  # lazy: only needed online

        cls = torchvision.datasets.FashionMNIST if name == "fashion_mnist" else torchvision.datasets.MNIST
        for train in (True, False):
            cls(str(raw_dir), train=train, download=True)  # writes raw_dir/<Class>/raw/
        files = _find_idx_files(dirs)
    if files is None:
        sub = "FashionMNIST" if name == "fashion_mnist" else "MNIST"
        apt = "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or " if name == "fashion_mnist" else ""
        raise DataError(
            f"{name}: raw IDX files not found (need {', '.join(IDX_FILES.values())}, gzipped or not). "
            f"Searched: {', '.join(str(d) for d in dirs)}. Fix: {apt}copy the four files to "
            f"{raw_dir / sub / 'raw'}/, or set `data.download: true` in params.yaml (needs internet).")
    arrays = {k: read_idx(p, IDX_IMAGES_MAGIC if k.endswith("_x") else IDX_LABELS_MAGIC) for k, p in files.items()}
    for k, p in files.items():
        check_published_md5(name, p, len(arrays[k]))
    for split in ("train", "test"):
        if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
            raise DataError(f"{files[split + '_x']} has {len(arrays[split + '_x'])} images but "
                            f"{files[split + '_y']} has {len(arrays[split + '_y'])} labels.")
    x = {k: torch.from_numpy(arrays[k].copy()).unsqueeze(1).contiguous() for k in ("train_x", "test_x")}
    y = {k: torch.from_numpy(arrays[k].astype(np.int64)) for k in ("train_y", "test_y")}
    names = FASHION_MNIST_CLASSES if name == "fashion_mnist" else [str(i) for i in range(10)]
    return RawData(x["train_x"], y["train_y"], x["test_x"], y["test_y"], list(names),
                   {str(p): sha256_file(p) for p in files.values()})


# ---------------------------------------------------------------- CIFAR (python pickle batches)

def _numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core", "numpy._core"):  # files pickled under numpy 1.x or 2.x
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol-5 array pickles
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    allowed[("_codecs", "encode")] = __import__("codecs").encode  # how protocol <= 2 pickles store bytes
    for mod in ("builtins", "__builtin__"):
        for b in (dict, list, tuple, bytes, bytearray, str, int, float, bool):
            allowed[(mod, b.__name__)] = b
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Only the globals a pickled numpy array and plain containers need; anything else is refused."""

    allowed = _numpy_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def load_pickle_restricted(path: Path) -> Any:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _RestrictedUnpickler(fh, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"{path}: refused to unpickle: {err}. Only numpy arrays and plain containers are "
                        f"accepted; the file is not an official CIFAR batch. Re-download it.") from None
    except (OSError, EOFError, ValueError, TypeError, struct.error) as err:
        raise DataError(f"{path}: cannot unpickle ({type(err).__name__}: {err}). Corrupted file; re-download it.") from None


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    d = load_pickle_restricted(path)
    data = d.get(b"data") if isinstance(d, dict) else None
    labels = d.get(label_key) if isinstance(d, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
            or labels is None or len(labels) != len(data):
        raise DataError(f"{path}: not a CIFAR batch (need {{b'data': uint8 N x 3072, {label_key!r}: N labels}}).")
    # Each row is 1024 R, 1024 G, 1024 B values, each a row-major 32x32 plane: already C,H,W order.
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _load_cifar(name: str, raw_dir: Path, download: bool) -> RawData:
    if name == "cifar10":
        folder, train_files, meta_file = raw_dir / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "batches.meta"
        label_key, names_key = b"labels", b"label_names"
    else:
        folder, train_files, meta_file = raw_dir / "cifar-100-python", ["train"], "meta"
        label_key, names_key = b"fine_labels", b"fine_label_names"
    needed = [folder / f for f in (*train_files, "test" if name == "cifar100" else "test_batch", meta_file)]
    if not all(p.is_file() for p in needed) and download:
        import torchvision  # lazy: only needed online

        (torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100)(str(raw_dir), download=True)
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise DataError(f"{name}: raw files missing: {', '.join(missing)}. Fix: extract the official python "
                        f"version archive into {raw_dir}/, or set `data.download: true` in params.yaml (needs internet).")
    train = [_cifar_batch(p, label_key) for p in needed[:-2]]
    test_x, test_y = _cifar_batch(needed[-2], label_key)
    for p, n in zip(needed[:-1], [len(b[1]) for b in train] + [len(test_y)]):
        check_published_md5(name, p, n)
    meta = load_pickle_restricted(needed[-1])
    names = meta.get(names_key) if isinstance(meta, dict) else None
    if not isinstance(names, list):
        raise DataError(f"{needed[-1]}: no {names_key!r} list of class names.")
    return RawData(
        torch.from_numpy(np.concatenate([b[0] for b in train])).contiguous(),
        torch.from_numpy(np.concatenate([b[1] for b in train])),
        torch.from_numpy(test_x.copy()), torch.from_numpy(test_y),  # copy: unpickled arrays may be read-only
        [n.decode() if isinstance(n, bytes) else str(n) for n in names],
        {str(p): sha256_file(p) for p in needed},
    )


# ---------------------------------------------------------------- Tiny ImageNet (zip or extracted folder)

class _TinyImageNetSource:
    """Read members of tiny-imagenet-200/ from the official zip (no extraction) or an extracted folder."""

    def __init__(self, raw_dir: Path):
        self.zip_path, self.folder = raw_dir / "tiny-imagenet-200.zip", raw_dir / "tiny-imagenet-200"
        self.zip = zipfile.ZipFile(self.zip_path) if self.zip_path.is_file() else None
        # A folder has no single file to hash: hash every member read instead (we read them all anyway).
        self.digest = hashlib.sha256()

    def names(self, prefix: str) -> list[str]:
        if self.zip is not None:
            return [n[len("tiny-imagenet-200/"):] for n in self.zip.namelist()
                    if n.startswith("tiny-imagenet-200/" + prefix) and not n.endswith("/")]
        base = self.folder / prefix
        return [p.relative_to(self.folder).as_posix() for p in base.iterdir() if p.is_file()] if base.is_dir() else []

    def has(self, member: str) -> bool:
        if self.zip is not None:
            try:
                self.zip.getinfo("tiny-imagenet-200/" + member)
                return True
            except KeyError:
                return False
        return (self.folder / member).is_file()

    def read(self, member: str) -> bytes:
        try:
            if self.zip is not None:
                return self.zip.read("tiny-imagenet-200/" + member)
            data = (self.folder / member).read_bytes()
        except (KeyError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as err:
            raise DataError(f"{self.where(member)}: cannot read ({err}). Incomplete or corrupted Tiny ImageNet; "
                            f"re-download {TINYIMAGENET_URL}.") from None
        self.digest.update(member.encode() + b"\0" + data)
        return data

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def where(self, member: str) -> str:
        return f"{self.zip_path}:tiny-imagenet-200/{member}" if self.zip is not None else str(self.folder / member)

    def sources(self) -> dict[str, str]:
        return {str(self.zip_path): sha256_file(self.zip_path)} if self.zip is not None \
            else {str(self.folder): self.digest.hexdigest()}


def _decode_jpegs(src: _TinyImageNetSource, members: list[str]) -> torch.Tensor:
    from PIL import Image

    out = np.empty((len(members), 64, 64, 3), dtype=np.uint8)
    for i, m in enumerate(members):
        try:
            with Image.open(io.BytesIO(src.read(m))) as img:
                arr = np.asarray(img.convert("RGB"))  # some Tiny ImageNet JPEGs are greyscale
        except OSError as err:
            raise DataError(f"{src.where(m)}: cannot decode image ({err}).") from None
        if arr.shape != (64, 64, 3):
            raise DataError(f"{src.where(m)}: image is {arr.shape[1]}x{arr.shape[0]}, Tiny ImageNet images are 64x64.")
        out[i] = arr
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _natural_key(member: str) -> tuple[str, int]:
    stem = member.rsplit("/", 1)[-1].rsplit(".", 1)[0]  # n01443537_12 / val_12
    head, _, num = stem.rpartition("_")
    return (head, int(num)) if num.isdigit() else (stem, -1)


def _load_tinyimagenet(name: str, raw_dir: Path, download: bool) -> RawData:
    zip_path, folder = raw_dir / "tiny-imagenet-200.zip", raw_dir / "tiny-imagenet-200"
    if not zip_path.is_file() and not folder.is_dir() and download:
        from torchvision.datasets.utils import download_url  # lazy: only needed online

        download_url(TINYIMAGENET_URL, str(raw_dir), md5=TINYIMAGENET_MD5)
    if not zip_path.is_file() and not folder.is_dir():
        raise DataError(f"{name}: neither {zip_path} nor {folder}/ exists. Fix: download {TINYIMAGENET_URL} into "
                        f"{raw_dir}/, or set `data.download: true` in params.yaml (needs internet).")
    try:
        src = _TinyImageNetSource(raw_dir)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
        raise DataError(f"{zip_path}: not a valid zip ({err}). Delete it and re-download {TINYIMAGENET_URL}.") from None
    try:
        return _read_tinyimagenet(src)
    finally:
        src.close()



def tinyimagenet_val_annotations(text: str, index: dict[str, int], where: str) -> tuple[list[str], list[int]]:
    """Tiny ImageNet's val/val_annotations.txt (file<TAB>wnid<TAB>box...): the val images' paths and class indices."""
    files, labels = [], []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DataError(f"{where}: bad line {line!r} (need file<TAB>wnid from wnids.txt).")
        files.append(f"val/images/{fields[0]}")
        labels.append(index[fields[1]])
    return files, labels

def _read_tinyimagenet(src: _TinyImageNetSource) -> RawData:
    wnids = [w.strip() for w in src.read("wnids.txt").decode().splitlines() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}  # class order = line order of wnids.txt
    words: dict[str, str] = {}
    if src.has("words.txt"):
        for line in src.read("words.txt").decode().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.strip()

    train_members, train_labels = [], []
    for w in wnids:
        members = sorted((m for m in src.names(f"train/{w}/images/") if m.upper().endswith(".JPEG")), key=_natural_key)
        if not members:
            raise DataError(f"{src.where(f'train/{w}/images/')}: no training images for class {w}.")
        train_members += members
        train_labels += [index[w]] * len(members)

    test_members, test_labels = tinyimagenet_val_annotations(
        src.read("val/val_annotations.txt").decode(), index, src.where("val/val_annotations.txt"))

    return RawData(
        _decode_jpegs(src, train_members), torch.tensor(train_labels, dtype=torch.int64),
        _decode_jpegs(src, test_members), torch.tensor(test_labels, dtype=torch.int64),
        [words.get(w, w) for w in wnids], src.sources(),
    )


# ---------------------------------------------------------------- prepare and checked loading

def _check_int(value: Any, param: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise DataError(f"{param} = {value!r}: must be an integer in [{lo}, {hi}].")
    return value


def _channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Exact per-channel mean/std in [0,1] from a 256-bin histogram: no float copy of the whole set."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = counts.sum()
        mean = (counts * levels).sum() / n
        means.append(float(mean))
        stds.append(float(((counts * (levels - mean) ** 2).sum() / n).sqrt()))
    return means, stds


def check_split_sizes(val_size: int, seed: int, train_subset: int | None, test_subset: int | None) -> None:
    """The split params' types and lower bounds, before any raw data is read."""
    _check_int(val_size, "data.val_size", 1, 2**62)
    _check_int(seed, "seed", 0, 2**63 - 1)
    for param, v in (("data.train_subset", train_subset), ("data.test_subset", test_subset)):
        if v is not None:
            _check_int(v, param, 1, 2**62)


def split_indices(n_train: int, n_test: int, val_size: int, seed: int, train_subset: int | None = None,
                  test_subset: int | None = None) -> dict[str, tuple[str, torch.Tensor]]:
    """{split: (raw split it is drawn from, sorted indices)}: validation carved from the raw training set and an
    optional seeded subsample of each (the same draw for every dataset, in memory or streamed)."""
    _check_int(val_size, "data.val_size", 1, n_train - 1)
    if train_subset is not None:
        _check_int(train_subset, "data.train_subset", 1, n_train - val_size)
    if test_subset is not None:
        _check_int(test_subset, "data.test_subset", 1, n_test)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n_train, generator=g)
    # perm is uniformly random, so its first train_subset entries after the val part are a seeded subsample.
    val_idx = perm[:val_size].sort().values
    train_idx = perm[val_size:val_size + (train_subset or n_train)].sort().values
    test_idx = torch.arange(n_test) if test_subset is None else torch.randperm(n_test, generator=g)[:test_subset].sort().values
    return {"train": ("train", train_idx), "val": ("train", val_idx), "test": ("test", test_idx)}


def prepare(name: str, raw_dir: Path, out_dir: Path, val_size: int, seed: int, download: bool = False,
            train_subset: int | None = None, test_subset: int | None = None) -> dict:
    """Split raw data into train/val/test .pt files plus meta.json in ``out_dir``; return the meta dict."""
    spec = get_spec(name)
    check_split_sizes(val_size, seed, train_subset, test_subset)
    raw = load_raw(name, Path(raw_dir), download=download)
    picks = split_indices(len(raw.train_y), len(raw.test_y), val_size, seed, train_subset, test_subset)
    source = {"train": (raw.train_x, raw.train_y), "test": (raw.test_x, raw.test_y)}
    splits = {split: (source[s][0][idx], source[s][1][idx]) for split, (s, idx) in picks.items()}
    out_dir = Path(out_dir)
    # All three files at once, before the first is written (each save also checks its own exact size).
    ensure_free_space(out_dir, sum(x.nbytes + y.nbytes for x, y in splits.values()))
    files = {}
    for split, (x, y) in splits.items():
        path = out_dir / f"{split}.pt"
        # clone(): the saved storage must be exactly this tensor, never a view into a larger buffer.
        atomic_torch_save({"x": x.contiguous().clone(), "y": y.contiguous().clone()}, path)
        files[path.name] = sha256_file(path)
    mean, std = _channel_stats(splits["train"][0])
    meta = {
        "dataset": name, "num_classes": spec.num_classes, "class_names": raw.class_names,
        "shape": [spec.channels, spec.size, spec.size],
        "splits": {s: len(y) for s, (_, y) in splits.items()},
        "mean": mean, "std": std, "files": files, "sources": raw.sources, "seed": seed, "val_size": val_size,
    }
    atomic_write_json(out_dir / "meta.json", meta)
    return meta


def load_meta(out_dir: Path) -> dict:
    """meta.json written by ``prepare``."""
    path = Path(out_dir) / "meta.json"
    fix = "Run `dvc repro prepare` (or `python src/prepare.py`)."
    if not path.is_file():
        raise DataError(f"{path}: not found: the data has not been prepared. {fix}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable ({err}). {fix.replace('repro', 'repro --force')}") from None
    missing = [k for k in ("dataset", "num_classes", "shape", "splits", "files") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise DataError(f"{path}: missing keys {missing}. {fix.replace('repro', 'repro --force')}")
    return meta


def load_split(out_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x uint8 N,C,H,W; y int64 N) of one prepared split, after checking its sha256 against meta.json."""
    if split not in SPLITS:
        raise DataError(f"split: unknown split {split!r}; allowed values: {', '.join(SPLITS)}.")
    meta = load_meta(out_dir)
    path = Path(out_dir) / f"{split}.pt"
    if not path.is_file():
        raise DataError(f"{path}: not found. {REGENERATE}")
    expected = meta["files"].get(path.name)
    if sha256_file(path) != expected:
        raise DataError(f"{path}: sha256 does not match meta.json: the file is corrupted, truncated or was "
                        f"modified after prepare. {REGENERATE}")
    try:
        obj = safe_torch_load(path)
    except CheckpointError as err:
        raise DataError(f"{path}: cannot load ({err}). {REGENERATE}") from None
    x, y = (obj.get("x"), obj.get("y")) if isinstance(obj, dict) else (None, None)
    n = meta["splits"].get(split)
    ok = (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype == torch.uint8
          and y.dtype == torch.int64 and x.ndim == 4 and list(x.shape[1:]) == list(meta["shape"])
          and y.shape == (len(x),) and len(x) == n)
    if not ok:
        got = f"x {getattr(x, 'dtype', type(x).__name__)} {list(getattr(x, 'shape', []))}, " \
              f"y {getattr(y, 'dtype', type(y).__name__)} {list(getattr(y, 'shape', []))}"
        raise DataError(f"{path}: expected {{'x': uint8 [{n}, {', '.join(map(str, meta['shape']))}], "
                        f"'y': int64 [{n}]}}; got {got}. {REGENERATE}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= meta["num_classes"]):
        raise DataError(f"{path}: labels outside [0, {meta['num_classes'] - 1}]. {REGENERATE}")
    return x, y
