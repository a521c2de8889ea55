"""AutoAttack (Croce & Hein, 2020) through the authors' package ``pyautoattack``, with its flags captured.

What pyautoattack 0.2.0 does that this wrapper has to handle (read from its source):
  * ``run_standard_evaluation(x, y, /, *, batch_size=...)`` returns a tuple ``(x_adv, y_adv)``;
  * its gradient-masking / misuse checks (``checks.py``) speak through ``logger.warning`` on the
    logger named 'auto-attack' (``warnings.warn`` only when no logger is given), progress through
    ``logger.debug`` when ``.verbose`` is True;
  * its attacks call ``torch.random.manual_seed(seed)``, i.e. they reseed the GLOBAL RNG: we fork
    the RNG so the caller's random state is untouched;
  * ``checks.check_dynamic`` counts calls in a module-level dict that is never reset, so one model
    that calls autograd in its forward would flag every later model as "dynamic": we reset it;
    it also calls ``sys.settrace(None)``, which would switch off a coverage tool or debugger: we
    restore the previous trace function;
  * it does not put the model in eval mode: we freeze it;
  * APGD draws its random start for a whole batch from the reseeded global RNG, so a point's start
    depends on its row in the batch: running AutoAttack on a subset (the evaluation cascade) would
    change the start of every point. We give APGD a start drawn from the point's own generator
    (seeded by the seed, the point's pixels and how many starts it has had), so each point's result
    does not depend on which other points are attacked with it (``PER_POINT_ATTACKS``).
"""
from __future__ import annotations

import collections
import logging
import sys
import warnings
from typing import Optional, Sequence

import torch
from torch import nn

from .common import (check_eps, check_inputs, check_norm, check_positive_int, fp32, frozen, point_generator,
                     point_key)

AA_ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
AA_VERSIONS = ("standard", "plus", "rand", "custom")
AA_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
_LOGGER_NAME = "auto-attack"
# AutoAttack's attacks whose result for a point does not depend on the other points of the batch, once APGD's random
# start is per point (below). FAB draws random starts per batch from its 2nd restart on, Square draws its squares per
# batch: with those, attacking a subset changes the results of the points in it.
PER_POINT_ATTACKS = frozenset({"apgd-ce", "apgd-dlr", "apgd-t"})


def is_per_point(version: str, attacks: Optional[Sequence[str]]) -> bool:
    """Whether AutoAttack with this version / attack list gives each point the same result whatever other points
    are attacked with it (the condition for running it on a subset, as the evaluation cascade does)."""
    return version == "custom" and attacks is not None and set(attacks) <= PER_POINT_ATTACKS


class PerPointStarts:
    """Replaces an APGD object's ``attack_single_run`` so that its random start (the same distribution as APGD's
    own: uniform in the L∞ ball's directions, Gaussian for L2, scaled to ε) comes from one generator per point,
    seeded by (seed, the point's pixels, how many starts that point has had), instead of the batch's stream."""

    def __init__(self, apgd, seed: int):
        self.apgd, self.seed, self.single_run = apgd, seed, apgd.attack_single_run
        self.starts: collections.Counter = collections.Counter()

    def __call__(self, x, y, x_init=None):
        if x_init is None and self.apgd.norm in ("Linf", "L2") and x.dim() > self.apgd.ndims:  # a batch, not one image
            x_init = self.start(x)
        return self.single_run(x, y, x_init=x_init)

    def start(self, x: torch.Tensor) -> torch.Tensor:
        noise = []
        for row in x:
            key = point_key(row)
            g = point_generator(key, self.seed, self.starts[key])
            self.starts[key] += 1
            shape = row.shape
            noise.append(2 * torch.rand(shape, generator=g) - 1 if self.apgd.norm == "Linf"
                         else torch.randn(shape, generator=g))
        t = torch.stack(noise).to(x.device)
        return x + self.apgd.eps * self.apgd.normalize(t)


class _FlagHandler(logging.Handler):
    """Collects WARNING-and-above records from pyautoattack's logger (its check messages)."""

    def __init__(self, sink: list[str]):
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


def _check_attacks(version: str, attacks: Optional[Sequence[str]]) -> Optional[list[str]]:
    if version not in AA_VERSIONS:
        raise ValueError(f"attack.autoattack.version must be one of {list(AA_VERSIONS)}, got {version!r}")
    if version != "custom":
        if attacks is not None:
            raise ValueError(f"attack.autoattack.attacks is only used with version='custom' "
                             f"(version={version!r} fixes its own attacks); set it to null")
        return None
    if attacks is None or isinstance(attacks, str) or len(attacks) == 0:
        raise ValueError(f"attack.autoattack.attacks must be a non-empty list drawn from {list(AA_ATTACKS)} "
                         f"when version='custom', got {attacks!r}")
    unknown = [a for a in attacks if a not in AA_ATTACKS]
    if unknown:
        raise ValueError(f"attack.autoattack.attacks: unknown attack(s) {unknown}; allowed: {list(AA_ATTACKS)}")
    if len(set(attacks)) != len(attacks):
        raise ValueError(f"attack.autoattack.attacks has duplicates: {list(attacks)}")
    return list(attacks)


@fp32
def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf",
               version: str = "standard", attacks: Optional[Sequence[str]] = None, batch_size: int = 500,
               seed: int = 0, verbose: bool = False, apgd_restarts: Optional[int] = None
               ) -> tuple[torch.Tensor, list[str]]:
    """Run AutoAttack; return (x_adv, flags).

    flags: pyautoattack's check messages (randomised / dynamic defence, probability outputs,
    zero gradients, Square beating the gradient attacks, ...), distinct, in emission order.
    version='custom' with attacks=['apgd-ce', 'apgd-dlr'] is the cheap subset for CPU runs.
    verbose=False keeps pyautoattack silent (its check messages are returned, not printed).
    x_adv is on x's device; points AutoAttack did not break are returned unchanged.
    apgd_restarts: for version='custom' only; pyautoattack's custom default is 5 restarts of APGD-CE /
    APGD-DLR, the standard version uses 1. None keeps pyautoattack's choice.
    """
    from pyautoattack import AutoAttack
    from pyautoattack import checks as aa_checks

    aa_norm = AA_NORMS[check_norm(norm, tuple(AA_NORMS))]
    eps = check_eps(eps, aa_norm.lower())
    attacks = _check_attacks(version, attacks)
    batch_size = check_positive_int(batch_size, "batch_size")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    check_inputs(x, y)
    if len(x) == 0:
        return x.detach().clone(), []

    flags: list[str] = []
    logger = logging.getLogger(_LOGGER_NAME)
    handler = _FlagHandler(flags)
    # verbose: pyautoattack's progress (logger.debug) and checks, printed to stderr.
    printer = logging.StreamHandler(sys.stderr) if verbose else None
    saved = (logger.level, logger.propagate, sys.gettrace())
    rng_devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()] \
        if x.device.type == "cuda" else []
    try:
        logger.addHandler(handler)
        if printer is not None:
            logger.addHandler(printer)
        # Explicit level: an inherited ERROR level (root logger) would drop the check warnings.
        logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
        # Not propagated: else Python's last-resort handler would print the warnings even when silent.
        logger.propagate = False
        for k in aa_checks.funcs:
            aa_checks.funcs[k] = 0
        with frozen(model), torch.random.fork_rng(devices=rng_devices), warnings.catch_warnings():
            # Checks called without a logger use warnings.warn: route pyautoattack's into the same list,
            # in order; anyone else's warnings (torch, the model) go to the usual display.
            warnings.filterwarnings("always", module=r"pyautoattack(\.|$)")
            shown = warnings.showwarning

            def showwarning(message, category, filename, lineno, file=None, line=None):
                if "pyautoattack" in str(filename):
                    flags.append(str(message))
                else:
                    shown(message, category, filename, lineno, file, line)

            warnings.showwarning = showwarning
            adversary = AutoAttack(model, norm=aa_norm, eps=eps, version=version, attacks=attacks,
                                   device=x.device, seed=seed)
            adversary.verbose = verbose
            for apgd in (adversary.apgd, adversary.apgd_targeted):
                apgd.attack_single_run = PerPointStarts(apgd, seed)
            if apgd_restarts is not None:
                if version != "custom":
                    raise ValueError("apgd_restarts is only used with version='custom'")
                adversary.apgd.n_restarts = check_positive_int(apgd_restarts, "apgd_restarts")
            x_adv, _y_adv = adversary.run_standard_evaluation(x.detach(), y, batch_size=batch_size)
    finally:
        logger.removeHandler(handler)
        if printer is not None:
            logger.removeHandler(printer)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        if sys.gettrace() is not saved[2]:
            sys.settrace(saved[2])
    return x_adv.detach(), list(dict.fromkeys(flags))
