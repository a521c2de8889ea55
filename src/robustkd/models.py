"""Architecture registry. Every model takes images in [0, 1] and returns logits.

Normalisation sits inside the model, so attacks always work in pixel space. Each model is
``normalize -> features -> head``; ``features`` ends in a pooled vector so that heads can be swapped
(e.g. a student-teacher feature map) without touching the body.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import CheckpointError
from .io import atomic_torch_save, safe_torch_load

CHECKPOINT_FORMAT = "robustkd-checkpoint-v1"

# Layer widths of the seed paper's CNN (Mandal & Gao; after Papernot et al.): 4 conv + 2 dense.
PAPERNOT_WIDTHS = {"mnist": (32, 32, 64, 64, 200, 200), "cifar": (64, 64, 128, 128, 256, 256)}


class Normalize(nn.Module):
    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``temperature`` divides the logits at the output, in training and at inference: a model that keeps
    its temperature when deployed (LTD's student). 1 for every other model."""

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int, mean, std, temperature: float = 1.0):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.features = features
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(self.normalize(x)))
        return logits if self.temperature == 1.0 else logits / self.temperature


def _flat_dim(module: nn.Module, channels: int, size: int) -> int:
    with torch.no_grad():
        return module(torch.zeros(1, channels, size, size)).flatten(1).shape[1]


def papernot_cnn(channels: int, size: int, width: str = "mnist") -> tuple[nn.Module, int]:
    c1, c2, c3, c4, d1, d2 = PAPERNOT_WIDTHS[width]
    conv = nn.Sequential(
        nn.Conv2d(channels, c1, 3), nn.ReLU(inplace=True),
        nn.Conv2d(c1, c2, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(c2, c3, 3), nn.ReLU(inplace=True),
        nn.Conv2d(c3, c4, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(),
    )
    flat = _flat_dim(conv, channels, size)
    features = nn.Sequential(conv, nn.Linear(flat, d1), nn.ReLU(inplace=True), nn.Linear(d1, d2), nn.ReLU(inplace=True))
    return features, d2


def lenet(channels: int, size: int, width: str = "mnist") -> tuple[nn.Module, int]:
    """A small, different family from the Papernot CNN: the default transfer-attack surrogate."""
    conv = nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
    )
    flat = _flat_dim(conv, channels, size)
    return nn.Sequential(conv, nn.Linear(flat, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh()), 84


def resnet18(channels: int, size: int, width: str = "mnist") -> tuple[nn.Module, int]:
    """torchvision ResNet-18 with the CIFAR stem: 3x3 stride-1 first conv, no max-pool."""
    import torchvision  # imported here: ~2 s saved in every stage that does not need it

    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net, 512


def mobilenetv2(channels: int, size: int, width: str = "mnist") -> tuple[nn.Module, int]:
    """torchvision MobileNetV2; the stem keeps full resolution on small (<= 64 px) images."""
    import torchvision

    net = torchvision.models.mobilenet_v2(num_classes=10)
    stem = net.features[0][0]
    net.features[0][0] = nn.Conv2d(channels, stem.out_channels, 3, 1 if size <= 64 else 2, 1, bias=False)
    net.classifier = nn.Identity()
    return net, 1280


ARCHITECTURES: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    "papernot_cnn": papernot_cnn,
    "lenet": lenet,
    "resnet18": resnet18,
    "mobilenetv2": mobilenetv2,
}


def build_model(arch: str, channels: int, size: int, num_classes: int, mean, std, width: str = "mnist",
                temperature: float = 1.0) -> Classifier:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHITECTURES)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    features, dim = ARCHITECTURES[arch](channels, size, width)
    return Classifier(features, dim, num_classes, mean, std, temperature)


def place(model: nn.Module, device: str | torch.device) -> nn.Module:
    """Move to ``device`` in channels_last layout: ~30% faster convolutions on CPU (oneDNN), and on GPUs."""
    return model.to(device=device, memory_format=torch.channels_last)


def model_spec(arch: str, meta: dict, width: str = "mnist", temperature: float = 1.0) -> dict[str, Any]:
    """Everything needed to rebuild the model, as plain data (stored inside checkpoints)."""
    channels, size, _ = meta["shape"]
    return {"arch": arch, "channels": channels, "size": size, "num_classes": meta["num_classes"],
            "mean": list(meta["mean"]), "std": list(meta["std"]), "width": width, "temperature": float(temperature)}


def save_checkpoint(path: str | Path, model: nn.Module, spec: dict, info: dict) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "spec": spec, "info": info, "state_dict": state}, path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """Rebuild a model from a checkpoint written by :func:`save_checkpoint` (weights_only load)."""
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint; regenerate it with `dvc repro`.")
    spec = ckpt["spec"]
    model = build_model(**spec)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not match architecture {spec['arch']!r}: {err}") from None
    return place(model, device).eval(), ckpt["info"]
