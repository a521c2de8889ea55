"""One training loop for every role (teacher, assistants, student, surrogate).

The data come through one interface (robustkd.splits): a split that fits in memory stays a uint8 tensor on the
training device, its batches cast and augmented there as whole tensors; a streamed split (ImageNet) is decoded and
augmented per image by DataLoader workers. The loop is the same for both. The checkpoint kept is the epoch with
the best validation accuracy, never a test-set choice. Every epoch writes a resume file atomically (sealed like a
checkpoint: robustkd.io.load_sealed), so a killed run restarts from its last complete epoch and ends with the same
weights (and the same dvclive logs) as an uninterrupted one. The resume file is used only when the run's
fingerprint matches (``run_parts``: config, data, upstream models, process count, precision, device, thread count,
torch version); otherwise the log says which part differed. It is kept after the last epoch, so a rerun of a
finished run (a stage killed after its script ended but before DVC recorded it) rebuilds the same checkpoint in
seconds without a training step. A training step that runs out of memory ends the run with a ResourceError that names
the batch-size param to lower; nothing is written before the first step has succeeded.

Engine (params.yaml `engine`): on a device that computes bf16 natively (a CUDA GPU with bf16, a CPU with AVX512-BF16
or AMX) the training forward and loss run under bf16 autocast (``engine.bf16``), and so do training-time attacks'
model passes (``train_attack.bf16``, robustkd.adversarial); elsewhere, and with ``engine.bf16: false``, training is
fp32. The model can be compiled (``engine.compile``, opt-in). Under
``torchrun`` (WORLD_SIZE > 1) the same loop trains with DistributedDataParallel (see ``robustkd.distributed``):
each process takes an equal share of every global batch of ``batch_size`` samples, in the single-process order.

Adversarial weight perturbation (params.yaml `awp`, :mod:`robustkd.awp`): for a PGD-AT, TRADES or LTD loss, from the
end of its warm-up on, each step's loss and gradients are taken at the perturbed weights w + v, the weights are put
back exactly, and then the optimiser steps. Without it (``awp=None``) a step is what it was before AWP existed.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from . import distributed
from .awp import AWPConfig, WeightPerturbation, supports
from .splits import MemorySplit, StreamSplit, as_split, augment_batch, count_correct, shard, to_float  # noqa: F401
from .errors import CheckpointError, ProjectError, ResourceError
from .io import atomic_torch_save_sealed, load_sealed

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    augment: bool
    seed: int

    @classmethod
    def from_params(cls, group: dict, seed: int) -> "TrainConfig":
        return cls(**{k: group[k] for k in ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
                                             "schedule", "augment")}, seed=seed)


@dataclass(frozen=True)
class Engine:
    """How the loop runs (params.yaml `engine`): bf16 autocast where the device has native bf16, torch.compile."""
    bf16: bool = True       # bf16 autocast for the training forward and loss, where the device has native bf16
    compile: bool = False   # torch.compile the model for training (opt-in: compiling takes time)

    @classmethod
    def from_params(cls, group: dict | None) -> "Engine":
        return cls() if group is None else cls(bf16=group["bf16"], compile=group["compile"])


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA GPU with bf16 units (Ampere and later), or a CPU with
    AVX512-BF16 or AMX (oneDNN's bf16 kernels). Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def uses_autocast(device: torch.device, engine: Engine) -> bool:
    """bf16 autocast for training when ``engine.bf16`` is on and the device has native bf16 (:func:`native_bf16`)."""
    return engine.bf16 and native_bf16(device)


BF16_AUTOCAST, FP32 = "bf16-autocast", "fp32"


def precision_name(device: torch.device, engine: Engine) -> str:
    """What the training forward and loss run in, as recorded in checkpoints and metrics.json. ``train`` decides
    it once per run."""
    return BF16_AUTOCAST if uses_autocast(device, engine) else FP32


def autocast_for(device: torch.device, precision: str):
    """The context the training forward and loss run in (a fresh one per step), for a :func:`precision_name`."""
    if precision == BF16_AUTOCAST:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pick_device() -> torch.device:
    """The GPU if there is one (under torchrun: this process's GPU, cuda:LOCAL_RANK), else the CPU."""
    return distributed.device()


def accuracy(model: nn.Module, x_or_split, y: torch.Tensor | None = None, batch_size: int = 1000) -> float:
    """Accuracy on uint8 images and labels, or on a split (robustkd.splits; the loop's validation)."""
    if y is None:
        return x_or_split.count_correct(model) / max(len(x_or_split), 1)
    return count_correct(model, x_or_split, y, batch_size) / max(len(y), 1)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Over the trainable parameters only: a purifier trains, the fixed classifier behind it does not."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    return cfg.lr


def fingerprint(*parts) -> str:
    """Identifies a training run: a resume file from another config is never picked up."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_parts(run_id: str, cfg: TrainConfig, device: torch.device, precision: str, world: int) -> dict[str, str]:
    """Everything that changes the weights a run ends with, part by part (so a mismatch can say which part):
    the caller's run id (role, model spec, data and upstream checksums), the training config, the process count,
    the precision, the device type, the intra-op thread count (it changes the summation order of CPU kernels) and
    the torch version."""
    return {"run": fingerprint(run_id), "config": fingerprint(cfg), "world_size": str(world), "precision": precision,
            "device": device.type, "threads": str(torch.get_num_threads()), "torch": str(torch.__version__)}


def _mismatch(saved: dict | None, here: dict[str, str]) -> str:
    """Why a resume file's parts differ from this run's (empty when they match)."""
    if not isinstance(saved, dict):
        return "it has no run fingerprint (written by an older version)"
    diff = [f"{k}: {saved.get(k)!r} there, {v!r} here" for k, v in here.items() if saved.get(k) != v]
    return "; ".join(diff)


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's "can't allocate memory" RuntimeError."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):  # torch.cuda.OutOfMemoryError is the same class
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        s in msg for s in ("can't allocate memory", "cannot allocate memory", "out of memory"))


LIVE_KEYS = ("train_loss", "train_acc", "val_acc")


def _open_live(live_dir: str | Path, history: list[dict]):
    """A fresh dvclive log holding the epochs of ``history``, replayed from the resume file.

    Not ``Live(resume=True)``: `dvc repro` deletes a stage's outputs (the live folder too) before rerunning
    it, so after a kill the earlier epochs exist only in the resume file.
    """
    from dvclive import Live  # imported lazily: tests of the loop do not need it

    live = Live(dir=str(live_dir), resume=False, save_dvc_exp=False, dvcyaml=False)
    for row in history:
        _log_live(live, row)
    return live


def _log_live(live, row: dict) -> None:
    for key in LIVE_KEYS:
        live.log_metric(key, row[key])
    live.next_step()


@dataclass
class TrainResult:
    model: nn.Module
    best_epoch: int
    best_val_acc: float
    history: list[dict]
    seconds: float
    precision: str  # what the forward and loss ran in: "bf16-autocast" or "fp32" (precision_name)
    fingerprint: str = ""  # the run's fingerprint (run_parts), recorded in the checkpoint


def _wrap_for_training(model: nn.Module, device: torch.device, engine: Engine, world: int) -> nn.Module:
    """What the loss functions call: the model, compiled (``engine.compile``), in DistributedDataParallel (world > 1).

    Checkpoints, resume files and validation always use ``model`` itself (its state_dict keys never change).
    Training-time attacks craft on the module inside the DDP wrapper (``robustkd.adversarial.unwrap``): their
    extra forward passes need no gradient synchronisation.
    """
    net = model
    if world > 1 and device.type == "cuda":
        # Batch-norm statistics over the global batch, as in a single process (in place: same parameters and
        # buffers, same state_dict keys). SyncBatchNorm needs a GPU, so on CPU (gloo) each process normalises
        # its own share; the default models have no batch norm.
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if engine.compile:
        net = torch.compile(net)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = None  # CPU
        if device.type == "cuda":
            device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
        net = DistributedDataParallel(net, device_ids=device_ids)
    return net


def train(
    model: nn.Module,
    loss_fn: LossFn,
    train_data: tuple[torch.Tensor, torch.Tensor] | MemorySplit | StreamSplit,
    val_data: tuple[torch.Tensor, torch.Tensor] | MemorySplit | StreamSplit,
    cfg: TrainConfig,
    role: str,
    live_dir: str | Path | None = None,
    resume_path: str | Path | None = None,
    run_id: str = "",
    batch_size_param: str = "batch_size",
    engine: Engine | None = None,
    single_process_reason: str | None = None,
    awp: AWPConfig | None = None,
) -> TrainResult:
    """Train ``model`` in place and return it loaded with its best-validation-accuracy weights (``cfg.epochs`` = 0:
    the weights it came with, best epoch 0).

    ``batch_size_param`` is the params.yaml key named when a step runs out of memory (``teacher.batch_size``).
    ``engine``: bf16 autocast and torch.compile (default: ``Engine()``: bf16 where native, no compile).
    ``single_process_reason``: why this model cannot train under DDP (the method's loss calls the model's parts
    directly); None: it can.
    ``awp``: adversarial weight perturbation (:mod:`robustkd.awp`) from its warm-up on; ``loss_fn`` must then be a
    loss AWP supports (PGD-AT, TRADES, LTD). None: no AWP, the loop as it was before AWP existed. The caller makes
    ``awp`` part of ``run_id`` (robustkd.roles records it), so a resume file never mixes runs with and without it.
    Under torchrun (WORLD_SIZE > 1): DDP, each process a share of every global batch of ``cfg.batch_size``;
    only rank 0 writes the resume file and the dvclive log, and every process returns the same weights.
    """
    engine = engine or Engine()
    if awp is not None and not supports(loss_fn):
        raise ProjectError(f"[{role}] AWP (params.yaml `awp`) needs an adversarial-training loss (PGD-AT, TRADES, "
                           f"LTD); {type(loss_fn).__name__} is not one")
    device = next(model.parameters()).device
    distributed.setup(device)
    world = distributed.world_size() if distributed.active() else 1
    rank = distributed.rank() if world > 1 else 0
    main = rank == 0
    train_split, val_split = as_split(train_data), as_split(val_data)
    distributed.check_batch_size(cfg.batch_size, len(train_split), batch_size_param, world)
    if world > 1 and single_process_reason:
        raise ProjectError(f"[{role}] {single_process_reason}, which DistributedDataParallel would not synchronise: "
                           f"run it as one process (`python src/<stage>.py` or `dvc repro`), not under torchrun.")
    train_split, val_split = train_split.to(device), val_split.to(device)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train_split) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    # What changes the numbers is part of the run's identity: a resume file of another run is never picked up.
    precision = precision_name(device, engine)
    parts = run_parts(run_id, cfg, device, precision, world)
    if train_split.identity() is not None:  # a streamed split decodes and augments otherwise: another run
        parts["data_path"] = fingerprint(train_split.identity())
    run_id = fingerprint(parts)
    if world > 1 and rank:
        # Each process draws its own random starts / noise (DDP broadcasts rank 0's initial weights).
        torch.manual_seed(torch.initial_seed() + rank)

    start_epoch, best_val, best_epoch, best_state, history, elapsed = 0, -1.0, -1, None, [], 0.0
    resume_path = Path(resume_path) if resume_path else None
    saved = None
    if resume_path and resume_path.is_file():
        try:
            saved = load_sealed(resume_path, map_location=device)
        except CheckpointError as err:  # a resume file is only a shortcut: never a reason to stop
            if main:
                print(f"[{role}] not resuming: {resume_path}: damaged or unreadable; starting from epoch 1 "
                      f"(detail: {str(err).split('. Restore it')[0]})")
        if saved is not None and saved.get("run_id") != run_id:
            if main:
                print(f"[{role}] not resuming from {resume_path}: it belongs to another run "
                      f"({_mismatch(saved.get('fingerprint'), parts) or 'different run id'}). Starting from epoch 1.")
            saved = None
        if saved is not None:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            rng = saved["rank_rng"][rank] if world > 1 else saved
            # RNG states are CPU byte tensors, whatever map_location moved them to
            torch.set_rng_state(rng["cpu_rng"].cpu())
            if device.type == "cuda" and rng.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(rng["cuda_rng"].cpu(), device)
            start_epoch, best_val, best_epoch = saved["epoch"], saved["best_val"], saved["best_epoch"]
            best_state, elapsed = saved["best_state"], saved["elapsed"]
            history = json.loads(saved["history"])
            if main:
                if start_epoch >= cfg.epochs:
                    print(f"[{role}] all {cfg.epochs} epochs done in {resume_path} (same run fingerprint): "
                          f"rebuilding the checkpoint without training")
                else:
                    print(f"[{role}] resuming after epoch {start_epoch} from {resume_path}")

    if cfg.epochs == 0:  # the initial weights as they are (a teacher from `teacher.init_from`): validated, not trained
        best_val, best_epoch = accuracy(model, val_split), 0
        best_state = copy.deepcopy({k: v.detach() for k, v in model.state_dict().items()})
        if main:
            print(f"[{role}] 0 epochs: the initial weights as they are, val_acc {best_val:.4f}", flush=True)

    net = _wrap_for_training(model, device, engine, world)
    # After the wrap: the proxy copies the model as it trains (SyncBatchNorm under DDP on CUDA).
    perturbation = WeightPerturbation(model, awp, world) if awp is not None else None
    live = None  # opened after the first epoch: nothing is written before a training step has succeeded
    # A loss with a schedule (DARHT) is told the fraction of training done before each step; it depends only on
    # (epoch, step), so a resumed run follows the same schedule.
    set_progress = getattr(loss_fn, "set_progress", None)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        # Data order depends only on (seed, epoch), so a resumed run sees the same batches (and so does every
        # process of a torchrun launch: each takes its share of the same global batch, with its loss scale).
        batches = train_split.train_batches(epoch, cfg.batch_size, cfg.seed, cfg.augment, world, rank)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(batches, total=steps_per_epoch, desc=f"{role} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   mininterval=2, disable=not main)
        for i, (xb, yb, scale) in enumerate(bar):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, epoch * steps_per_epoch + i, total_steps)
            if set_progress is not None:
                set_progress((epoch * steps_per_epoch + i) / total_steps)
            perturbed = perturbation is not None and awp.active(epoch)
            try:
                try:
                    with autocast_for(device, precision):
                        if perturbed:  # the loss and its gradients at w + v (robustkd.awp)
                            loss, logits = perturbation.perturb(loss_fn, net, xb, yb, scale)
                        else:
                            loss, logits = loss_fn(net, xb, yb)
                    optimizer.zero_grad(set_to_none=True)
                    (loss if scale == 1.0 else loss * scale).backward()
                finally:
                    if perturbed:
                        perturbation.restore()  # w, bit for bit, before the optimiser step
                optimizer.step()
            except (RuntimeError, MemoryError) as err:
                if not is_out_of_memory(err):
                    raise
                raise ResourceError(
                    f"[{role}] out of memory in a training step (epoch {epoch + 1}, step {i + 1}) with "
                    f"`{batch_size_param}` = {cfg.batch_size} on {device.type}. Lower `{batch_size_param}` in "
                    f"params.yaml (e.g. to {max(cfg.batch_size // 2, 1)}; training then restarts from epoch 1), or free "
                    f"memory used by other processes, then rerun. Detail: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
                ) from err
            loss_sum += loss.item() * len(yb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(yb)
        if world == 1:
            val_acc = accuracy(model, val_split)
        else:
            loss_sum, correct, seen = distributed.all_reduce_sum([loss_sum, correct, seen], device)
            val_correct, = distributed.all_reduce_sum([val_split.count_correct(model, world, rank)], device)
            val_acc = val_correct / max(len(val_split), 1)
        elapsed += time.perf_counter() - t0
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen, "val_acc": val_acc}
        history.append(row)
        if main:
            print(f"[{role}] epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} "
                  f"train_acc {row['train_acc']:.4f} val_acc {val_acc:.4f}", flush=True)
        if val_acc > best_val:
            best_val, best_epoch = val_acc, epoch + 1
            best_state = copy.deepcopy({k: v.detach() for k, v in model.state_dict().items()})
        if live_dir is not None and main:
            if live is None:
                live = _open_live(live_dir, history[:-1])
            _log_live(live, row)
        if resume_path:
            rng = {"cpu_rng": torch.get_rng_state(),
                   "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None}
            ranks_rng = distributed.all_gather_object(rng) if world > 1 else None  # every process's own streams
            if main:
                atomic_torch_save_sealed({
                    "run_id": run_id, "fingerprint": parts, "epoch": epoch + 1, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), **rng,
                    **({"rank_rng": ranks_rng} if world > 1 else {}),
                    "best_val": best_val, "best_epoch": best_epoch, "best_state": best_state,
                    "history": json.dumps(history), "elapsed": elapsed,
                }, resume_path)
            distributed.barrier()
    if live_dir is not None and main:
        if live is None:  # every epoch was done before the restart (killed before the checkpoint was saved)
            live = _open_live(live_dir, history)
        live.end()
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, best_epoch, best_val, history, elapsed, precision, run_id)
