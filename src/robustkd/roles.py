"""Training one role (teacher, assistant, student, surrogate, purifier, DARHT teacher): seeding, CUDA determinism,
the training loop, the checkpoint with the record of how the model was trained, and its training seconds."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from . import awp as awp_module
from . import data, distributed, splits
from .io import atomic_write_json, sha256_file
from .models import build_model, load_checkpoint, model_spec, place, save_checkpoint
from .paths import PREPARED_DIR, RESUME_DIR, TIMING_DIR
from .training import Engine, LossFn, TrainConfig, pick_device, train


@dataclass(frozen=True)
class TrainingRun:
    """What every role of a stage shares: the prepared data and the run-wide settings."""
    meta: dict
    train_data: tuple | splits.MemorySplit | splits.StreamSplit  # an (x, y) pair or a split (robustkd.splits)
    val_data: tuple | splits.MemorySplit | splits.StreamSplit
    cuda_deterministic: bool
    engine: dict | None = None  # params.yaml's `engine` group (None: its defaults)
    awp: dict | None = None     # params.yaml's `awp` group, for the stages that read it (None: no AWP)


@dataclass(frozen=True)
class RoleSpec:
    """One model to train.

    ``record``: the method's part of the checkpoint's info (how the model was trained); it is part of the run's
    identity too, so a resume file written under another record is never picked up.
    ``params_group``: the params.yaml group of ``group``, named when a batch does not fit (default: ``role``).
    ``output_temperature`` divides the model's logits, in training and once deployed (see ``Classifier``).
    ``build(device) -> (model, spec)`` replaces the default classifier from ``group``; it runs after seeding, so
    initial weights depend on ``seed`` only.
    ``single_process_reason``: why the role cannot train under torchrun (None: it can).
    ``init_state``: weights loaded into the model before training (a teacher's `init_from`, robustkd.pretrained);
    the file's sha256 belongs in ``record``.
    """
    role: str
    group: dict
    seed: int
    loss: LossFn
    out_path: Path
    live_dir: Path
    record: dict
    upstream: Sequence[Path] = field(default_factory=tuple)
    params_group: str | None = None
    output_temperature: float = 1.0
    build: Callable[[torch.device], tuple[nn.Module, dict]] | None = None
    single_process_reason: str | None = None
    init_state: dict | None = None


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


def load_training_run(params: dict, awp: bool = False) -> TrainingRun:
    """The prepared train and validation splits (in memory or streamed, as prepare wrote them; a streamed one is
    decoded by `data.workers` DataLoader workers) and run-wide settings; ``awp``: the stage reads params.yaml's `awp`
    group (dvc.yaml lists it for that stage), and its roles trained with PGD-AT, TRADES or LTD get adversarial weight
    perturbation."""
    meta = data.load_meta(PREPARED_DIR)
    workers = params["data"]["workers"]
    return TrainingRun(meta, splits.open_split(PREPARED_DIR, "train", workers),
                       splits.open_split(PREPARED_DIR, "val", workers), params["cuda_deterministic"], params["engine"],
                       params["awp"] if awp else None)


def awp_for(spec: "RoleSpec", run: TrainingRun) -> awp_module.AWPConfig | None:
    """AWP for this role: when `awp.enabled` and the role's loss is one AWP applies to (PGD-AT, TRADES, LTD)."""
    config = awp_module.AWPConfig.from_params(run.awp)
    return config if config is not None and awp_module.supports(spec.loss) else None


def train_role(spec: RoleSpec, run: TrainingRun) -> dict:
    """Build, train and save one model; returns the info stored in its checkpoint: what every model records (role,
    architecture, best epoch, validation accuracy, precision, run fingerprint), then ``spec.record``.

    Under torchrun only rank 0 saves, and every process returns once the checkpoint exists (the next model of a
    chain reads it).
    """
    device = pick_device()
    configure_cuda_determinism(run.cuda_deterministic, device)
    seed_everything(spec.seed)
    if spec.build is None:
        model_description = model_spec(spec.group["arch"], run.meta, spec.group["width"], spec.output_temperature,
                                       depth=spec.group.get("depth"))
        model = place(build_model(**model_description), device)
    else:
        model, model_description = spec.build(device)
    if spec.init_state is not None:
        model.load_state_dict(spec.init_state)
    cfg = TrainConfig.from_params(spec.group, spec.seed)
    awp = awp_for(spec, run)
    if awp is not None and awp.warmup_epochs >= cfg.epochs:
        if distributed.is_main():
            print(f"[{spec.role}] no adversarial weight perturbation: `awp.warmup_epochs` = {awp.warmup_epochs} covers "
                  f"all {cfg.epochs} epoch(s) of this model")
        awp = None
    # A model trained with AWP records it (part of the run's identity too); one without records nothing new, so its
    # checkpoint is byte-identical to one written before AWP existed.
    record = {**spec.record, "awp": awp.record()} if awp is not None else spec.record
    if awp is not None and distributed.is_main():
        print(f"[{spec.role}] adversarial weight perturbation: gamma {awp.gamma:g}, from epoch {awp.warmup_epochs + 1}")
    run_id = [spec.role, model_description, record, run.meta["files"], [sha256_file(p) for p in spec.upstream]]
    result = train(model, spec.loss, run.train_data, run.val_data, cfg, spec.role, live_dir=spec.live_dir,
                   resume_path=RESUME_DIR / f"{spec.role}.pt", run_id=str(run_id),
                   batch_size_param=f"{spec.params_group or spec.role}.batch_size",
                   engine=Engine.from_params(run.engine), single_process_reason=spec.single_process_reason, awp=awp)
    info = {"role": spec.role, "arch": model_description.get("label", model_description["arch"]),
            "best_epoch": result.best_epoch, "val_acc": result.best_val_acc, "train_precision": result.precision,
            "fingerprint": result.fingerprint, **record}
    if distributed.is_main():
        save_checkpoint(spec.out_path, result.model, model_description, info)
        atomic_write_json(TIMING_DIR / f"{spec.role}.json",
                          {"role": spec.role, "train_seconds": round(result.seconds, 2)})
        print(f"[{spec.role}] saved {spec.out_path} (best epoch {result.best_epoch}, val_acc {result.best_val_acc:.4f})")
    distributed.barrier()
    return info


def load_model(path: Path):
    return load_checkpoint(path, pick_device())
