"""Per-point outcomes kept in git: results/outcomes.json, written by the metrics stage, read by tools/compare.py and
the studies. Torch-free.

A paired comparison of two runs (the same points, two models) needs each point's outcome, not only the accuracies.
The file holds them as bitsets, one bit a point: ``numpy.packbits(values, bitorder="little")``, then base64 (the
standard alphabet). Per model: ``clean_correct`` over the whole test set (index order), and over the attacked
points (ascending index order) the worst case per ε and each L∞ attack's robustness per ε. The attacked points
themselves are a bitset over the test set, with the sha256 of their sorted indices (:func:`points_sha256`) so that
two files can be checked for the same points without decoding. The layout (docs/evaluation.md, "Per-point
outcomes"):

    {"schema": "robustkd-outcomes/1", "dataset": ..., "n_test": ..., "test_sha256": ...,
     "eps": [...], "headline_eps": ...,
     "attack_points": {"n": ..., "sha256": ..., "bits": ...},
     "models": {name: {"clean_correct": bits, "worst_case": {eps_key: bits}, "robust": {attack: {eps_key: bits}},
                       "autoattack_version": ...}}}
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from .bitsets import BitsetError, decode_bits, encode_bits
from .diagnostics import worst_case_points  # the metrics' own definition: the bits reproduce worst_case
from .errors import ProjectError
from .suite import eps_key

SCHEMA = "robustkd-outcomes/1"
OUTCOMES_PATH = "results/outcomes.json"

__all__ = ["SCHEMA", "OUTCOMES_PATH", "OutcomesError", "ModelOutcomes", "Outcomes", "encode_bits", "decode_bits",
           "points_sha256", "build_outcomes", "read_outcomes", "eps_key"]


class OutcomesError(ProjectError):
    """An outcomes file is missing, malformed or of another schema, or the results it is built from disagree."""


def points_sha256(indices) -> str:
    """sha256 of the sorted point indices written as decimal ASCII, comma-separated ("3,17,42")."""
    text = ",".join(str(int(i)) for i in sorted(int(i) for i in indices))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass
class ModelOutcomes:
    """One model's outcomes: ``clean_correct`` over the test set; ``worst_case[eps_key]`` and
    ``robust[attack][eps_key]`` over the attacked points in ascending index order."""
    clean_correct: np.ndarray
    worst_case: dict[str, np.ndarray]
    robust: dict[str, dict[str, np.ndarray]]
    autoattack_version: str | None = None

    def clean_on_attacked(self, attack_points: np.ndarray) -> np.ndarray:
        """Clean correctness on the attacked points (ascending index order)."""
        return self.clean_correct[attack_points]


@dataclass
class Outcomes:
    dataset: str | None
    n_test: int
    test_sha256: str | None
    eps: list[float]
    headline_eps: float
    attack_points: np.ndarray          # sorted int indices into the test set
    attack_points_sha256: str
    models: dict[str, ModelOutcomes] = field(default_factory=dict)
    schema: str = SCHEMA

    @property
    def headline_key(self) -> str:
        return eps_key(self.headline_eps)


def _model_entry(result: dict, clean_correct: np.ndarray, order: np.ndarray) -> dict:
    linf = result["linf"]
    worst = {}
    for e in sorted(result["eps"]):
        key = eps_key(e)
        points = worst_case_points(linf, key)
        if points:
            worst[key] = encode_bits(np.asarray(points, dtype=bool)[order])
    robust = {attack: {key: encode_bits(np.asarray(values, dtype=bool)[order]) for key, values in per_eps.items()}
              for attack, per_eps in linf.items()}
    return {"clean_correct": encode_bits(clean_correct), "worst_case": worst, "robust": robust,
            "autoattack_version": result.get("autoattack_version")}


def build_outcomes(results: list[dict], clean_correct: dict[str, np.ndarray], *, dataset: str | None,
                   test_sha256: str | None) -> dict:
    """The outcomes file's content from the attack stage's per-model results (results/attack/<model>.json) and each
    model's clean correctness over the whole test set (bool arrays, test-set order).

    Every result must have attacked the same points over the same test set; each model's clean correctness must
    agree with the attack stage's count and with its ``attacked_clean_correct``.
    """
    if not results:
        raise OutcomesError("no attack results to record")
    first = results[0]
    n_test = int(first["n_test"])
    points = np.asarray(first["attack_points"], dtype=np.int64)
    order = np.argsort(points, kind="stable")
    sorted_points = points[order]
    if len(np.unique(points)) != len(points) or (len(points) and (points.min() < 0 or points.max() >= n_test)):
        raise OutcomesError(f"results/attack/{first['model']}.json: attack_points are not distinct indices into "
                            f"the {n_test} test points")
    mask = np.zeros(n_test, dtype=bool)
    mask[sorted_points] = True
    models = {}
    for r in results:
        name = r["model"]
        where = f"results/attack/{name}.json"
        if r["n_test"] != n_test or list(r["attack_points"]) != list(first["attack_points"]):
            raise OutcomesError(f"{where}: attacked other points than results/attack/{first['model']}.json; "
                                f"rerun the attack stage (`dvc repro attack`)")
        if r["eps"] != first["eps"] or r["headline_eps"] != first["headline_eps"]:
            raise OutcomesError(f"{where}: other ε than results/attack/{first['model']}.json; rerun `dvc repro attack`")
        correct = np.asarray(clean_correct[name], dtype=bool)
        if correct.shape != (n_test,) or int(correct.sum()) != int(r["clean_correct"]) or \
                not np.array_equal(correct[points], np.asarray(r["attacked_clean_correct"], dtype=bool)):
            raise OutcomesError(f"results/predict/{name}.json does not match {where} (other checkpoint or test "
                                f"split); rerun `dvc repro predict attack`")
        models[name] = _model_entry(r, correct, order)
    return {"schema": SCHEMA, "dataset": dataset, "n_test": n_test, "test_sha256": test_sha256,
            "eps": sorted(first["eps"]), "headline_eps": first["headline_eps"],
            "attack_points": {"n": int(len(points)), "sha256": points_sha256(sorted_points),
                              "bits": encode_bits(mask)},
            "models": models}


def read_outcomes(text_or_dict, source: str = "outcomes.json") -> Outcomes:
    """Parse and check an outcomes file (its text, or the parsed dict); ``source`` names it in errors."""
    try:
        data = json.loads(text_or_dict) if isinstance(text_or_dict, (str, bytes)) else text_or_dict
    except ValueError as err:
        raise OutcomesError(f"{source}: not JSON ({err})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise OutcomesError(f"{source}: schema {found!r}, expected {SCHEMA!r}; rerun `dvc repro metrics` with this "
                            f"code to rewrite it")
    try:
        n_test = int(data["n_test"])
        ap = data["attack_points"]
        mask = decode_bits(ap["bits"], n_test)
        points = np.flatnonzero(mask)
        if len(points) != int(ap["n"]) or points_sha256(points) != ap["sha256"]:
            raise OutcomesError("attack_points: the bitset does not match its n / sha256")
        n = len(points)
        models = {}
        for name, m in data["models"].items():
            models[name] = ModelOutcomes(
                clean_correct=decode_bits(m["clean_correct"], n_test),
                worst_case={k: decode_bits(v, n) for k, v in m["worst_case"].items()},
                robust={a: {k: decode_bits(v, n) for k, v in per_eps.items()} for a, per_eps in m["robust"].items()},
                autoattack_version=m.get("autoattack_version"))
        return Outcomes(dataset=data.get("dataset"), n_test=n_test, test_sha256=data.get("test_sha256"),
                        eps=[float(e) for e in data["eps"]], headline_eps=float(data["headline_eps"]),
                        attack_points=points, attack_points_sha256=ap["sha256"], models=models)
    except (OutcomesError, BitsetError) as err:
        raise OutcomesError(f"{source}: {err}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise OutcomesError(f"{source}: malformed ({type(err).__name__}: {err}); rerun `dvc repro metrics`") from None
