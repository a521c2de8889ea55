"""Glue shared by the stage entry points in ``src/<stage>.py``: params, data, paths, one role's training."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import data, distributed, stage
from .errors import ProjectError
from .io import atomic_write_json, sha256_file
from .models import build_model, load_checkpoint, model_spec, place, save_checkpoint
from .training import Engine, TrainConfig, pick_device, train

PREPARED_DIR = Path("data/prepared")
MODELS_DIR = Path("models")
ASSISTANTS_DIR = MODELS_DIR / "assistants"
CHAIN_MANIFEST = ASSISTANTS_DIR / "chain.json"
LIVE_DIR = Path("dvclive")
RESUME_DIR = Path(".resume")  # per-epoch resume files; outside DVC's outputs so `dvc repro` keeps them
# Each trained model's wall-clock training seconds, read by the metrics stage for timing.json. Neither a DVC output
# nor a dep: time is not a function of the params, so it must not change a checkpoint or rerun a stage.
TIMING_DIR = Path(".timing")


def run_stage(main) -> None:
    """Run a stage's ``main(params)`` (:func:`robustkd.stage.run`); a ProjectError ends it with its message.

    Also under ``torchrun --nproc_per_node N src/<stage>.py``: every process runs ``main``, the batch sizes are
    checked against the world size first, and the process group is closed at the end.
    """
    stage.run(main, check=distributed.check_params, finish=distributed.shutdown)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def configure_cuda_determinism(deterministic: bool, device: torch.device) -> None:
    """Apply params.yaml `cuda_deterministic` before anything runs on ``device``.

    CPU training is deterministic already (same params -> same weights), so on CPU this does nothing. On CUDA,
    true asks for bitwise-reproducible runs: deterministic kernels only (an op without one raises rather than
    varying silently), the cuBLAS workspace setting they need, and no cuDNN autotuning; slower. False lets
    cuDNN benchmark and pick the fastest kernels, which may differ from run to run.
    """
    if device.type != "cuda":
        return
    if deterministic:
        # Read when cuBLAS starts, i.e. before the first matmul; ":16:8" (also valid) is kept if already set.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def load_training_data():
    meta = data.load_meta(PREPARED_DIR)
    return meta, data.load_split(PREPARED_DIR, "train"), data.load_split(PREPARED_DIR, "val")


def chain_paths() -> list[Path]:
    """The assistants in chain order, as written by the assistant stage (possibly empty)."""
    import json

    if not CHAIN_MANIFEST.is_file():
        raise ProjectError(f"{CHAIN_MANIFEST}: not found. Run `dvc repro assistant` first.")
    return [ASSISTANTS_DIR / name for name in json.loads(CHAIN_MANIFEST.read_text())["assistants"]]


def train_role(role: str, group: dict, seed: int, loss_fn, out_path: Path, live_dir: Path,
               meta: dict, train_data, val_data, extra_info: dict, upstream: list[Path] = (), *,
               cuda_deterministic: bool, params_group: str | None = None, output_temperature: float = 1.0,
               build: Callable[[torch.device], tuple[nn.Module, dict]] | None = None,
               engine: dict | None = None) -> dict:
    """Build, train and save one model; returns the info stored in its checkpoint.

    ``params_group`` is the params.yaml group of ``group`` (default: ``role``; the assistants share `assistant`).
    ``output_temperature`` divides the model's logits, in training and once deployed (see ``Classifier``).
    ``build(device) -> (model, spec)`` replaces the default classifier from ``group`` (purifiers); it runs
    after seeding, so initial weights depend on ``seed`` only.
    ``engine`` is params.yaml's `engine` group (None: its defaults). Under torchrun only rank 0 saves, and every
    process returns once the checkpoint exists (the next model of a chain reads it).
    """
    device = pick_device()
    configure_cuda_determinism(cuda_deterministic, device)
    seed_everything(seed)
    if build is None:
        spec = model_spec(group["arch"], meta, group["width"], output_temperature)
        model = place(build_model(**spec), device)
    else:
        model, spec = build(device)
    cfg = TrainConfig.from_params(group, seed)
    run_id = [role, spec, extra_info, meta["files"], [sha256_file(p) for p in upstream]]
    result = train(model, loss_fn, train_data, val_data, cfg, role, live_dir=live_dir,
                   resume_path=RESUME_DIR / f"{role}.pt", run_id=str(run_id),
                   batch_size_param=f"{params_group or role}.batch_size", engine=Engine.from_params(engine))
    info = {"role": role, "arch": spec.get("label", spec["arch"]), "best_epoch": result.best_epoch,
            "val_acc": result.best_val_acc, "train_precision": result.precision, "fingerprint": result.fingerprint,
            **extra_info}
    if distributed.is_main():
        save_checkpoint(out_path, result.model, spec, info)
        atomic_write_json(TIMING_DIR / f"{role}.json", {"role": role, "train_seconds": round(result.seconds, 2)})
        print(f"[{role}] saved {out_path} (best epoch {result.best_epoch}, val_acc {result.best_val_acc:.4f})")
    distributed.barrier()
    return info


def evaluated_models() -> dict[str, Path]:
    """{name: checkpoint} of every model the predict and attack stages evaluate, in chain order: teacher, its
    purifiers (method purification), assistant_1..k, the DARHT teachers the student learnt from (method darht),
    student."""
    from . import darht, purification  # both import this module (darht lazily)

    return {"teacher": MODELS_DIR / "teacher.pt", **{p.stem: p for p in purification.purifier_paths() + chain_paths()},
            **darht.evaluated_teachers(MODELS_DIR / "student.pt"), "student": MODELS_DIR / "student.pt"}


def load_model(path: Path):
    return load_checkpoint(path, pick_device())
