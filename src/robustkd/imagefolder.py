"""Image-file datasets that do not fit in memory (ImageNet; Tiny ImageNet on request): the index ``prepare`` writes,
and the per-sample decoding and augmentation that DataLoader workers run (robustkd.splits.StreamSplit).

``prepare`` for these datasets reads the folder tree once and writes, per split, an index: the image files (relative
to the tree), their labels and byte sizes (``data/prepared/<split>.index.json``), with the sha256 of each index in
meta.json. No pixels are copied. Training and evaluation decode each image when a batch needs it.

Layouts (docs/data.md):

* ImageNet (ILSVRC-2012), under ``<data.raw_dir>/imagenet/``:
  ``train/<wnid>/*.JPEG``; ``val/`` either in class folders (``val/<wnid>/*.JPEG``) or flat
  (``val/ILSVRC2012_val_00000001.JPEG`` ...) with its labels in the official ground-truth file
  ``ILSVRC2012_validation_ground_truth.txt`` (line k: the ILSVRC2012_ID, 1..1000, of image k) plus the devkit's
  ``meta.mat`` (ILSVRC2012_ID -> wnid), both as the devkit has them (``ILSVRC2012_devkit_t12/data/``) or at the top of
  the tree; or flat with Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``: the first word of the
  prediction string is the wnid). The class list: ``LOC_synset_mapping.txt`` (Kaggle: ``<wnid> <names>`` per line), or
  the devkit's ``meta.mat`` (its 1000 leaf synsets), or else the ``train/`` folders, which must then be 1000.
  Class index = position of the wnid in sorted order (torchvision's ImageFolder/ImageNet order).
* Tiny ImageNet, under ``<data.raw_dir>/tiny-imagenet-200/`` (the extracted official zip): ``wnids.txt`` (class
  order), ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` with ``val/val_annotations.txt``; the labelled val
  split is the test split, as in the in-memory path.

Preprocessing (pixels stay in [0, 1]; normalisation is inside the model): ImageNet training, RandomResizedCrop to
``image_size`` (scale 0.08-1, ratio 3/4-4/3, bilinear) and a horizontal flip; evaluation (and training with
``augment: false``), resize the shorter side to ``resize_size`` and center-crop ``image_size``. Tiny ImageNet: the
64x64 image; training adds the in-memory path's augmentation (zero padding 4, random 64x64 crop, flip).

Every random draw of an image's augmentation comes from a generator seeded by (seed, epoch, image index), so a
batch is the same whatever the number of workers or processes (tested).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data import tinyimagenet_val_annotations
from .errors import DataError

INDEX_FORMAT = "robustkd-index-v1"
IMAGE_SUFFIXES = (".jpeg", ".jpg")
# ImageNet's per-channel mean and std in [0, 1] (the values torchvision's ImageNet models use); the models normalise
# with them inside (a streamed set is not read whole at prepare to compute its own).
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
IMAGENET_CLASSES = 1000
DEVKIT_DATA = Path("ILSVRC2012_devkit_t12") / "data"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "meta.mat"
LOC_MAPPING = "LOC_synset_mapping.txt"
LOC_VAL = "LOC_val_solution.csv"

IMAGENET_LAYOUT = (
    "expected an ILSVRC-2012 tree: train/<wnid>/*.JPEG (one folder per class), and val/ either in class folders "
    "(val/<wnid>/*.JPEG) or flat (val/ILSVRC2012_val_00000001.JPEG, ...) with its labels in "
    f"{GROUND_TRUTH} + {DEVKIT_META} (from the devkit, in {DEVKIT_DATA}/ or at the top of the tree) or in "
    f"{LOC_VAL} (Kaggle); the class list from {LOC_MAPPING}, the devkit's {DEVKIT_META}, or else the 1000 train/ "
    "folders (see docs/data.md)")
TINYIMAGENET_LAYOUT = ("expected the extracted official zip: wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG "
                       "and val/val_annotations.txt (see docs/data.md)")


@dataclass
class Tree:
    """A dataset's image files, as ``prepare`` found them: paths relative to ``root``, labels, class names."""
    root: Path
    train_files: list[str]
    train_labels: list[int]
    test_files: list[str]
    test_labels: list[int]
    class_names: list[str]
    kind: str  # "imagenet" | "tinyimagenet": which preprocessing applies


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _images_in(folder: Path, root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in folder.iterdir() if p.is_file() and _is_image(p.name))


def _find(root: Path, name: str) -> Path | None:
    for cand in (root / DEVKIT_DATA / name, root / name):
        if cand.is_file():
            return cand
    return None


def _read_devkit_meta(path: Path) -> dict[int, tuple[str, str]]:
    """{ILSVRC2012_ID: (wnid, words)} of the devkit's leaf synsets (num_children == 0), as torchvision reads it."""
    try:
        from scipy import io as sio  # lazy: only the devkit's .mat needs it
    except ImportError:
        raise DataError(f"{path}: reading the devkit's {DEVKIT_META} needs scipy (`pip install scipy`); or put "
                        f"Kaggle's {LOC_MAPPING} (and {LOC_VAL} for a flat val/) at the top of the tree.") from None
    try:
        synsets = sio.loadmat(str(path), squeeze_me=True)["synsets"]
        out = {}
        for s in np.atleast_1d(synsets):
            if int(s["num_children"]) == 0:
                out[int(s["ILSVRC2012_ID"])] = (str(s["WNID"]), str(s["words"]))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise DataError(f"{path}: not the ILSVRC-2012 devkit's meta.mat (need a `synsets` struct array with "
                        f"ILSVRC2012_ID, WNID, words, num_children): {type(err).__name__}: {err}.") from None
    if not out:
        raise DataError(f"{path}: no leaf synsets (num_children == 0) in `synsets`.")
    return out


def _read_loc_mapping(path: Path) -> dict[str, str]:
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, words = line.strip().partition(" ")
        if not wnid.startswith("n"):
            raise DataError(f"{path}: line {n} {line!r} is not `<wnid> <class names>`.")
        out[wnid] = words.strip()
    return out


def imagenet_tree(raw_dir: Path) -> Tree:
    """Find and check the ILSVRC-2012 tree under ``<raw_dir>/imagenet``; every problem names the file or folder."""
    root = Path(raw_dir) / "imagenet"
    train, val = root / "train", root / "val"
    for d in (root, train, val):
        if not d.is_dir():
            raise DataError(f"imagenet: {d}/ not found (looked under data.raw_dir = {raw_dir}); {IMAGENET_LAYOUT}. "
                            f"ImageNet cannot be downloaded here (`data.download` does not apply): get it from "
                            f"image-net.org and extract it there.")
    folders = sorted(p.name for p in train.iterdir() if p.is_dir())
    mapping, devkit = root / LOC_MAPPING, _find(root, DEVKIT_META)
    by_id: dict[int, tuple[str, str]] | None = None
    if mapping.is_file():
        words, source = _read_loc_mapping(mapping), mapping
    elif devkit is not None:
        by_id = _read_devkit_meta(devkit)
        words, source = {w: text for w, text in by_id.values()}, devkit
    else:
        words, source = {w: w for w in folders}, None
        if len(folders) != IMAGENET_CLASSES:
            raise DataError(f"imagenet: {train}/ holds {len(folders)} class folders, ImageNet has {IMAGENET_CLASSES}: "
                            f"classes are missing. Without a class list ({root / LOC_MAPPING} or the devkit's "
                            f"{DEVKIT_META}) the train/ folders are the classes; {IMAGENET_LAYOUT}.")
    wnids = sorted(words)
    index = {w: i for i, w in enumerate(wnids)}
    for w in folders:
        if w not in index:
            raise DataError(f"imagenet: {train / w}/ is not a class of {source}; remove it or use the matching "
                            f"class list.")
    train_files, train_labels = [], []
    for w in wnids:
        folder = train / w
        files = _images_in(folder, root) if folder.is_dir() else []
        if not files:
            raise DataError(f"imagenet: class {w} is missing: {folder}/ {'has no .JPEG image' if folder.is_dir() else 'not found'} "
                            f"(class list: {source or train}).")
        train_files += files
        train_labels += [index[w]] * len(files)
    test_files, test_labels = _imagenet_val(root, val, index, by_id, devkit)
    return Tree(root, train_files, train_labels, test_files, test_labels, [words[w] or w for w in wnids], "imagenet")


def _imagenet_val(root: Path, val: Path, index: dict[str, int], by_id, devkit: Path | None) -> tuple[list, list]:
    subdirs = sorted(p.name for p in val.iterdir() if p.is_dir())
    if subdirs:  # class folders
        files, labels = [], []
        for w in subdirs:
            if w not in index:
                raise DataError(f"imagenet: {val / w}/ is not one of the {len(index)} classes.")
            found = _images_in(val / w, root)
            files += found
            labels += [index[w]] * len(found)
        if not files:
            raise DataError(f"imagenet: no .JPEG image in the class folders of {val}/; {IMAGENET_LAYOUT}.")
        return files, labels
    flat = _images_in(val, root)
    if not flat:
        raise DataError(f"imagenet: {val}/ has neither class folders nor .JPEG images; {IMAGENET_LAYOUT}.")
    truth, loc = _find(root, GROUND_TRUTH), root / LOC_VAL
    labels_by_stem: dict[str, int] = {}
    if truth is not None:
        if by_id is None:
            if devkit is None:
                raise DataError(f"imagenet: {truth} gives ILSVRC2012_IDs, which need the devkit's {DEVKIT_META} "
                                f"to map them to classes: put it in {root / DEVKIT_DATA}/ (or use {LOC_VAL}).")
            by_id = _read_devkit_meta(devkit)
        lines = [ln.strip() for ln in truth.read_text().splitlines() if ln.strip()]
        for n, line in enumerate(lines, 1):
            if not line.isdigit() or int(line) not in by_id:
                raise DataError(f"{truth}: line {n} = {line!r} is not an ILSVRC2012_ID of {devkit}.")
            wnid = by_id[int(line)][0]
            if wnid not in index:
                raise DataError(f"{truth}: line {n}: class {wnid} (ILSVRC2012_ID {line}) has no train/ folder.")
            labels_by_stem[f"ILSVRC2012_val_{n:08d}"] = index[wnid]
        source = truth
    elif loc.is_file():
        with open(loc, newline="", encoding="utf-8") as fh:
            for n, row in enumerate(csv.reader(fh), 1):
                if n == 1 and row and row[0] == "ImageId":
                    continue
                wnid = row[1].split()[0] if len(row) > 1 and row[1].split() else ""
                if wnid not in index:
                    raise DataError(f"{loc}: line {n} {','.join(row)!r}: need ImageId,PredictionString whose first "
                                    f"word is the wnid of one of the classes.")
                labels_by_stem[row[0]] = index[wnid]
        source = loc
    else:
        raise DataError(f"imagenet: {val}/ is flat but its labels were not found: looked for "
                        f"{root / DEVKIT_DATA / GROUND_TRUTH}, {root / GROUND_TRUTH} and {loc}; {IMAGENET_LAYOUT}.")
    labels = []
    for rel in flat:
        stem = rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        if stem not in labels_by_stem:
            raise DataError(f"imagenet: {root / rel} has no label in {source}.")
        labels.append(labels_by_stem[stem])
    if len(flat) != len(labels_by_stem):
        listed = {rel.rsplit("/", 1)[-1].rsplit(".", 1)[0] for rel in flat}
        missing = sorted(set(labels_by_stem) - listed)
        raise DataError(f"imagenet: {source} labels {len(labels_by_stem)} images but {val}/ holds {len(flat)}: "
                        f"{val / missing[0]}.JPEG (and {len(missing) - 1} more) not found.")
    return flat, labels


def tinyimagenet_tree(raw_dir: Path) -> Tree:
    """The extracted Tiny ImageNet folder (the streamed path reads files, not the zip's members)."""
    from .data import _natural_key  # the in-memory path's file order

    root = Path(raw_dir) / "tiny-imagenet-200"
    if not root.is_dir():
        zipped = Path(raw_dir) / "tiny-imagenet-200.zip"
        hint = (f"{zipped} is there: extract it (`unzip {zipped} -d {raw_dir}`); the streamed path reads image files"
                if zipped.is_file() else f"download and extract the official zip into {raw_dir}/")
        raise DataError(f"tinyimagenet (data.loader: stream): {root}/ not found; {TINYIMAGENET_LAYOUT}. Fix: {hint}.")
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise DataError(f"tinyimagenet: {wnids_file} not found; {TINYIMAGENET_LAYOUT}.")
    wnids = [w.strip() for w in wnids_file.read_text().splitlines() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    words = {}
    if (root / "words.txt").is_file():
        for line in (root / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.strip()
    train_files, train_labels = [], []
    for w in wnids:
        folder = root / "train" / w / "images"
        files = sorted(_images_in(folder, root), key=_natural_key) if folder.is_dir() else []
        if not files:
            raise DataError(f"tinyimagenet: class {w} is missing: {folder}/ has no .JPEG image.")
        train_files += files
        train_labels += [index[w]] * len(files)
    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DataError(f"tinyimagenet: {ann} not found; {TINYIMAGENET_LAYOUT}.")
    test_files, test_labels = tinyimagenet_val_annotations(ann.read_text(), index, str(ann))
    return Tree(root, train_files, train_labels, test_files, test_labels, [words.get(w, w) for w in wnids],
                "tinyimagenet")


def check_images(root: Path, files: Sequence[str], workers: int) -> list[int]:
    """Byte size of each file, after opening it as an image (PIL reads the header only, not every pixel: a file
    damaged further in is found when a batch decodes it, and also named then). DataError naming the first file that
    is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    def one(rel: str) -> tuple[int, str | None]:
        path = root / rel
        try:
            size = path.stat().st_size
            with Image.open(path) as img:
                img.size  # noqa: B018 - parsing the header is the check
            return size, None
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            return -1, f"{type(err).__name__}: {err}"

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(one, files, chunksize=256))
    for rel, (size, problem) in zip(files, results):
        if problem is not None:
            raise DataError(f"{root / rel}: unreadable image ({problem}). Replace or remove the file (re-extract it "
                            f"from the official archive), then rerun prepare.")
    return [size for size, _ in results]


def write_index(path: Path, dataset: str, split: str, files: list[str], labels: list[int], sizes: list[int]) -> None:
    from .io import atomic_write_json

    atomic_write_json(path, {"format": INDEX_FORMAT, "dataset": dataset, "split": split, "n": len(files),
                             "files": files, "labels": labels, "sizes": sizes})


def read_index(path: Path, expected_sha256: str | None, num_classes: int) -> dict:
    """An index written by ``prepare``, after checking its sha256 against meta.json and its shape."""
    from .data import REGENERATE
    from .io import sha256_file

    if not path.is_file():
        raise DataError(f"{path}: not found. {REGENERATE}")
    if sha256_file(path) != expected_sha256:
        raise DataError(f"{path}: sha256 does not match meta.json: the index was modified after prepare. {REGENERATE}")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        files, labels, sizes = index["files"], index["labels"], index["sizes"]
        ok = index.get("format") == INDEX_FORMAT and len(files) == len(labels) == len(sizes) == index["n"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: unreadable index ({err}). {REGENERATE}") from None
    if not ok or any(not 0 <= y < num_classes for y in labels):
        raise DataError(f"{path}: not a {INDEX_FORMAT} index with labels in [0, {num_classes - 1}]. {REGENERATE}")
    return index


def listing_digest(root: Path, files: Sequence[str], labels: Sequence[int], sizes: Sequence[int]) -> str:
    """sha256 of what was indexed (path, label, size of every file): the tree's `sources` entry in meta.json."""
    h = hashlib.sha256()
    for rel, y, n in zip(files, labels, sizes):
        h.update(f"{rel}\0{y}\0{n}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------- per-sample decoding and augmentation

def sample_seed(epoch_seed: int, index: int) -> int:
    """The seed of image ``index``'s augmentation in an epoch: independent of workers, processes and batch."""
    return (epoch_seed * 1_000_003 + index) % (2**63 - 1)


def _random_resized_crop(w: int, h: int, g: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params, drawing from ``g``: (top, left, height, width)."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=g).item())
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(1, generator=g).item())
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


@dataclass(frozen=True)
class Transform:
    """What a streamed split does to each image (recorded in meta.json by ``prepare``)."""
    kind: str          # imagenet | tinyimagenet
    image_size: int    # the side of the square images the models see
    resize_size: int   # imagenet evaluation: shorter side resized to this, then center-cropped to image_size

    def __call__(self, img, train: bool, g: torch.Generator | None) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        img = img.convert("RGB")  # greyscale and CMYK JPEGs exist in ImageNet
        if self.kind == "imagenet":
            if train:
                top, left, ch, cw = _random_resized_crop(img.width, img.height, g)
                img = TF.resized_crop(img, top, left, ch, cw, [self.image_size, self.image_size],
                                      InterpolationMode.BILINEAR)
                if torch.rand(1, generator=g).item() < 0.5:
                    img = img.transpose(Image.FLIP_LEFT_RIGHT)
            else:
                img = TF.center_crop(TF.resize(img, self.resize_size, InterpolationMode.BILINEAR), self.image_size)
            return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        if x.shape[1:] != (self.image_size, self.image_size):
            raise ValueError(f"image is {x.shape[2]}x{x.shape[1]}, expected {self.image_size}x{self.image_size}")
        if train:  # the in-memory path's augment_batch: zero padding 4, random crop, flip
            pad = 4
            padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
            dy = int(torch.randint(0, 2 * pad + 1, (1,), generator=g))
            dx = int(torch.randint(0, 2 * pad + 1, (1,), generator=g))
            x = padded[:, dy:dy + self.image_size, dx:dx + self.image_size]
            if torch.rand(1, generator=g).item() < 0.5:
                x = x.flip(2)
            x = x.contiguous()
        return x


class ImageFiles(torch.utils.data.Dataset):
    """Images listed by an index, decoded (PIL) and transformed per sample. Keys are ``(index, seed)`` pairs:
    ``seed`` None = the evaluation transform; an int = the training augmentation drawn from that seed."""

    def __init__(self, root: Path, files: list[str], labels: list[int], sizes: list[int], transform: Transform,
                 index_path: Path):
        self.root, self.files, self.sizes = Path(root), files, sizes
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.transform, self.index_path = transform, index_path

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int | None]) -> tuple[torch.Tensor, int]:
        from PIL import Image, UnidentifiedImageError

        i, seed = key
        path = self.root / self.files[i]
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise DataError(f"{path}: cannot read ({type(err).__name__}: {err}); listed in {self.index_path}: the "
                            f"tree changed since prepare. Restore the file or rerun `dvc repro prepare`.") from None
        if len(raw) != self.sizes[i]:
            raise DataError(f"{path}: {len(raw)} bytes, {self.sizes[i]} when indexed ({self.index_path}): the file "
                            f"changed since prepare. Restore it or rerun `dvc repro prepare`.")
        g = None if seed is None else torch.Generator().manual_seed(seed)
        try:
            import io

            with Image.open(io.BytesIO(raw)) as img:
                x = self.transform(img, seed is not None, g)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"{path}: cannot decode image ({type(err).__name__}: {err}). Replace the file (re-extract "
                            f"it from the official archive) or remove it and rerun prepare.") from None
        return x, int(self.labels[i])


def worker_init(worker_id: int) -> None:
    """Each worker decodes with one thread (workers are the parallelism) and seeds numpy/random from torch's
    per-worker seed (the DataLoader's seeded generator); no transform draws from them (per-sample generators do)."""
    import random

    torch.set_num_threads(1)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
