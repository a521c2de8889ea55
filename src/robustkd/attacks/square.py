"""Square Attack (Andriushchenko et al., 2020) via pyautoattack's ``SquareAttack``: score-based black box.

It only queries the model's logits (random square-shaped updates accepted when the margin drops),
so it is blind to gradient masking: if Square beats PGD, the gradients were lying. We run it
under ``torch.no_grad()``, which guarantees that no gradient of the model is ever used.

Per-point randomness (L∞): pyautoattack's L∞ Square draws one square position and one sign per channel per
iteration, shared by every point of the batch, from the global RNG, which it reseeds; but it first draws each
point's initial perturbation (vertical stripes of ±ε) from that same stream, by row. So a point's stripes depend on
its row, and the shared draws on how many points came before: attacking a subset (the evaluation cascade) would
change every point's result. We draw each point's stripes from its own generator (seeded by the seed and the
point's pixels, as AutoAttack's per-point APGD starts), so the global stream holds only the shared draws, the same
for any batch: a point's result then depends on that point alone. The distributions are Square's own.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import (check_eps, check_inputs, check_norm, check_positive_int, fp32, frozen, point_generator,
                     point_key)

_SQUARE_NORMS = {"linf": "Linf", "l2": "L2"}
_SQUARE_SALT = 0x5175617265  # "Square": its per-point streams differ from APGD's for the same seed and point


def is_per_point(norm: str) -> bool:
    """Whether a point's Square result does not depend on the other points attacked with it: L∞ (see above)."""
    return _SQUARE_NORMS[check_norm(norm, tuple(_SQUARE_NORMS))] == "Linf"


class PerPointStripes:
    """Replaces an L∞ ``SquareAttack``'s ``attack_single_run`` so that its first ``random_choice`` call, the initial
    stripes of shape (n, c, 1, w), draws each row from the point's own generator; later calls (the shared square
    signs) go to pyautoattack's own ``random_choice``."""

    def __init__(self, attack, seed: int):
        self.attack, self.seed = attack, seed
        self.single_run, self.shared_choice = attack.attack_single_run, attack.random_choice
        self.pending: torch.Tensor | None = None

    def __call__(self, x, y):
        self.pending = x
        try:
            return self.single_run(x, y)
        finally:
            self.pending = None

    def random_choice(self, shape):
        x, self.pending = self.pending, None
        if x is None:
            return self.shared_choice(shape)
        if list(shape) != [len(x), x.shape[1], 1, x.shape[3]]:  # pyautoattack changed: fail loudly, never silently
            raise RuntimeError(f"pyautoattack's Square drew its initial stripes with shape {list(shape)}; expected "
                               f"{[len(x), x.shape[1], 1, x.shape[3]]}: the per-point wrapper needs updating")
        rows = []
        for row in x:
            g = point_generator(point_key(row), self.seed, _SQUARE_SALT)
            rows.append(torch.sign(2 * torch.rand(list(shape[1:]), generator=g) - 1))  # Square's own distribution
        return torch.stack(rows).to(x.device)


@fp32
def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, n_queries: int = 1000, seed: int = 0,
           norm: str = "Linf") -> torch.Tensor:
    """Untargeted Square Attack (margin loss, 1 restart, p_init = 0.8 as in AutoAttack).

    The p-schedule is rescaled to ``n_queries`` (resc_schedule=True) so small budgets still shrink
    the squares. Points it does not break come back unchanged (pyautoattack returns x there).
    pyautoattack reseeds the global RNG with ``seed``; we fork the RNG so the caller's state is kept.
    Its noise is drawn on the CPU and moved to the device, so CPU and CUDA use the same stream.
    L∞: each point's result does not depend on the other points of ``x`` (module docstring).
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
    if sq_norm == "Linf":
        stripes = PerPointStripes(attack, seed)
        attack.attack_single_run, attack.random_choice = stripes, stripes.random_choice
    with frozen(model), torch.random.fork_rng(devices=rng_devices), torch.no_grad():
        x_adv = attack.perturb(x.detach(), y)
    return x_adv.detach()
