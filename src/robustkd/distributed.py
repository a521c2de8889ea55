"""Multi-process training under ``torchrun``: the same stage scripts and the same training loop.

A plain ``python src/teacher.py`` (or ``dvc repro``) has no ``WORLD_SIZE`` in its environment, or 1, and every
function here is then a no-op: single-process runs behave exactly as before. Launched by
``torchrun --nproc_per_node N src/teacher.py`` (or across nodes), every process runs the whole stage; the
training loop (:func:`robustkd.training.train`) initialises the process group (nccl on CUDA, gloo on CPU), wraps
the model in DistributedDataParallel and gives each process its share of every global batch; only rank 0 writes
files, and the others wait for it at a barrier.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.distributed as dist

from .errors import ParamsError
from .params import role_settings, setting_key


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched() -> bool:
    """True under torchrun with more than one process."""
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` under torchrun on a GPU machine, else as a single process."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if launched():
        torch.cuda.set_device(local_rank())
        return torch.device("cuda", local_rank())
    return torch.device("cuda")


def setup(dev: torch.device) -> None:
    """Join the process group (once per process) when launched by torchrun; nccl on CUDA, gloo on CPU."""
    if not launched() or dist.is_initialized():
        return
    if dev.type == "cuda":
        dist.init_process_group("nccl", device_id=dev)
    else:
        dist.init_process_group("gloo")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every process (joining the process group first if needed); a no-op in a single process."""
    if launched():
        setup(device())
    if active():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def on_main(fn: Callable[..., Any], *args, **kwargs) -> None:
    """Run ``fn`` (a write) on rank 0 only; every process waits until it is done."""
    if is_main():
        fn(*args, **kwargs)
    barrier()


def all_gather_object(obj: Any) -> list[Any]:
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], dev: torch.device) -> list[float]:
    """Sums over processes (float64, exact for the counts summed here)."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return t.tolist()


def check_batch_size(batch_size: int, n_train: int, param: str, world: int | None = None) -> None:
    """Each process takes ``batch_size / world`` samples of every global batch: the world size must divide it,
    and the last (partial) batch of an epoch must leave every process at least one sample."""
    world = world_size() if world is None else world
    if world <= 1:
        return
    if batch_size % world:
        lower, upper = max(world, batch_size // world * world), (batch_size // world + 1) * world
        raise ParamsError(
            f"`{param}` = {batch_size}: not divisible by the {world} processes of this torchrun launch "
            f"(WORLD_SIZE={world}). The global batch is split evenly across processes; set `{param}` to a multiple of "
            f"{world} (e.g. {lower} or {upper}), or launch with a number of processes that divides {batch_size}.")
    last = n_train % batch_size
    if 0 < last < world:
        raise ParamsError(
            f"`{param}` = {batch_size}: the last batch of each epoch holds {last} of the {n_train} training samples, "
            f"fewer than the {world} processes, so one would get none. Change `{param}` (or `data.val_size`), or "
            f"launch with at most {last} processes.")


def check_params(params: dict) -> None:
    """Before any data is read: every trained group's batch size suits this launch's world size."""
    if not launched():
        return
    errors = []
    if params["method"] == "purification":
        errors.append("`method` = 'purification': its purifiers are trained through submodules of the model, which "
                      "DistributedDataParallel would not synchronise; run this method as one process "
                      "(`dvc repro` or `python src/<stage>.py`), not under torchrun")
    groups = ["teacher", "assistant", "student", "surrogate"]
    if params["method"] == "purification":
        groups += ["purifier_teachers", "purifier_student"]
    for group in groups:
        try:
            check_batch_size(role_settings(params, group)["batch_size"], 0, setting_key(params, group, "batch_size"))
        except ParamsError as err:
            if str(err) not in errors:  # a shared `training.batch_size` is reported once
                errors.append(str(err))
    if errors:
        raise ParamsError("params.yaml does not suit this torchrun launch:\n  - " + "\n  - ".join(errors))
