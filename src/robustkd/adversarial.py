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

Precision (``InnerAttack.bf16``, params.yaml ``train_attack.bf16``): crafting runs in the precision the training step
runs in. ``robustkd.training.train`` decides that once per run (bf16 autocast where ``engine.bf16`` is on and the
device has native bf16, else fp32) and calls the loss inside that context; with ``bf16: true`` (the default) the
attack's model forward and backward stay in it, with ``bf16: false`` crafting switches autocast off and runs in fp32
(for comparisons). Either way only the model's forward and backward see bf16: the objective gets fp32 logits, x'
is an fp32 tensor, the gradient with respect to it comes back in fp32, and its sign, the step and the projection
onto the ε-ball ∩ [0, 1] are fp32 ops outside autocast. Evaluation attacks (``robustkd.attacks``) never use this
module's precision: they run in fp32 (``robustkd.attacks.fp32``).
Under torchrun the model arrives wrapped in DistributedDataParallel; the attack uses the module inside (``unwrap``).
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
    """Autocast switched off for the block if it is on (bf16 training); a no-op otherwise."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


@contextmanager
def autocast_off() -> Iterator[None]:
    """Autocast switched off for the block on every device type where it is on (CPU and CUDA)."""
    with contextlib.ExitStack() as stack:
        for device_type in ("cpu", "cuda"):
            stack.enter_context(full_precision(device_type))
        yield


def crafting_precision(attack: "InnerAttack", device_type: str):
    """The context of a training attack's model forward passes: the training step's own (bf16 autocast where the
    training loop turned it on; ``attack.bf16``) or fp32 (``attack.bf16`` false: autocast off for the block).
    It never turns autocast on itself: whether bf16 is used at all stays the training loop's one decision."""
    return contextlib.nullcontext() if attack.bf16 else full_precision(device_type)


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point of (L∞ ball around x) ∩ [0, 1]^d: the two boxes intersect, so clamping twice is exact."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class InnerAttack:
    """One training-time PGD: ε, number of steps, step size (absolute), start, model mode, precision."""

    eps: float
    steps: int
    step_size: float
    random_start: str = "uniform"   # uniform in the ε-ball (Madry) | normal: 0.001·N(0, 1) (TRADES)
    mode: str = "eval"
    bf16: bool = True               # craft in the training step's precision (bf16 autocast where it is on); False: fp32

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
        if not isinstance(self.bf16, bool):
            raise ValueError(f"train_attack.bf16 must be true or false, got {self.bf16!r}")

    @classmethod
    def from_params(cls, params: dict, random_start: str = "uniform") -> "InnerAttack":
        """From params.yaml: `train_attack`, with ε defaulting to `attack.headline_eps`."""
        group = params["train_attack"]
        eps = group["eps"] if group["eps"] is not None else params["attack"]["headline_eps"]
        return cls(eps=float(eps), steps=group["steps"], step_size=group["step_size_ratio"] * float(eps),
                   random_start=random_start, mode=group["mode"], bf16=group["bf16"])


def maximise(model: nn.Module, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor],
             attack: InnerAttack) -> torch.Tensor:
    """argmax over the L∞ ball of ``objective(model(x'))`` (a scalar) by signed-gradient ascent.

    Returns a detached x' (x's dtype: fp32 in training) in [0, 1] with ||x' - x||∞ <= ε. The model's modes and
    requires_grad flags are restored afterwards. The model's forward (and so its backward) runs in
    :func:`crafting_precision` (the training step's bf16 autocast, or fp32); the objective gets the logits as fp32
    and runs with autocast off, and so do the signed step and the projection, on fp32 tensors. Runs on the module
    inside a DDP wrapper.
    """
    model = unwrap(model)
    x = x.detach()
    if attack.random_start == "uniform":
        noise = (torch.rand(x.shape, dtype=x.dtype) * 2 - 1) * attack.eps
    else:
        noise = 0.001 * torch.randn(x.shape, dtype=x.dtype)
    # empty_like keeps x's memory format (channels_last): the model's fast path
    x_adv = project_linf(x + torch.empty_like(x).copy_(noise), x, attack.eps)
    device_type = x.device.type
    with frozen(model):
        if attack.mode == "train":
            model.train()
        for _ in range(attack.steps):
            x_adv.requires_grad_(True)
            with crafting_precision(attack, device_type):
                logits = model(x_adv)
            with full_precision(device_type):  # the objective on fp32 logits (bf16 ones widened, not recomputed)
                loss = objective(logits.float())
            grad, = torch.autograd.grad(loss, x_adv)  # x_adv's dtype: autograd differentiates autocast's casts back
            with full_precision(device_type):
                x_adv = project_linf(x_adv.detach() + attack.step_size * grad.sign(), x, attack.eps)
    return x_adv.detach()
