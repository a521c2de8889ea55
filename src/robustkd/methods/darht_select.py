"""Method ``darht``: choosing K teachers out of the pool by adversarial transferability (stage ``darht_select``).

DARHT's premise is teachers that exhibit *low adversarial transferability*. With ``darht.select.k`` set, every
``use: true`` entry of ``darht.pool`` is a candidate (each trained by its ``darht_teacher@<name>`` stage); this
stage measures their pairwise transferability on the **validation** split (never the test split, which only the
attack stage reads) and keeps the K with the lowest mean pairwise transferability; the student distils from those.

- Measurement (:func:`measure`): on ``darht.select.n_points`` validation points (a subset seeded by
  ``darht.select.seed``; null = all), PGD-L∞ on the margin loss, last iterate (``attacks.transfer``, as the attack
  stage's transfer attacks), ``darht.select.steps`` steps of ``step_size_ratio · ε`` at ε = ``darht.select.eps``
  (null: ``attack.headline_eps``), random starts seeded per point. ``T[i][j]`` = among the points that **both**
  teacher i and teacher j classify correctly when clean, the fraction that the examples crafted on i make j
  misclassify. (The diagonal is each teacher's white-box success rate; it is recorded, never scored.)
- Choice (:func:`choose`): every K-subset of the candidates, exhaustively; a subset's score is the mean over its
  unordered pairs {i, j} of (T[i][j] + T[j][i]) / 2, computed exactly (fractions); the lowest score wins, and among
  equal scores the subset that comes first in pool order (lexicographic on the candidates' pool positions). A pair
  with no point both classify correctly counts as 1 (no evidence that the two differ). K = 1 has no pair: every
  subset scores null and the first candidate is chosen.
- ``darht.select.k: null`` (or another method): no selection. The stage then writes a marker
  (results/darht_select.json, ``"selected": false``) without importing torch, and the student distils from every
  ``use: true`` entry, as before.

The module's top level imports no torch (the marker path stays a fraction of a second).
"""
from __future__ import annotations

import itertools
import json
from fractions import Fraction
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ParamsError
from ..io import atomic_write_json
from .darht_pool import teacher_checkpoints, used_teachers

SELECTION_PATH = Path("results/darht_select.json")   # git-tracked: candidates, matrix, chosen set, its score
PLOT_DATA_PATH = Path("plots/darht_select.json")     # DVC plot data: one cell per (source, target)
SPLIT = "val"
RULE = ("lowest mean over the chosen pairs {i, j} of (T[i][j] + T[j][i]) / 2; T[i][j] = success rate on j of PGD "
        "crafted on i, among the validation points both classify correctly; ties: first subset in pool order")


def selection_active(params: dict) -> bool:
    """True when this run chooses its DARHT teachers (method darht and `darht.select.k` set)."""
    return params["method"] == "darht" and params["darht"]["select"]["k"] is not None


# --- the choice (pure Python) -------------------------------------------------------------------------------------

def _exact(value) -> Fraction:
    """A matrix entry as an exact fraction; None (no point both teachers get right) counts as 1."""
    return Fraction(1) if value is None else Fraction(value)


def subset_score(subset: Sequence[str], matrix: Mapping[str, Mapping[str, object]]) -> Fraction | None:
    """The mean over the subset's unordered pairs of the symmetric transferability (None for a single teacher)."""
    pairs = list(itertools.combinations(subset, 2))
    if not pairs:
        return None
    total = sum((_exact(matrix[a][b]) + _exact(matrix[b][a])) / 2 for a, b in pairs)
    return total / len(pairs)


def choose(candidates: Sequence[str], matrix: Mapping[str, Mapping[str, object]], k: int) -> tuple[list[str], Fraction | None]:
    """(the chosen K candidates in pool order, their score): the K-subset with the lowest :func:`subset_score`,
    exhaustively; among equal scores, the first in ``itertools.combinations`` order (pool order)."""
    if not 1 <= k <= len(candidates):
        raise ValueError(f"choose: k = {k} for {len(candidates)} candidate(s)")
    best, best_score = None, None
    for subset in itertools.combinations(candidates, k):
        score = subset_score(subset, matrix)
        if best is None or (score is not None and score < best_score):  # strict: the first of equals stays
            best, best_score = list(subset), score
    return best, best_score


# --- the measurement (torch, imported here only) ------------------------------------------------------------------

def measure(models: Mapping[str, object], x, y, eps: float, steps: int, step_size: float, batch_size: int,
            seed: int) -> dict:
    """The pairwise transferability of ``models`` (name -> classifier) on the points ``x``, ``y``:
    ``hits[i][j]`` points fooled on j by the examples crafted on i, among ``n_both[i][j]`` points both classify
    correctly when clean; ``clean_correct[i]`` the points i gets right."""
    import torch

    from .. import attacks
    from ..inference import predict

    names = list(models)
    for model in models.values():
        model.eval()
    with torch.no_grad():
        correct = {n: predict(models[n], x, batch_size) == y for n in names}
    hits: dict[str, dict[str, int]] = {}
    n_both: dict[str, dict[str, int]] = {}
    for source in names:
        with attacks.frozen(models[source]):
            x_adv = attacks.attack_in_batches(attacks.transfer, models[source], x, y, batch_size,
                                              generator=torch.Generator().manual_seed(seed), eps=eps, steps=steps,
                                              step_size=step_size, loss="margin")
        hits[source], n_both[source] = {}, {}
        for target in names:
            with torch.no_grad():
                fooled = predict(models[target], x_adv, batch_size) != y
            both = correct[source] & correct[target]
            hits[source][target] = int((both & fooled).sum())
            n_both[source][target] = int(both.sum())
    return {"hits": hits, "n_both": n_both, "clean_correct": {n: int(correct[n].sum()) for n in names}}


def rates(measured: dict) -> dict[str, dict[str, Fraction | None]]:
    """T[i][j] as exact fractions (None where no point is correct for both)."""
    return {s: {t: (Fraction(h, measured["n_both"][s][t]) if measured["n_both"][s][t] else None)
                for t, h in row.items()} for s, row in measured["hits"].items()}


def _round(value: Fraction | None) -> float | None:
    return None if value is None else round(float(value), 4)


def selection_record(params: dict, candidates: list[str], measured: dict, n_points: int, eps: float) -> dict:
    """results/darht_select.json for a run that selects."""
    cfg = params["darht"]["select"]
    matrix = rates(measured)
    chosen, score = choose(candidates, matrix, cfg["k"])
    return {
        "selected": True, "method": params["method"], "k": cfg["k"], "split": SPLIT, "n_points": n_points,
        "attack": {"name": "pgd_linf_margin_last_iterate", "eps": eps, "steps": cfg["steps"],
                   "step_size": cfg["step_size_ratio"] * eps, "seed": cfg["seed"]},
        "rule": RULE,
        "candidates": candidates, "chosen": chosen, "score": _round(score),
        "success_rate": {s: {t: _round(v) for t, v in row.items()} for s, row in matrix.items()},
        "n_fooled": measured["hits"], "n_both_correct": measured["n_both"],   # T[i][j] = n_fooled / n_both_correct
        "n_clean_correct": measured["clean_correct"],
        "clean_acc": {n: round(c / n_points, 4) for n, c in measured["clean_correct"].items()},
    }


def plot_cells(record: dict) -> list[dict]:
    """plots/darht_select.json: one cell per (source, target), with whether each end was chosen."""
    if not record.get("selected"):
        return []
    chosen = set(record["chosen"])
    return [{"source": s, "target": t, "success_rate": v, "source_chosen": s in chosen, "target_chosen": t in chosen}
            for s, row in record["success_rate"].items() for t, v in row.items()]


def _write(record: dict) -> None:
    atomic_write_json(SELECTION_PATH, record)
    atomic_write_json(PLOT_DATA_PATH, plot_cells(record))


def run_stage(params: dict) -> None:
    """Stage ``darht_select``: the marker, or the measurement and the choice."""
    SELECTION_PATH.unlink(missing_ok=True)
    PLOT_DATA_PATH.unlink(missing_ok=True)
    if not selection_active(params):
        reason = (f"method is {params['method']!r}, not darht" if params["method"] != "darht"
                  else "`darht.select.k` is null: the student distils from every `use: true` entry of darht.pool")
        _write({"selected": False, "reason": reason})
        print(f"[darht_select] no selection: {reason}")
        return

    import torch

    from .. import data
    from ..models import load_checkpoint
    from ..paths import PREPARED_DIR
    from ..training import pick_device, to_float

    cfg = params["darht"]["select"]
    candidates = used_teachers(params)
    checkpoints = dict(teacher_checkpoints(params, candidates))   # a clear error if a candidate is not trained yet
    x_u8, y = data.load_split(PREPARED_DIR, SPLIT)                # the validation split; never the test split
    n_points = len(y) if cfg["n_points"] is None else cfg["n_points"]
    if n_points > len(y):
        raise ParamsError(f"`darht.select.n_points` = {n_points}: the prepared validation split has only {len(y)} "
                          f"images (`data.val_size`); lower it or set it to null (the whole validation split)")
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg["seed"]))[:n_points].sort().values
    device = pick_device()
    x, y = to_float(x_u8[idx]).to(device), y[idx].to(device)
    eps = params["attack"]["headline_eps"] if cfg["eps"] is None else cfg["eps"]
    models = {name: load_checkpoint(path, device)[0] for name, path in checkpoints.items()}
    print(f"[darht_select] {len(candidates)} candidates, K = {cfg['k']}: PGD-{cfg['steps']} at ε={eps:g} on "
          f"{n_points} validation points")
    measured = measure(models, x, y, eps, cfg["steps"], cfg["step_size_ratio"] * eps, cfg["batch_size"], cfg["seed"])
    record = selection_record(params, candidates, measured, n_points, eps)
    _write(record)
    print(f"[darht_select] chosen: {', '.join(record['chosen'])} (mean pairwise transferability {record['score']})")


# --- the student's side -------------------------------------------------------------------------------------------

def student_teachers(params: dict) -> list[str]:
    """The DARHT teachers the student distils from, in pool order: the chosen ones when selecting (from
    results/darht_select.json, checked against the params), else every `use: true` entry."""
    if not selection_active(params):
        return used_teachers(params)
    rerun = "run `dvc repro darht_select` (or `python src/darht_select.py`)"
    if not SELECTION_PATH.is_file():
        raise ParamsError(f"{SELECTION_PATH}: not found; `darht.select.k` is set, so the teachers are chosen by the "
                          f"stage darht_select: {rerun}")
    record = json.loads(SELECTION_PATH.read_text())
    k, candidates = params["darht"]["select"]["k"], used_teachers(params)
    if not record.get("selected") or record.get("k") != k or record.get("candidates") != candidates:
        raise ParamsError(f"{SELECTION_PATH}: written for other settings (selected {record.get('selected')}, k "
                          f"{record.get('k')}, candidates {record.get('candidates')}; params: k {k}, candidates "
                          f"{candidates}): {rerun}")
    return list(record["chosen"])


def student_record(params: dict) -> dict:
    """What the student's checkpoint records of the selection (nothing without one); the metrics stage reports it."""
    if not selection_active(params):
        return {}
    record = json.loads(SELECTION_PATH.read_text())
    keep = ("k", "split", "n_points", "attack", "candidates", "chosen", "score", "success_rate")
    return {"darht_selection": {key: record[key] for key in keep}}

