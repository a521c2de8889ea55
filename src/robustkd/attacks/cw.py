"""Carlini-Wagner L2 (Carlini & Wagner, 2017), untargeted: minimum-norm adversarial examples."""
from __future__ import annotations

import torch
from torch import nn

from .common import check_inputs, check_positive, check_positive_int, fp32, frozen

_C_UNBOUNDED = 1e10   # "no successful c yet" marker for the upper end of the binary search


class TensorAdam:
    """``torch.optim.Adam`` (default betas and eps, no weight decay) on one tensor, written out: building a
    ``torch.optim`` optimizer imports ``torch._dynamo`` (1-2 s on 2 CPU cores), which the attack stage would pay for
    CW alone. The same operations in the same order as torch's single-tensor Adam (tested: identical iterates)."""

    def __init__(self, param: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param, self.lr, self.betas, self.eps, self.steps = param, lr, betas, eps, 0
        self.exp_avg = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.exp_avg_sq = torch.zeros_like(param, memory_format=torch.preserve_format)

    @torch.no_grad()
    def step(self) -> None:
        grad, (beta1, beta2) = self.param.grad, self.betas
        self.steps += 1
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = float(self.steps)
        denom = (self.exp_avg_sq.sqrt() / (1 - beta2 ** step) ** 0.5).add_(self.eps)
        self.param.addcdiv_(self.exp_avg, denom, value=-(self.lr / (1 - beta1 ** step)))


@fp32
def cw_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 100, binary_search_steps: int = 5,
          c_init: float = 0.1, lr: float = 0.01, confidence: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """minimise ||x' - x||² + c·max(z_y - max_{j≠y} z_j + κ, 0) over x' = (tanh(w) + 1) / 2 with Adam.

    tanh space keeps x' in [0, 1] without clipping (clipping would break Adam's gradient). c is
    binary-searched per point: halve towards the last failure after a success, ×10 while no
    success has been seen. Every iterate that is adversarial (argmax ≠ y and margin ≥ κ) is a
    candidate; the smallest one is returned.

    Returns (x_adv, l2): l2 is the L2 distance of x_adv to x, ``inf`` where no adversarial example
    was found (x_adv = x there), 0 for points the model already misclassifies.
    """
    steps = check_positive_int(steps, "steps")
    binary_search_steps = check_positive_int(binary_search_steps, "binary_search_steps")
    c_init = check_positive(c_init, "c_init")
    lr = check_positive(lr, "lr")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or confidence < 0:
        raise ValueError(f"confidence must be a number >= 0, got {confidence!r}")
    check_inputs(x, y)
    x = x.detach()
    n = len(x)
    best_l2 = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
    best_adv = x.clone()
    if n == 0:
        return best_adv, best_l2
    with frozen(model):
        with torch.no_grad():
            best_l2 = torch.where(model(x).argmax(1) != y, torch.zeros_like(best_l2), best_l2)
        lower = torch.zeros(n, device=x.device, dtype=x.dtype)
        upper = torch.full((n,), _C_UNBOUNDED, device=x.device, dtype=x.dtype)
        c = torch.full((n,), c_init, device=x.device, dtype=x.dtype)
        # (1 - 1e-6) keeps atanh finite at pixels that are exactly 0 or 1.
        w0 = torch.atanh((2 * x - 1) * (1 - 1e-6))
        onehot = torch.nn.functional.one_hot(y, num_classes=model(x[:1]).shape[1]).bool()
        for _ in range(binary_search_steps):
            w = w0.clone().requires_grad_(True)
            opt = TensorAdam(w, lr=lr)   # fresh optimiser state for each c
            succeeded = torch.zeros(n, dtype=torch.bool, device=x.device)
            for _ in range(steps):
                with torch.enable_grad():
                    x_adv = (torch.tanh(w) + 1) / 2
                    logits = model(x_adv)
                    l2sq = (x_adv - x).flatten(1).pow(2).sum(1)
                    true = logits.masked_select(onehot)
                    other = logits.masked_fill(onehot, float("-inf")).amax(1)
                    f = torch.clamp(true - other + confidence, min=0)
                    loss = (l2sq + c * f).sum()
                w.grad = None
                loss.backward()   # only w requires grad: parameters are frozen
                # Bookkeeping on the iterate that produced these logits (before the step).
                with torch.no_grad():
                    ok = (logits.argmax(1) != y) & (other - true >= confidence)
                    l2 = l2sq.detach().sqrt()
                    better = ok & (l2 < best_l2)
                    best_l2 = torch.where(better, l2, best_l2)
                    best_adv = torch.where(better.view(-1, 1, 1, 1), x_adv.detach(), best_adv)
                    succeeded |= ok
                opt.step()
            with torch.no_grad():
                upper = torch.where(succeeded, torch.minimum(upper, c), upper)
                lower = torch.where(succeeded, lower, torch.maximum(lower, c))
                c = torch.where(upper < _C_UNBOUNDED / 10, (lower + upper) / 2, c * 10)
    return best_adv.detach(), best_l2
