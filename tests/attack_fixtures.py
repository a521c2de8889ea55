"""Tiny real-data models for attack tests: plain functions, reusable by any test module.

Run them with ``torch.set_num_threads(1)`` on a shared 2-core machine: OpenMP threads that
compete with other processes made these small convolutions ~50x slower in our measurements.

* ``fashion_mnist(split, n)``: the real Fashion-MNIST IDX files (first n images), float in [0, 1].
* ``trained_fmnist_model(n_train)``: a 2-conv CNN trained 2 short epochs with Adam (< 1 s on one CPU thread).
* ``cifar10_model(x, y)``: an undefended CNN fit to the CIFAR-10 samples (see its docstring).
* ``cifar10_samples()``: the 20 real CIFAR-10 test PNGs shipped in the foolbox wheel (label = last
  number in the file name), read from disk only -- foolbox itself is never imported.
* ``ScaledLogits`` / ``NoBackward``: wrappers that simulate a saturated softmax / forbid gradients.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FMNIST_DIR = Path(os.environ.get("ROBUSTKD_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
_FMNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def fashion_mnist_available(root: Path = FMNIST_DIR) -> bool:
    return all((root / f).is_file() for pair in _FMNIST_FILES.values() for f in pair)


def _read_idx(path: Path, n: int | None) -> torch.Tensor:
    """IDX (uint8 payload); only the first n records are decompressed."""
    with gzip.open(path, "rb") as fh:
        magic = fh.read(4)
        if magic[:3] != b"\x00\x00\x08":
            raise ValueError(f"{path}: not an IDX uint8 file (magic {magic!r})")
        dims = [int.from_bytes(fh.read(4), "big") for _ in range(magic[3])]
        if n is not None:
            dims[0] = min(n, dims[0])
        count = 1
        for d in dims:
            count *= d
        data = fh.read(count)
    if len(data) != count:
        raise ValueError(f"{path}: truncated ({len(data)} of {count} bytes)")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(dims)


def fashion_mnist(split: str = "train", n: int | None = None, root: Path = FMNIST_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``n`` images of a split: x float32 (n, 1, 28, 28) in [0, 1], y int64."""
    img_file, lbl_file = _FMNIST_FILES[split]
    x = _read_idx(root / img_file, n).float().div_(255.0).unsqueeze(1)
    y = _read_idx(root / lbl_file, n).long()
    return x, y


class SmallCNN(nn.Module):
    """2 conv + linear. Maps [0, 1] images to logits (no normalisation needed at this size)."""

    def __init__(self, channels: int = 1, size: int = 28, n_classes: int = 10, width: int = 16):
        super().__init__()
        # Strided convs instead of pooling: ~4x cheaper, and CPU time is the test budget.
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(2 * width * (size // 4) ** 2, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 1, batch_size: int = 64,
                     lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """Plain Adam + CE; shuffling from a seeded generator, so training is deterministic."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def seeded_model(seed: int = 0, **kwargs) -> SmallCNN:
    """SmallCNN with deterministic init, without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SmallCNN(**kwargs)


def trained_fmnist_model(n_train: int = 3000, epochs: int = 2, seed: int = 0, width: int = 8) -> SmallCNN:
    """~0.5 s with one thread; ~77% clean test accuracy (first 300 test images), undefended."""
    x, y = fashion_mnist("train", n_train)
    return train_classifier(seeded_model(seed, width=width), x, y, epochs=epochs, lr=3e-3, seed=seed)


CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """Per-channel (x - mean) / std inside the model, so the model still takes [0, 1] pixels."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def cifar10_model(x: torch.Tensor, y: torch.Tensor, steps: int = 10, seed: int = 0) -> nn.Module:
    """Undefended CIFAR-10 CNN fit to the given images: CIFAR normalisation inside the model, He init
    (as torchvision's ResNets), ``steps`` full-batch Adam steps (lr 1e-3).

    Why not PyTorch's default init: with it (kaiming_uniform(a=sqrt(5)), ~6x smaller weight variance)
    a tiny net fit to 20 images is unusually smooth -- CW-L2 medians of 1.1-2.9 were measured here,
    an order of magnitude above real CIFAR-10 networks -- which would test the model, not the attack.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = SmallCNN(channels=3, size=32, width=16)
        for mod in base.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                nn.init.zeros_(mod.bias)
    model = Normalize(base, CIFAR10_MEAN, CIFAR10_STD)
    return train_classifier(model, x, y, epochs=steps, batch_size=len(x), lr=1e-3, seed=seed)


def cifar10_samples() -> tuple[torch.Tensor, torch.Tensor]:
    """The 20 CIFAR-10 test images in foolbox's data folder: x (20, 3, 32, 32) in [0, 1], y int64.

    Files are named cifar10_<index>_<label>.png; 'cifar100_*' files sit beside them, hence the regex.
    """
    from PIL import Image

    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("foolbox is not installed (its data folder holds the CIFAR-10 samples)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    files = sorted(p for p in folder.glob("cifar10_*.png") if re.fullmatch(r"cifar10_\d+_\d+\.png", p.name))
    if not files:
        raise FileNotFoundError(f"no cifar10_*.png in {folder}")
    xs, ys = [], []
    for p in files:
        img = Image.open(p).convert("RGB")
        xs.append(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(32, 32, 3).permute(2, 0, 1) / 255.0)
        ys.append(int(re.fullmatch(r"cifar10_\d+_(\d+)\.png", p.name).group(1)))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


class ScaledLogits(nn.Module):
    """logits × scale: the argmax is unchanged, the T=1 softmax saturates (like a model distilled at high T
    and deployed at T=1), so CE gradients underflow to exactly zero."""

    def __init__(self, model: nn.Module, scale: float):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale


class _RaiseOnBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("gradient requested from a model that forbids it")


class NoBackward(nn.Module):
    """Forward is the wrapped model's; any backward pass through it raises."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RaiseOnBackward.apply(self.model(x))


# Attacking the same points in another batch shape, thread count or instruction set sums floats in another order.
# That moves each gradient component by a few ulps of the largest terms in its sum, which flips its sign only where the
# component is that close to zero; such a pixel then takes another step (up to 2 step sizes, within the ε-ball), and
# its change carries into later steps. So no fixed float tolerance on the example holds on every processor (6e-4 was
# seen on an Intel Xeon where 1e-4 held on an AMD EPYC). What the attacks promise instead:
# - every point gets the same prediction: the per-point outcome that the metrics count;
# - the same example apart from those few near-zero-gradient pixels: per point, at most SAME_EXAMPLE_PIXELS of the
#   pixels differ by more than float noise (NOISE). A different random start moves most pixels of every point that
#   the attack perturbs (up to 75% seen for Square with another seed).
SAME_EXAMPLE_PIXELS = 0.05
NOISE = 1e-6


def changed_pixels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per point, the fraction of pixels that differ by more than float noise."""
    return ((a - b).flatten(1).abs() > NOISE).float().mean(1)


def assert_same_examples(model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> None:
    with torch.no_grad():
        assert torch.equal(model(a).argmax(1), model(b).argmax(1)), "a point's prediction changed"
    changed = changed_pixels(a, b)
    assert changed.max() <= SAME_EXAMPLE_PIXELS, \
        f"{changed.max():.1%} of a point's pixels differ: more than reassociation flips (another random start?)"
