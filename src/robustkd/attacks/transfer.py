"""Transfer attack: PGD-L∞ crafted on a surrogate ("source") model, replayed on another model.

A black-box check independent of the target's gradients: if transferred examples fool a model
that white-box PGD cannot, the target's gradients are masked. Thin wrapper over ``pgd``; the only
difference is that each point keeps its LAST iterate (highest surrogate loss) instead of the first
one that fools the surrogate: barely-adversarial points transfer poorly.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import (GeneratorArg, check_eps, check_inputs, check_loss, check_positive, check_positive_int,
                     fp32, frozen)
from .pgd import _pgd


@fp32
def transfer(source_model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
             loss: str = "margin", generator: GeneratorArg = None) -> torch.Tensor:
    """PGD-L∞ (1 restart, random start) on ``source_model``; evaluate the result on the target model.

    Default loss 'margin': on the logits, so a saturated surrogate softmax cannot stall it.
    """
    eps = check_eps(eps, "linf")
    steps = check_positive_int(steps, "steps")
    step_size = check_positive(step_size, "step_size")
    loss_fn = check_loss(loss)
    check_inputs(x, y)
    if len(x) == 0:
        return x.detach().clone()
    with frozen(source_model):
        return _pgd(source_model, x, y, eps, steps, step_size, "linf", loss_fn, restarts=1, random_start=True,
                    generator=generator, keep_first_adversarial=False)
