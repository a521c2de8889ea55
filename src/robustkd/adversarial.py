"""The inner maximisation of adversarial training (L∞ PGD on any loss of the logits), and the two pieces
it shares with the evaluation attacks (``frozen``, ``project_linf``).

This module sits outside ``robustkd.attacks`` so that training stages do not import (and DVC does not
make them depend on) the evaluation attacks: editing an attack reruns the attack stage, never training.

Evaluation attacks (``pgd``) stop at the first misclassified iterate and need integer labels; training
attacks instead maximise an arbitrary objective (CE for PGD-AT, KL to a fixed distribution for TRADES,
RSLAD and LTD) and return the last iterate. The random start comes from the global CPU RNG, which
training seeds and saves in its resume file, so a resumed run crafts the same examples.

``mode`` is the model's mode while crafting: "eval" (default; batch norm uses its running statistics
and is not updated, dropout is off, as in TRADES' and RSLAD's code) or "train" (batch statistics of
the adversarial batch, as in Madry et al.'s TensorFlow code). Parameters never get gradients here.

Crafting runs in fp32 even when the training step runs under bf16 autocast (CUDA, `engine.bf16`): the attack's
gradient signs are computed at full precision, and only the training loss that uses x' is in bf16. Under torchrun
the model arrives wrapped in DistributedDataParallel; the attack uses the module inside (``unwrap``).
"""
from __future__ import annotations

import contextlib
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

MODES = ("eval", "train")


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter for the duration of the block.

    Eval mode: dropout / batch-norm statistics must not change the function being attacked.
    No parameter gradients: the attack only needs d loss / d x, and parameter grads would waste
    memory and could leak into a training loop's ``.grad``. Each module's own training flag and
    each parameter's own requires_grad flag are restored (not a blanket ``model.train()``), even
    when the block raises.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (else ``model``). Forward passes that need no gradient
    synchronisation (crafting, frozen clean logits) use it: DDP expects each of its forwards to be followed by a
    backward through the parameters, which an attack never does. A torch.compile'd module is kept as it is."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def full_precision(device_type: str):
    """Autocast switched off for the block if it is on (bf16 training on CUDA); a no-op otherwise."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point of (L∞ ball around x) ∩ [0, 1]^d: the two boxes intersect, so clamping twice is exact."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class InnerAttack:
    """One training-time PGD: ε, number of steps, step size (absolute), start, model mode."""

    eps: float
    steps: int
    step_size: float
    random_start: str = "uniform"   # uniform in the ε-ball (Madry) | normal: 0.001·N(0, 1) (TRADES)
    mode: str = "eval"

    def __post_init__(self):
        if not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"train_attack.eps must be in [0, 1] (pixel units), got {self.eps!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"train_attack.steps must be an integer >= 0, got {self.steps!r}")
        if not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise ValueError(f"the training attack's step size must be > 0, got {self.step_size!r}")
        if self.random_start not in ("uniform", "normal"):
            raise ValueError(f"random_start must be 'uniform' or 'normal', got {self.random_start!r}")
        if self.mode not in MODES:
            raise ValueError(f"train_attack.mode must be one of {list(MODES)}, got {self.mode!r}")

    @classmethod
    def from_params(cls, params: dict, random_start: str = "uniform") -> "InnerAttack":
        """From params.yaml: `train_attack`, with ε defaulting to `attack.headline_eps`."""
        group = params["train_attack"]
        eps = group["eps"] if group["eps"] is not None else params["attack"]["headline_eps"]
        return cls(eps=float(eps), steps=group["steps"], step_size=group["step_size_ratio"] * float(eps),
                   random_start=random_start, mode=group["mode"])


def maximise(model: nn.Module, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor],
             attack: InnerAttack) -> torch.Tensor:
    """argmax over the L∞ ball of ``objective(model(x'))`` (a scalar) by signed-gradient ascent.

    Returns a detached x' in [0, 1] with ||x' - x||∞ <= ε. The model's modes and requires_grad flags
    are restored afterwards. Runs in fp32 (autocast off) on the module inside a DDP wrapper.
    """
    model = unwrap(model)
    x = x.detach()
    if attack.random_start == "uniform":
        noise = (torch.rand(x.shape, dtype=x.dtype) * 2 - 1) * attack.eps
    else:
        noise = 0.001 * torch.randn(x.shape, dtype=x.dtype)
    # empty_like keeps x's memory format (channels_last): the model's fast path
    x_adv = project_linf(x + torch.empty_like(x).copy_(noise), x, attack.eps)
    with frozen(model), full_precision(x.device.type):
        if attack.mode == "train":
            model.train()
        for _ in range(attack.steps):
            x_adv.requires_grad_(True)
            loss = objective(model(x_adv))
            grad, = torch.autograd.grad(loss, x_adv)
            x_adv = project_linf(x_adv.detach() + attack.step_size * grad.sign(), x, attack.eps)
    return x_adv.detach()
