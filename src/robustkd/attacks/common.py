"""Shared pieces of the attacks: model freezing, losses, projections, random starts, argument checks.

Contract (torchattacks-style) for every attack in this package:
  * x is float in [0, 1], shape (N, C, H, W); y is int64 of shape (N,);
  * the model maps [0, 1] images to LOGITS (normalisation lives inside the model);
  * attacks run with the model frozen (see ``frozen``) and return a detached x_adv in [0, 1]
    inside the ε-ball;
  * randomness comes only from an explicit CPU ``torch.Generator``; random tensors are drawn on
    the CPU and moved to ``x.device`` so that CPU and CUDA runs see the same stream;
  * attacks run in fp32 (``fp32``): autocast is off inside them even when the caller left a bf16 autocast on
    (training-time attacks, which may run in bf16, are ``robustkd.adversarial``'s, not these).
"""
from __future__ import annotations

import functools
import hashlib
import math
from typing import Callable, Sequence, TypeVar, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..adversarial import autocast_off, frozen, project_linf  # noqa: F401  (shared with training-time attacks)

# A single generator for the whole batch, or one generator per point (batch-size invariant, see
# ``attack_in_batches``).
GeneratorArg = Union[torch.Generator, Sequence[torch.Generator], None]

NORMS = ("linf", "l2")

F_ = TypeVar("F_", bound=Callable)


def fp32(fn: F_) -> F_:
    """``fn`` with autocast switched off for the call (CPU and CUDA): an evaluation attack measures the model in
    fp32 whatever context it is called from. Every public attack of this package and ``evaluation.evaluate`` use it."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with autocast_off():
            return fn(*args, **kwargs)
    return run


# ----------------------------------------------------------------------------------------- losses
def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of the deployed softmax (temperature 1) -- the seed papers' loss.

    It saturates when logits are large (p_y rounds to 1, gradient exactly 0): that is the
    gradient-masking effect of high-temperature distillation that ``margin_loss`` is immune to.
    """
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample CW margin on the logits: max_{j != y} z_j - z_y (> 0 iff misclassified).

    Its gradient is a difference of two logit gradients, so scaling the logits (softmax
    saturation) only scales the gradient and never zeroes it.
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - true


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": ce_loss,
    "margin": margin_loss,
}


# ------------------------------------------------------------------------------- argument checks
def check_norm(norm: str, allowed: Sequence[str] = NORMS, name: str = "norm") -> str:
    """Case-insensitive ('Linf' == 'linf'); returns the lower-case spelling."""
    if not isinstance(norm, str) or norm.lower() not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)} (case-insensitive), got {norm!r}")
    return norm.lower()


def check_eps(eps: float, norm: str, name: str = "eps") -> float:
    """ε ≥ 0; for L∞ also ε ≤ 1 (pixels live in [0, 1], a larger ball is the whole cube)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
        raise ValueError(f"{name} must be a finite number, got {eps!r}")
    if norm.lower() == "linf" and not 0.0 <= eps <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] for norm='linf' (pixels are in [0, 1]), got {eps}")
    if eps < 0:
        raise ValueError(f"{name} must be >= 0 for norm={norm!r}, got {eps}")
    return float(eps)


def check_positive_int(value: int, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_loss(loss: str, name: str = "loss") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if loss not in LOSSES:
        raise ValueError(f"{name} must be one of {sorted(LOSSES)}, got {loss!r}")
    return LOSSES[loss]


def check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    """Shapes, dtypes and the [0, 1] range: an attack on normalised inputs would silently use a wrong ε."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor of shape (N, C, H, W), got {getattr(x, 'shape', type(x))}")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0] or y.dtype != torch.int64:
        raise ValueError(f"y must be an int64 tensor of shape ({x.shape[0]},), got "
                         f"{getattr(y, 'dtype', type(y))} {tuple(getattr(y, 'shape', ()))}")
    if y.device != x.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("x must be in [0, 1] (pixel space; normalisation belongs inside the model), "
                         f"got range [{x.min().item():.4g}, {x.max().item():.4g}]")


# ---------------------------------------------------------------------------------- projections
def _per_sample_norm(d: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample, shaped (N, 1, 1, 1) for broadcasting."""
    return d.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (d.dim() - 1)))


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Rescale δ onto the L2 ball, then clamp to [0, 1].

    Clamping after rescaling keeps the point in the ball: since x ∈ [0, 1], clamping moves every
    coordinate towards x, so ||δ|| can only shrink.
    """
    delta = x_adv - x
    norm = _per_sample_norm(delta)
    factor = torch.clamp(eps / (norm + 1e-12), max=1.0)
    return (x + delta * factor).clamp_(0.0, 1.0)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    return project_linf(x_adv, x, eps) if norm == "linf" else project_l2(x_adv, x, eps)


def normalize_l2(g: torch.Tensor) -> torch.Tensor:
    """g / ||g||_2 per sample; a zero gradient stays zero (no NaN)."""
    return g / (_per_sample_norm(g) + 1e-12)


# ------------------------------------------------------------------------------------ randomness
def _check_cpu_generator(g: torch.Generator) -> None:
    if not isinstance(g, torch.Generator) or g.device.type != "cpu":
        raise ValueError("generator must be a CPU torch.Generator (or a sequence of them, one per point): "
                         "noise is drawn on the CPU and moved to x.device so CPU and CUDA runs match")


def random_delta(x: torch.Tensor, eps: float, norm: str, generator: GeneratorArg) -> torch.Tensor:
    """A random start δ, uniform in the L∞ ball or uniform in the L2 ball, on x's device and dtype.

    ``generator`` is one CPU generator for the whole batch, or one per point (then point i's noise
    depends only on its own generator: results do not depend on how points are batched).
    None means a fresh generator seeded with 0: deterministic, never the global RNG.
    """
    n, shape = x.shape[0], tuple(x.shape[1:])
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if isinstance(generator, torch.Generator):
        _check_cpu_generator(generator)
        if norm == "linf":
            d = torch.rand((n, *shape), generator=generator, dtype=x.dtype)
        else:
            d = torch.randn((n, *shape), generator=generator, dtype=x.dtype)
            u = torch.rand((n,), generator=generator, dtype=x.dtype)
    else:
        gens = list(generator)
        if len(gens) != n:
            raise ValueError(f"generator: got {len(gens)} per-point generators for {n} points")
        for g in gens:
            _check_cpu_generator(g)
        if norm == "linf":
            d = torch.stack([torch.rand(shape, generator=g, dtype=x.dtype) for g in gens]) if n else \
                torch.empty((0, *shape), dtype=x.dtype)
        else:
            pairs = [(torch.randn(shape, generator=g, dtype=x.dtype), torch.rand((1,), generator=g, dtype=x.dtype))
                     for g in gens]
            d = torch.stack([p[0] for p in pairs]) if n else torch.empty((0, *shape), dtype=x.dtype)
            u = torch.cat([p[1] for p in pairs]) if n else torch.empty((0,), dtype=x.dtype)
    d = d.to(x.device)
    if norm == "linf":
        return (2.0 * d - 1.0) * eps
    # Uniform in the ball: Gaussian direction, radius eps * U^(1/dim).
    u = u.to(x.device).view(-1, *([1] * len(shape)))
    return normalize_l2(d) * eps * u.pow(1.0 / math.prod(shape))


def point_generators(n: int, generator: torch.Generator | None, offset: int = 0) -> list[torch.Generator]:
    """One CPU generator per point, derived from a single base seed drawn once from ``generator``.

    Point i gets seed hash(base, i), so its noise does not depend on which batch it lands in.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    _check_cpu_generator(generator)
    base = int(torch.randint(0, 2**62, (1,), generator=generator))
    # Golden-ratio multiplier spreads consecutive indices over the seed space.
    return [torch.Generator().manual_seed((base + (offset + i) * 0x9E3779B97F4A7C15) % 2**63) for i in range(n)]


def point_key(row: torch.Tensor) -> int:
    """A 63-bit key of one image's exact pixels (float32 bytes): the same image gets the same key anywhere."""
    digest = hashlib.blake2b(row.detach().to("cpu", torch.float32).contiguous().numpy().tobytes(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


def point_generator(key: int, seed: int, stream: int = 0) -> torch.Generator:
    """The CPU generator of one point (``point_key``) for an attack's ``seed``; ``stream`` tells apart the point's
    draws (APGD: its n-th start; Square: a salt). Wrapped attacks draw from it instead of the batch's stream, so a
    point's randomness does not depend on the points attacked with it."""
    return torch.Generator().manual_seed((key ^ (seed * 0x9E3779B97F4A7C15 + stream)) % 2 ** 63)


def attack_in_batches(attack: Callable, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                      generator: torch.Generator | None = None, **kwargs):
    """Run ``attack(model, xb, yb, generator=..., **kwargs)`` batch by batch, batch-size invariantly.

    If ``generator`` is given, one generator per point is derived from it (``point_generators``)
    and each batch receives its slice, so the random starts -- and hence the result -- are the
    same for every batch size. Pass ``generator=None`` for attacks that take no generator
    (fgsm, cw_l2, square, autoattack). Returns the concatenated x_adv, or a tuple of
    concatenated tensors when the attack returns a tuple (cw_l2).
    """
    check_positive_int(batch_size, "batch_size")
    gens = point_generators(len(x), generator) if generator is not None else None
    outs = []
    for i in range(0, len(x), batch_size):
        extra = {"generator": gens[i:i + batch_size]} if gens is not None else {}
        outs.append(attack(model, x[i:i + batch_size], y[i:i + batch_size], **extra, **kwargs))
    if not outs:
        return x.clone()
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """(d sum(loss) / d x, logits). autograd.grad (not .backward) so no parameter .grad is touched."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = loss_fn(logits, y).sum()
        (grad,) = torch.autograd.grad(loss, x)
    return grad.detach(), logits.detach()
