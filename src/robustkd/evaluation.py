"""Run the attack suite on one model and record per-point outcomes.

Everything is kept per point (1 = still correctly classified), so the worst case over attacks is a
per-point AND, never an average of attack-level numbers. The schema of the saved JSON is documented
in docs/evaluation.md ("Metrics schema").
"""
from __future__ import annotations

import collections
import contextlib
import math
import time

import torch
from torch import nn
from tqdm import tqdm

from . import attacks, image_quality

# The suite's names live in the torch-free `suite` module, `predict` in `inference` (the predict stage's module).
from .inference import predict
from .suite import (AUTOATTACK, BLACK_BOX, CLASSIFIER_FGSM, CLASSIFIER_PGD_CE,  # noqa: F401
                    CLASSIFIER_PGD_MARGIN, CW_L2, FGSM_CE, PAPER_PROTOCOL, PGD_CE, PGD_L2, PGD_MARGIN, SQUARE,
                    TRANSFER, WHITE_BOX, eps_key, is_black_box)


def _generator(cfg: dict) -> torch.Generator:
    """A fresh generator per attack: every attack sees the same random starts whatever ran before it."""
    return torch.Generator().manual_seed(cfg["seed"])


def robust_mask(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[int]:
    return (predict(model, x_adv, batch_size) == y).int().tolist()


def sensitivity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Mean over points of ‖∂f_y(x)/∂x‖₁ for the deployed softmax (T = 1) and for the logits.

    Defensive distillation shrinks the first by orders of magnitude (Papernot et al.); the second shows
    whether the logits themselves became flat or merely larger.
    """
    totals = {"softmax": 0.0, "logit": 0.0}
    model.eval()
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].clone().requires_grad_(True)
        yb = y[i:i + batch_size]
        logits = model(xb)
        true_logit = logits.gather(1, yb[:, None]).sum()
        true_prob = torch.softmax(logits, 1).gather(1, yb[:, None]).sum()
        g_logit = torch.autograd.grad(true_logit, xb, retain_graph=True)[0]
        g_prob = torch.autograd.grad(true_prob, xb)[0]
        totals["logit"] += g_logit.abs().flatten(1).sum(1).sum().item()
        totals["softmax"] += g_prob.abs().flatten(1).sum(1).sum().item()
    return {k: v / len(x) for k, v in totals.items()}


def craft_transfer(surrogate: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> dict[str, torch.Tensor]:
    """Adversarial examples crafted once on the surrogate, per ε, to be replayed on every model."""
    out = {}
    for eps in cfg["eps"]:
        out[eps_key(eps)] = attacks.attack_in_batches(
            attacks.transfer, surrogate, x, y, cfg["batch_size"], generator=_generator(cfg), eps=eps,
            steps=cfg["transfer"]["steps"], step_size=cfg["pgd"]["step_size_ratio"] * eps, loss="margin")
    return out


def craft_on_classifier(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> dict:
    """The paper's protocol for purifiers, crafted once on the bare classifier and replayed on every model:
    {"linf": {attack: {eps key: x_adv}}, "cw_l2": x_adv of CW-L2 on the first `cw_l2.n_points` points}."""
    bs, pgd_cfg, cw = cfg["batch_size"], cfg["pgd"], cfg["cw_l2"]
    linf: dict[str, dict[str, torch.Tensor]] = {a: {} for a in PAPER_PROTOCOL}
    for eps in cfg["eps"]:
        key = eps_key(eps)
        linf[CLASSIFIER_FGSM][key] = attacks.attack_in_batches(attacks.fgsm, classifier, x, y, bs, eps=eps, loss="ce")
        for attack_name, loss in ((CLASSIFIER_PGD_CE, "ce"), (CLASSIFIER_PGD_MARGIN, "margin")):
            linf[attack_name][key] = attacks.attack_in_batches(
                attacks.transfer, classifier, x, y, bs, generator=_generator(cfg), eps=eps, steps=pgd_cfg["steps"],
                step_size=pgd_cfg["step_size_ratio"] * eps, loss=loss)
    n_cw = min(cw["n_points"], len(x))
    x_cw, _ = attacks.cw_l2(classifier, x[:n_cw], y[:n_cw], steps=cw["steps"],
                            binary_search_steps=cw["binary_search_steps"], c_init=cw["c_init"], lr=cw["lr"])
    return {"linf": linf, "cw_l2": x_cw}


@torch.no_grad()
def purify(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """What the deployed model's purifier makes of x (x itself for a bare classifier)."""
    purifier = getattr(model, "purifier", None)
    if purifier is None:
        return x
    return torch.cat([purifier(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def purified_image_quality(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, batch_size: int) -> dict:
    """PSNR / SSIM against the clean image of the purified clean image and of the purified (paper-protocol) example."""
    return {"clean": image_quality.summary(purify(model, x, batch_size), x),
            "adversarial": image_quality.summary(purify(model, x_adv, batch_size), x)}


# The expensive attacks, each with the white-box attacks whose survivors it is run on. Only white-box attacks gate:
# Square (a black box) then shows what no gradient attack could break.
CASCADE_BEFORE = {AUTOATTACK: (FGSM_CE, PGD_CE, PGD_MARGIN), SQUARE: (FGSM_CE, PGD_CE, PGD_MARGIN, AUTOATTACK)}


def cascades(attack_name: str, cfg: dict) -> bool:
    """Whether the cascade gives ``attack_name`` only the survivors (``cfg["cascade"]``): AutoAttack, any version,
    and Square. See :func:`cascade_is_exact` for when that gives the very worst case of a run without the cascade."""
    return bool(cfg.get("cascade", False)) and attack_name in CASCADE_BEFORE


def cascade_is_exact(attack_name: str, cfg: dict) -> bool:
    """Whether the cascaded ``attack_name`` gives each point the result of running it on every point: its result for a
    point must not depend on the other points. AutoAttack: the custom APGD subsets. The standard version's FAB-T and
    Square draw their randomness per batch; pyautoattack already runs them only on APGD's survivors, so their batch
    is set by earlier attacks in any case, and the cascade changes which survivors share it (a valid attack either
    way, but not bit-identical to `cascade: false`). Square (the suite's L∞ one): per-point stripes, exact."""
    if not cascades(attack_name, cfg):
        return True
    if attack_name == SQUARE:
        return attacks.square_is_per_point("linf")
    aa = cfg["autoattack"]
    return attacks.autoattack_is_per_point(aa["version"], aa["attacks"] if aa["version"] == "custom" else None)


def cascade_survivors(linf: dict[str, dict[str, list[int]]], key: str, clean_correct: torch.Tensor,
                      before: tuple[str, ...]) -> torch.Tensor:
    """Bool mask of the points still robust at ε ``key``: correct on the clean image and not broken by any
    attack of ``before`` that has run at that ε. Only white-box attacks gate the cascade, so every adaptive
    (white-box) number keeps its meaning for purified models, and Square still shows what a black box breaks
    that no gradient attack could."""
    alive = clean_correct.bool().cpu().clone()
    for attack_name in before:
        if key in linf.get(attack_name, {}):
            alive &= torch.tensor(linf[attack_name][key], dtype=torch.bool)
    return alive


class Stopwatch:
    """Seconds spent on each part of the suite, summed over ε (``evaluate(..., stopwatch=...)``; bench.py's
    breakdown). On CUDA it waits for the device at both ends, so each part is charged for its own kernels."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)

    @contextlib.contextmanager
    def part(self, name: str, device: torch.device):
        _sync(device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _sync(device)
            self.seconds[name] += time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@attacks.fp32
def evaluate(model: nn.Module, name: str, x_test: torch.Tensor, y_test: torch.Tensor, attack_idx: torch.Tensor,
             cfg: dict, transfer_adv: dict[str, torch.Tensor], on_classifier: dict | None = None,
             extra_transfer: dict[str, dict[str, torch.Tensor]] | None = None,
             stopwatch: Stopwatch | None = None, clean_correct: torch.Tensor | None = None,
             x_attacked: torch.Tensor | None = None) -> dict:
    """The whole suite on one model. ``x_test`` is float in [0,1]; ``attack_idx`` selects the attacked points.

    ``on_classifier`` (purification): examples from :func:`craft_on_classifier`, evaluated as extra attacks.
    ``extra_transfer`` (darht): {attack name: {eps key: x_adv}}, examples crafted on other models (the DARHT
    teachers, ``transfer_<model>``), replayed on this one at every ε. The one named ``transfer_<name>`` was crafted
    on this very model: a white-box attack here (see :func:`is_black_box`).
    ``stopwatch``: records the seconds of each part (clean accuracy, each attack, sensitivity).
    ``clean_correct``: bool per test point, the model's clean correctness as the predict stage recorded it
    (:func:`robustkd.inference.load_clean_correct`); None: computed here, one forward pass over ``x_test``.
    ``x_attacked``: the attacked images, ``x_test[attack_idx]``, when the caller holds only those (a streamed test
    set); ``x_test`` may then be None, and ``clean_correct`` must be given.
    """
    bs = cfg["batch_size"]
    model.eval()
    timed = ((lambda part: stopwatch.part(part, y_test.device)) if stopwatch is not None
             else (lambda part: contextlib.nullcontext()))
    if clean_correct is None:
        with timed("clean"):
            clean_correct = predict(model, x_test, bs) == y_test
    x, y = (x_test[attack_idx] if x_attacked is None else x_attacked), y_test[attack_idx]
    pgd_cfg = cfg["pgd"]
    cascade = {a: cascades(a, cfg) for a in CASCADE_BEFORE}  # recorded: which attacks got only the survivors
    cascade_exact = {a: cascade_is_exact(a, cfg) for a in CASCADE_BEFORE}  # ... and whether that changes no point
    linf: dict[str, dict[str, list[int]]] = {a: {} for a in (FGSM_CE, PGD_CE, PGD_MARGIN, TRANSFER)}
    aa_flags: dict[str, list[str]] = {}
    evaluated: dict[str, dict[str, int]] = {}  # expensive attacks: how many points each was run on
    precrafted = {TRANSFER: transfer_adv, **(on_classifier["linf"] if on_classifier else {}), **(extra_transfer or {})}
    # Cheap attacks first, on every point; AutoAttack after them, so that the cascade can give it only the points
    # every cheaper white-box attack failed on; Square last, on the points every white-box attack failed on.
    jobs = [(a, eps) for eps in cfg["eps"] for a in (FGSM_CE, PGD_CE, PGD_MARGIN, *precrafted)]
    jobs += [(AUTOATTACK, eps) for eps in cfg["autoattack"]["eps"]]
    if cfg["square"]["n_queries"] > 0:
        jobs.append((SQUARE, cfg["headline_eps"]))
    clean_attacked = clean_correct[attack_idx]
    for attack_name, eps in tqdm(jobs, desc=f"attack {name}", leave=False):
        with timed(attack_name):
            key = eps_key(eps)
            if attack_name in (AUTOATTACK, SQUARE):
                # The cascade: a point that a white-box attack already broke counts as broken; so does one
                # misclassified clean (every attack leaves it wrong anyway).
                todo = (cascade_survivors(linf, key, clean_attacked, CASCADE_BEFORE[attack_name])
                        if cascade[attack_name] else torch.ones(len(y), dtype=torch.bool))
                idx = todo.nonzero().squeeze(1).to(x.device)
                evaluated.setdefault(attack_name, {})[key] = len(idx)
                mask = torch.zeros(len(y), dtype=torch.int)
                if attack_name == AUTOATTACK:
                    aa = cfg["autoattack"]
                    custom = aa["version"] == "custom"
                    x_adv, flags = attacks.autoattack(
                        model, x[idx], y[idx], eps=eps, norm="Linf", version=aa["version"],
                        attacks=aa["attacks"] if custom else None, batch_size=bs, seed=cfg["seed"],
                        apgd_restarts=aa["apgd_restarts"] if custom else None)
                    aa_flags[key] = flags
                else:
                    x_adv = attacks.square(model, x[idx], y[idx], eps=eps, n_queries=cfg["square"]["n_queries"],
                                           seed=cfg["seed"])
                mask[idx.cpu()] = torch.tensor(robust_mask(model, x_adv, y[idx], bs), dtype=torch.int)
                linf.setdefault(attack_name, {})[key] = mask.tolist()
                continue
            if attack_name == FGSM_CE:
                x_adv = attacks.attack_in_batches(attacks.fgsm, model, x, y, bs, eps=eps, loss="ce")
            elif attack_name in (PGD_CE, PGD_MARGIN):
                x_adv = attacks.attack_in_batches(
                    attacks.pgd, model, x, y, bs, generator=_generator(cfg), eps=eps, steps=pgd_cfg["steps"],
                    step_size=pgd_cfg["step_size_ratio"] * eps, norm="linf",
                    loss="ce" if attack_name == PGD_CE else "margin", restarts=pgd_cfg["restarts"])
            else:
                x_adv = precrafted[attack_name][key]
            linf.setdefault(attack_name, {})[key] = robust_mask(model, x_adv, y, bs)

    l2: dict[str, dict[str, list[int]]] = {PGD_L2: {}}
    for eps in cfg["pgd_l2"]["eps"]:
        with timed(PGD_L2):
            x_adv = attacks.attack_in_batches(
                attacks.pgd, model, x, y, bs, generator=_generator(cfg), eps=eps, steps=cfg["pgd_l2"]["steps"],
                step_size=2.5 * eps / cfg["pgd_l2"]["steps"], norm="l2", loss="margin",
                restarts=cfg["pgd_l2"]["restarts"])
            l2[PGD_L2][eps_key(eps)] = robust_mask(model, x_adv, y, bs)

    cw = cfg["cw_l2"]
    n_cw = min(cw["n_points"], len(x))
    cw_norms: list[float | None] = []
    if n_cw:
        # The cascade: a point misclassified clean needs no perturbation (0, as cw_l2 itself reports), and the
        # CW summary leaves it out anyway. Each point's CW run is independent of the others (per-point c, loss
        # summed over points, Adam element-wise), so the points that remain get the same norms.
        todo = (clean_attacked[:n_cw].bool().cpu() if cfg.get("cascade", False)
                else torch.ones(n_cw, dtype=torch.bool))
        idx = todo.nonzero().squeeze(1).to(x.device)
        evaluated.setdefault(CW_L2, {})["min_l2"] = len(idx)
        norms = torch.zeros(n_cw, dtype=torch.float64)
        if len(idx):
            with timed(CW_L2):
                _, found = attacks.cw_l2(model, x[idx], y[idx], steps=cw["steps"], c_init=cw["c_init"], lr=cw["lr"],
                                         binary_search_steps=cw["binary_search_steps"])
            norms[idx.cpu()] = found.double().cpu()
        cw_norms = [None if not math.isfinite(v) else round(v, 6) for v in norms.tolist()]
    n_sens = min(cfg["sensitivity_points"], len(x))
    with timed("sensitivity"):
        sens = sensitivity(model, x[:n_sens], y[:n_sens], bs)
    paper_protocol = None
    if on_classifier:
        x_cw = on_classifier["cw_l2"]
        with timed("paper_protocol"):
            paper_protocol = {"cw_l2": robust_mask(model, x_cw, y[:len(x_cw)], bs),
                              "image_quality": purified_image_quality(
                                  model, x, on_classifier["linf"][CLASSIFIER_PGD_CE][eps_key(cfg["headline_eps"])],
                                  bs)}
    return {
        "model": name,
        "n_test": len(y_test),
        "clean_correct": int(clean_correct.sum().item()),
        "n_attacked": len(y),
        "attacked_clean_correct": clean_correct[attack_idx].int().tolist(),
        "linf": linf,
        "l2": l2,
        "autoattack_flags": aa_flags,
        "cascade": cascade,
        "cascade_exact": cascade_exact,
        "n_evaluated": evaluated,
        "cw_l2": {"n_points": n_cw, "l2": cw_norms},
        "sensitivity": {"n_points": n_sens, **sens},
        "paper_protocol": paper_protocol,
    }
