"""PGD (Madry et al., 2018) in the L∞ or L2 ball, with random restarts."""
from __future__ import annotations

import torch
from torch import nn

from .common import (GeneratorArg, check_eps, check_inputs, check_loss, check_norm, check_positive,
                     check_positive_int, fp32, frozen, input_grad, normalize_l2, project, random_delta)


def _select(generator: GeneratorArg, idx: torch.Tensor, n: int) -> GeneratorArg:
    """Per-point generators follow their points when only the unbroken points are restarted."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if not isinstance(generator, (list, tuple)):
        raise ValueError(f"generator must be a CPU torch.Generator, a list of them (one per point) or None, "
                         f"got {type(generator).__name__}")
    gens = list(generator)
    if len(gens) != n:
        raise ValueError(f"generator: got {len(gens)} per-point generators for {n} points")
    return [gens[i] for i in idx.tolist()]


def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
         norm: str, loss_fn, restarts: int, random_start: bool, generator: GeneratorArg,
         keep_first_adversarial: bool) -> torch.Tensor:
    """Core loop, model already frozen and arguments checked.

    keep_first_adversarial=True (evaluation): a point is frozen at the first iterate that the model
    misclassifies -- any misclassified point in the ball is a valid counter-example, and the cheap
    check reuses the logits of the gradient pass. Frozen points leave the batch, so later steps cost
    only the points still standing (the result of every other point is unchanged: each point's
    iterates depend only on itself). False (transfer): return the last iterate, which has the
    highest surrogate loss and transfers better than a barely-misclassified one.
    Restarts only re-attack points that are still correctly classified.
    """
    n = len(x)
    x = x.detach()
    x_best = x.clone()
    todo = torch.arange(n, device=x.device)   # points without an adversarial yet
    if generator is None:
        # One generator for all restarts (a fresh seed-0 generator per restart would repeat the start).
        generator = torch.Generator().manual_seed(0)
    for _ in range(restarts):
        xs, ys = x[todo], y[todo]
        g = _select(generator, todo.cpu(), n)
        x_adv = xs.clone()
        if random_start:
            x_adv = project(xs + random_delta(xs, eps, norm, g), xs, eps, norm)
        found = torch.zeros(len(xs), dtype=torch.bool, device=x.device)
        x_out = xs.clone()                                  # per point: first adversarial, else final iterate
        active = torch.arange(len(xs), device=x.device)     # rows of xs still being attacked
        x0, y0 = xs, ys                                     # the active points' clean images and labels
        for _ in range(steps):
            grad, logits = input_grad(model, x_adv, y0, loss_fn)
            if keep_first_adversarial:
                new = logits.argmax(1) != y0
                if bool(new.any()):
                    x_out[active[new]] = x_adv[new]
                    found[active[new]] = True
                    keep = ~new
                    active, x_adv, x0, y0, grad = active[keep], x_adv[keep], x0[keep], y0[keep], grad[keep]
                    if len(active) == 0:
                        break
            # L∞: steepest ascent is the sign; L2: the normalised gradient. A zero gradient
            # (saturated softmax) gives a zero step, which is the masking effect we measure.
            step = grad.sign() if norm == "linf" else normalize_l2(grad)
            x_adv = project(x_adv + step_size * step, x0, eps, norm).detach()
        if len(active):
            with torch.no_grad():
                found[active] |= model(x_adv).argmax(1) != y0
            x_out[active] = x_adv
        x_best[todo] = x_out
        todo = todo[~found]
        if len(todo) == 0:
            break
    return x_best.detach()


@fp32
def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
        norm: str = "linf", loss: str = "ce", restarts: int = 1, random_start: bool = True,
        generator: GeneratorArg = None) -> torch.Tensor:
    """Untargeted PGD maximising ``loss`` ('ce': deployed softmax; 'margin': CW margin on logits).

    norm='linf': signed-gradient steps, clamp to the L∞ ball; norm='l2': normalised-gradient steps,
    projection onto the L2 ball. Random start uniform in the ball (one draw per restart).
    Per point, across steps and restarts, the first misclassified iterate is kept; points never
    misclassified get the last restart's final iterate.

    generator: a CPU torch.Generator, or one per point (see ``common.attack_in_batches`` for
    batch-size-invariant results); None means seed 0. The global RNG is never touched.
    """
    norm = check_norm(norm)
    eps = check_eps(eps, norm)
    steps = check_positive_int(steps, "steps")
    step_size = check_positive(step_size, "step_size")
    restarts = check_positive_int(restarts, "restarts")
    loss_fn = check_loss(loss)
    check_inputs(x, y)
    if len(x) == 0:
        return x.detach().clone()
    with frozen(model):
        return _pgd(model, x, y, eps, steps, step_size, norm, loss_fn, restarts, random_start, generator,
                    keep_first_adversarial=True)
