"""FGSM (Goodfellow et al., 2015): one signed-gradient step of size ε, L∞."""
from __future__ import annotations

import torch
from torch import nn

from .common import check_eps, check_inputs, check_loss, fp32, frozen, input_grad


@fp32
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss: str = "ce") -> torch.Tensor:
    """x + ε·sign(∇ₓ loss), clamped to [0, 1]. Default loss: CE of the deployed softmax (seed papers' protocol)."""
    eps = check_eps(eps, "linf")
    loss_fn = check_loss(loss)
    check_inputs(x, y)
    if len(x) == 0:
        return x.detach().clone()
    with frozen(model):
        grad, _ = input_grad(model, x, y, loss_fn)
        # A saturated softmax gives grad == 0, sign(0) == 0: FGSM then returns x itself (masking).
        return (x.detach() + eps * grad.sign()).clamp(0.0, 1.0).detach()
