"""Square Attack (Andriushchenko et al., 2020) via pyautoattack's ``SquareAttack``: score-based black box.

It only queries the model's logits (random square-shaped updates accepted when the margin drops),
so it is blind to gradient masking: if Square beats PGD, the gradients were lying. We run it
under ``torch.no_grad()``, which guarantees that no gradient of the model is ever used.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import check_eps, check_inputs, check_norm, check_positive_int, frozen

_SQUARE_NORMS = {"linf": "Linf", "l2": "L2"}


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, n_queries: int = 1000, seed: int = 0,
           norm: str = "Linf") -> torch.Tensor:
    """Untargeted Square Attack (margin loss, 1 restart, p_init = 0.8 as in AutoAttack).

    The p-schedule is rescaled to ``n_queries`` (resc_schedule=True) so small budgets still shrink
    the squares. Points it does not break come back unchanged (pyautoattack returns x there).
    pyautoattack reseeds the global RNG with ``seed``; we fork the RNG so the caller's state is kept.
    Its noise is drawn on the CPU and moved to the device, so CPU and CUDA use the same stream.
    """
    from pyautoattack.square import SquareAttack

    sq_norm = _SQUARE_NORMS[check_norm(norm, tuple(_SQUARE_NORMS))]
    eps = check_eps(eps, sq_norm.lower())
    n_queries = check_positive_int(n_queries, "n_queries")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    check_inputs(x, y)
    if len(x) == 0:
        return x.detach().clone()
    rng_devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()] \
        if x.device.type == "cuda" else []
    attack = SquareAttack(model, norm=sq_norm, n_queries=n_queries, eps=eps, p_init=0.8, n_restarts=1, seed=seed,
                          verbose=False, targeted=False, loss="margin", resc_schedule=True, device=x.device)
    with frozen(model), torch.random.fork_rng(devices=rng_devices), torch.no_grad():
        x_adv = attack.perturb(x.detach(), y)
    return x_adv.detach()
