"""Clean predictions: every evaluated model's label for every test image.

Clean accuracy depends on the model and the test set only, so the predict stage computes it once per model
(``results/predict/<model>.json``) and the attack stage reads it: a change of attack settings reruns the attacks
without a forward pass over the whole test set for every model. Each file records the sha256 of the checkpoint and
of the test split it was computed from, and the attack stage refuses one made from anything else.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .bitsets import encode_bits
from .errors import CheckpointError
from .io import atomic_write_json, sha256_file
from .paths import PREDICTIONS_DIR

RERUN = "rerun the predict stage (`dvc repro predict`, or `python src/predict.py`)"


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's label for each image of ``x``, ``batch_size`` images at a time."""
    if len(x) == 0:  # e.g. the cascade left no point for an expensive attack
        return torch.zeros(0, dtype=torch.long, device=x.device)
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def predict_split(model: nn.Module, split, batch_size: int) -> torch.Tensor:
    """The model's label for each image of a split (robustkd.splits: in memory or streamed), in order."""
    out = [model(xb).argmax(1) for xb, _ in split.batches(batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=split.labels.device)


def predictions_path(name: str) -> Path:
    return PREDICTIONS_DIR / f"{name}.json"


def save_predictions(name: str, checkpoint: Path, test_sha256: str, predictions: torch.Tensor,
                     labels: torch.Tensor) -> int:
    """Write ``results/predict/<name>.json``; returns how many test images the model classifies correctly.

    ``correct``: the same per test image, as a bitset (robustkd.bitsets), which the metrics stage reads for the
    per-point outcomes (results/outcomes.json) without the labels."""
    hits = (predictions == labels).cpu()
    correct = int(hits.sum().item())
    atomic_write_json(predictions_path(name), {
        "model": name, "checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
        "test_sha256": test_sha256, "n_test": len(labels), "clean_correct": correct,
        "correct": encode_bits(hits.numpy()), "predictions": predictions.tolist()})
    return correct


def load_clean_correct(name: str, checkpoint: Path, test_sha256: str, labels: torch.Tensor) -> torch.Tensor:
    """Bool tensor (on ``labels``' device): whether model ``name`` classifies each test image correctly, read from
    the predict stage's file after checking that it was computed from ``checkpoint`` and this test split."""
    path = predictions_path(name)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; {RERUN}.")
    try:
        record = json.loads(path.read_text())
        predictions = torch.tensor(record["predictions"], dtype=torch.long)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable ({err}); {RERUN}.") from None
    if record.get("checkpoint_sha256") != sha256_file(checkpoint):
        raise CheckpointError(f"{path}: computed from another checkpoint than {checkpoint} (sha256 differs); {RERUN}.")
    if record.get("test_sha256") != test_sha256 or predictions.shape != labels.shape:
        raise CheckpointError(f"{path}: computed on another test split than data/prepared/test.pt; {RERUN}.")
    return predictions.to(labels.device) == labels
