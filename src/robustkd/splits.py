"""One interface to a prepared split, whatever holds it: the training loop, validation, the predict and attack stages
read batches through it and never ask which kind it is.

* :class:`MemorySplit` (the default, for datasets that fit in memory): the whole split is a uint8 tensor on the
  device, cast and augmented per batch as whole tensors. This is the path every small dataset has always taken;
  its batches, and so every number of a run, are unchanged.
* :class:`StreamSplit` (ImageNet; Tiny ImageNet with ``data.loader: stream``): an index of image files
  (robustkd.imagefolder). A DataLoader's workers (``data.workers``) decode and augment each image; batches are
  collated as uint8, pinned on CUDA and moved with ``non_blocking=True``, then cast on the device.

Both give the same things: :meth:`train_batches` (one epoch of training batches in the order fixed by (seed, epoch),
each process's share under torchrun), :meth:`count_correct` (validation, sharded under torchrun), :meth:`batches`
(evaluation order) and :meth:`take` (the listed images, e.g. the attacked points).

``prepare`` / ``open_split`` / ``split_digest`` choose between them from ``data.loader`` (auto: stream for ImageNet)
and from what prepare recorded in meta.json.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from . import data, imagefolder
from .errors import DataError, ParamsError

LOADERS = ("auto", "memory", "stream")
STREAM_DATASETS = ("imagenet", "tinyimagenet")  # datasets stored as image files
STREAM_ONLY = ("imagenet",)                       # too large for the in-memory path
EVAL_BATCH = 1000  # validation batch of the in-memory path (its numbers depend on it only through float sums)
STREAM_EVAL_BATCH = 250


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1], channels_last (the layout the models are kept in)."""
    return x_uint8.float().div_(255.0).contiguous(memory_format=torch.channels_last)


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip for a whole batch, as tensor indexing."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[batch, chans, rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def shard(n: int, world: int, rank: int) -> slice:
    """This process's part of a global batch of ``n``: contiguous, sizes differing by at most one (torch.tensor_split's)."""
    q, r = divmod(n, world)
    lo = rank * q + min(rank, r)
    return slice(lo, lo + q + (1 if rank < r else 0))


def epoch_seed(seed: int, epoch: int) -> int:
    """Data order (and the in-memory path's augmentation) depend only on (seed, epoch)."""
    return seed * 100_003 + epoch


def global_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The epoch's global batches of sample indices, in the single-process order."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


@torch.no_grad()
def count_correct(model: nn.Module, x_uint8: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH) -> int:
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        logits = model(to_float(x_uint8[i:i + batch_size]))
        correct += (logits.argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return correct


class MemorySplit:
    """A whole split as tensors (uint8 N,C,H,W and int64 N) on one device."""

    kind = "memory"

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y
        self._float: torch.Tensor | None = None

    def to(self, device: torch.device) -> "MemorySplit":
        return MemorySplit(self.x.to(device), self.y.to(device))

    def __len__(self) -> int:
        return len(self.y)

    @property
    def labels(self) -> torch.Tensor:
        return self.y

    def identity(self) -> dict | None:
        """What a run's fingerprint adds for this kind of split (nothing: the in-memory runs keep theirs)."""
        return None

    def train_batches(self, epoch: int, batch_size: int, seed: int, augment: bool, world: int = 1,
                      rank: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
        """(float images, labels, loss scale) of each step: the global batch (one process), or this process's share
        of it (augmented as a whole first, as one process would). The loss scale makes the mean over a share the mean
        over the global batch once DDP averages gradients (1 except for an unevenly split last batch)."""
        device = self.x.device
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(len(self.y), generator=gen).to(device)
        for i in range(math.ceil(len(self.y) / batch_size)):
            idx = order[i * batch_size:(i + 1) * batch_size]
            if world == 1:
                xb = to_float(self.x[idx])
                if augment:
                    xb = augment_batch(xb, gen)
                yield xb, self.y[idx], 1.0
                continue
            part = shard(len(idx), world, rank)
            scale = world * (part.stop - part.start) / len(idx)
            if augment:
                xb = augment_batch(to_float(self.x[idx]), gen)[part]
            else:
                xb = to_float(self.x[idx[part]])
            yield xb, self.y[idx[part]], scale

    def count_correct(self, model: nn.Module, world: int = 1, rank: int = 0) -> int:
        """Correctly classified images (evaluation mode): all of them, or this process's contiguous share."""
        if world == 1:
            return count_correct(model, self.x, self.y)
        part = shard(len(self.y), world, rank)
        return count_correct(model, self.x[part], self.y[part])

    def float_images(self) -> torch.Tensor:
        """The whole split as float in [0, 1] (cast once, kept)."""
        if self._float is None:
            self._float = to_float(self.x)
        return self._float

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x = self.float_images()
        for i in range(0, len(self.y), batch_size):
            yield x[i:i + batch_size], self.y[i:i + batch_size]

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        return self.float_images()[idx.to(self.x.device)]


def _worker_message(err: DataError) -> str:
    """A DataError raised in a DataLoader worker comes back with the worker's traceback: keep its own message."""
    text = str(err)
    marker = "DataError: "
    return text[text.rindex(marker) + len(marker):].strip() if marker in text and "Traceback" in text else text


class StreamSplit:
    """A split of image files (an index written by ``prepare``), decoded and augmented by DataLoader workers."""

    kind = "stream"

    def __init__(self, dataset: imagefolder.ImageFiles, workers: int, device: torch.device | None = None):
        self.dataset, self.workers = dataset, workers
        self.device = torch.device("cpu") if device is None else device

    def to(self, device: torch.device) -> "StreamSplit":
        return StreamSplit(self.dataset, self.workers, device)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labels(self) -> torch.Tensor:
        return self.dataset.labels.to(self.device)

    def identity(self) -> dict | None:
        t = self.dataset.transform
        return {"loader": "stream", "transform": [t.kind, t.image_size, t.resize_size]}

    def _loader(self, keys: list[list[tuple[int, int | None]]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of the listed (index, seed) keys, in order, on ``self.device``."""
        cuda = self.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=keys, num_workers=self.workers, pin_memory=cuda,
            worker_init_fn=imagefolder.worker_init if self.workers else None,
            generator=torch.Generator().manual_seed(0),  # the workers' base seed (nothing random is drawn from it)
            prefetch_factor=4 if self.workers else None, persistent_workers=False)
        try:
            for xb, yb in loader:
                yield xb.to(self.device, non_blocking=cuda), yb.to(self.device, non_blocking=cuda)
        except DataError as err:
            raise DataError(_worker_message(err)) from None

    def train_keys(self, epoch: int, batch_size: int, seed: int, augment: bool, world: int = 1,
                   rank: int = 0) -> tuple[list[list[tuple[int, int | None]]], list[float]]:
        """This process's (index, augmentation seed) keys of each step, and each step's loss scale: the
        single-process global batches of :func:`global_batches`, each split in contiguous shares as the in-memory
        path splits them (a DistributedSampler that keeps the global batch)."""
        base = epoch_seed(seed, epoch)
        keys, scales = [], []
        for idx in global_batches(len(self), batch_size, seed, epoch):
            part = shard(len(idx), world, rank)
            mine = idx[part].tolist()
            keys.append([(i, imagefolder.sample_seed(base, i) if augment else None) for i in mine])
            scales.append(world * len(mine) / len(idx))
        return keys, scales

    def train_batches(self, epoch: int, batch_size: int, seed: int, augment: bool, world: int = 1,
                      rank: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
        keys, scales = self.train_keys(epoch, batch_size, seed, augment, world, rank)
        for (xb, yb), scale in zip(self._loader(keys), scales):
            yield to_float(xb), yb, scale

    def count_correct(self, model: nn.Module, world: int = 1, rank: int = 0) -> int:
        part = shard(len(self), world, rank)
        was_training = model.training
        model.eval()
        correct = 0
        with torch.no_grad():
            for xb, yb in self._eval_batches(range(part.start, part.stop), STREAM_EVAL_BATCH):
                correct += (model(xb).argmax(1) == yb).sum().item()
        model.train(was_training)
        return correct

    def _eval_batches(self, indices, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = list(indices)
        keys = [[(i, None) for i in indices[j:j + batch_size]] for j in range(0, len(indices), batch_size)]
        for xb, yb in self._loader(keys):
            yield to_float(xb), yb

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._eval_batches(range(len(self)), batch_size)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        if len(idx) == 0:
            size = self.dataset.transform.image_size
            return torch.zeros(0, 3, size, size, device=self.device)
        return torch.cat([xb for xb, _ in self._eval_batches(idx.tolist(), STREAM_EVAL_BATCH)])


def as_split(split) -> MemorySplit | StreamSplit:
    """A split object as it is, or an (x uint8, y int64) pair as a :class:`MemorySplit`."""
    if isinstance(split, (MemorySplit, StreamSplit)):
        return split
    x, y = split
    return MemorySplit(x, y)


# ---------------------------------------------------------------- choosing the path

def loader_for(dataset: str, loader: str) -> str:
    """``data.loader`` resolved: memory | stream (auto: stream for the datasets too large for memory)."""
    if loader not in LOADERS:
        raise ParamsError(f"`data.loader` = {loader!r}: unknown; allowed: {', '.join(LOADERS)}")
    if loader == "auto":
        return "stream" if dataset in STREAM_ONLY else "memory"
    if loader == "memory" and dataset in STREAM_ONLY:
        raise ParamsError(f"`data.loader` = memory: dataset {dataset} does not fit in memory and has no in-memory path; "
                          f"set `data.loader: stream` (or auto)")
    if loader == "stream" and dataset not in STREAM_DATASETS:
        raise ParamsError(f"`data.loader` = stream: dataset {dataset} comes as binary batches, not image files; the "
                          f"stream path reads {', '.join(STREAM_DATASETS)}. Set `data.loader: auto` (or memory)")
    return loader


def prepare(params: dict, out_dir: Path) -> dict:
    """Stage prepare: tensors (memory) or an index of image files (stream) in ``out_dir``, plus meta.json."""
    name, cfg = params["dataset"], params["data"]
    if loader_for(name, cfg["loader"]) == "memory":
        return data.prepare(name, Path(cfg["raw_dir"]), out_dir, val_size=cfg["val_size"], seed=params["seed"],
                            download=cfg["download"], train_subset=cfg["train_subset"], test_subset=cfg["test_subset"])
    return prepare_index(name, Path(cfg["raw_dir"]), out_dir, val_size=cfg["val_size"], seed=params["seed"],
                         train_subset=cfg["train_subset"], test_subset=cfg["test_subset"],
                         image_size=cfg["image_size"], resize_size=cfg["resize_size"], workers=cfg["workers"])


def prepare_index(name: str, raw_dir: Path, out_dir: Path, val_size: int, seed: int,
                  train_subset: int | None = None, test_subset: int | None = None, image_size: int = 224,
                  resize_size: int = 256, workers: int = 4) -> dict:
    """The streamed datasets' prepare: find and check the tree, carve the validation split from train (seeded, as
    the in-memory path does), write one index per split and meta.json."""
    spec = data.get_spec(name)
    data.check_split_sizes(val_size, seed, train_subset, test_subset)
    if name == "imagenet":
        if resize_size < image_size:
            raise ParamsError(f"`data.resize_size` = {resize_size} is smaller than `data.image_size` = {image_size}: "
                              f"evaluation resizes the shorter side to resize_size, then center-crops image_size")
        tree = imagefolder.imagenet_tree(raw_dir)
    else:
        tree = imagefolder.tinyimagenet_tree(raw_dir)
        image_size = resize_size = spec.size
    out_dir = Path(out_dir)
    picks = data.split_indices(len(tree.train_files), len(tree.test_files), val_size, seed, train_subset, test_subset)
    files: dict[str, str] = {}
    listing = []
    for split, (source, idx) in picks.items():
        all_files, all_labels = (tree.train_files, tree.train_labels) if source == "train" else (tree.test_files,
                                                                                                  tree.test_labels)
        chosen = [all_files[i] for i in idx.tolist()]
        labels = [all_labels[i] for i in idx.tolist()]
        sizes = imagefolder.check_images(tree.root, chosen, workers)
        path = out_dir / f"{split}.index.json"
        imagefolder.write_index(path, name, split, chosen, labels, sizes)
        files[path.name] = data.sha256_file(path)
        listing.append(imagefolder.listing_digest(tree.root, chosen, labels, sizes))
    splits = {s: len(idx) for s, (_, idx) in picks.items()}
    meta = {
        "dataset": name, "num_classes": len(tree.class_names), "class_names": tree.class_names,
        "shape": [3, image_size, image_size], "splits": splits,
        "mean": imagefolder.IMAGENET_MEAN, "std": imagefolder.IMAGENET_STD, "files": files,
        "sources": {str(tree.root.resolve()): hashlib.sha256("".join(listing).encode()).hexdigest()},
        "seed": seed, "val_size": val_size, "loader": "stream", "root": str(tree.root.resolve()),
        "transform": {"kind": tree.kind, "image_size": image_size, "resize_size": resize_size},
    }
    data.atomic_write_json(out_dir / "meta.json", meta)
    return meta


def open_split(prepared_dir: Path, split: str, workers: int = 0) -> MemorySplit | StreamSplit:
    """A prepared split, in memory or streamed, as ``prepare`` wrote it (meta.json's ``loader``)."""
    meta = data.load_meta(prepared_dir)
    if meta.get("loader", "memory") == "memory":
        return MemorySplit(*data.load_split(prepared_dir, split))
    if split not in data.SPLITS:
        raise DataError(f"split: unknown split {split!r}; allowed values: {', '.join(data.SPLITS)}.")
    path = Path(prepared_dir) / f"{split}.index.json"
    index = imagefolder.read_index(path, meta["files"].get(path.name), meta["num_classes"])
    root = Path(meta["root"])
    if not root.is_dir():
        raise DataError(f"{root}/: the image tree indexed by {path} is not there (moved or unmounted). Put it back, "
                        f"or point data.raw_dir at it and rerun `dvc repro prepare`.")
    t = meta["transform"]
    transform = imagefolder.Transform(t["kind"], t["image_size"], t["resize_size"])
    dataset = imagefolder.ImageFiles(root, index["files"], index["labels"], index["sizes"], transform, path)
    return StreamSplit(dataset, workers)


def split_digest(meta: dict, split: str) -> str:
    """The sha256 that identifies a prepared split (its tensor file, or its index)."""
    files = meta["files"]
    return files[f"{split}.pt"] if f"{split}.pt" in files else files[f"{split}.index.json"]
