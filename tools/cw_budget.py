"""Why does CW-L2 fail on some points of the default run's models: its step budget, or their logit scale?

    python3 tools/cw_budget.py [--budgets 50x4 200x4 50x9 200x9] [--out results/cw_budget.json]

Needs the default run's models and prepared data (`dvc repro`). For each evaluated model (teacher, assistants,
student) it runs CW-L2 (robustkd.attacks.cw_l2, params.yaml's c_init and lr) on the points the attack stage gives it
(the first `attack.cw_l2.n_points` of the seeded attacked subset, those the model classifies correctly) with each
budget (steps x binary-search steps), and records the success rate, the median L2 of the examples found and the
seconds it took. It also records each model's clean logit margin, Z_y - max_{i != y} Z_i, on those points: the hinge
term c * max(margin, 0) that CW must push below zero. A larger margin makes that term larger for the same c, so
large logits need no larger c; what a failure needs is more steps to get there.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from robustkd import attacks, data  # noqa: E402
from robustkd.io import atomic_write_json  # noqa: E402
from robustkd.models import load_checkpoint  # noqa: E402
from robustkd.params import load as load_params  # noqa: E402
from robustkd.training import to_float  # noqa: E402


def parse_budget(text: str) -> tuple[int, int]:
    steps, _, searches = text.partition("x")
    if not (steps.isdigit() and searches.isdigit() and int(steps) > 0 and int(searches) > 0):
        raise SystemExit(f"--budgets: {text!r} is not STEPSxBINARY_SEARCH_STEPS (e.g. 200x4)")
    return int(steps), int(searches)


@torch.no_grad()
def logit_margins(model, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Z_y - max_{i != y} Z_i per point: positive where the model is right."""
    logits = model(x)
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return (true - other).tolist()


def measure(model, x: torch.Tensor, y: torch.Tensor, budgets: list[tuple[int, int]], c_init: float,
            lr: float) -> dict:
    """CW-L2 on the points ``model`` classifies correctly, once per budget."""
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct], y[correct]
    margins = logit_margins(model, x, y)
    out = {"points": len(y), "logit_margin_median": round(statistics.median(margins), 4) if margins else None,
           "budgets": {}}
    for steps, searches in budgets:
        start = time.perf_counter()
        with attacks.frozen(model):
            _, dist = attacks.cw_l2(model, x, y, steps=steps, binary_search_steps=searches, c_init=c_init, lr=lr)
        found = [d for d in dist.tolist() if d != float("inf")]
        out["budgets"][f"{steps}x{searches}"] = {
            "success_rate": round(len(found) / len(y), 4) if len(y) else None,
            "l2_median_found": round(statistics.median(found), 4) if found else None,
            "seconds": round(time.perf_counter() - start, 1)}
    return out


def model_paths() -> list[Path]:
    models = Path("models")
    return [models / "teacher.pt", *sorted((models / "assistants").glob("assistant_*.pt")), models / "student.pt"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", nargs="+", default=None, help="STEPSxBINARY_SEARCH_STEPS; first: params.yaml's")
    parser.add_argument("--out", type=Path, default=Path("results/cw_budget.json"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    cfg = load_params()["attack"]
    cw = cfg["cw_l2"]
    budgets = [(cw["steps"], cw["binary_search_steps"])]
    budgets += [b for b in map(parse_budget, args.budgets or ["200x4", "50x9", "200x9"]) if b not in budgets]
    prepared = Path("data/prepared")
    x_u8, y = data.load_split(prepared, "test")
    n_points = len(y) if cfg["n_points"] is None else cfg["n_points"]
    # the attack stage's seeded subset, and CW's share of it
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg["seed"]))[:n_points].sort().values
    idx = idx[:cw["n_points"]]
    x, y = to_float(x_u8[idx]), y[idx]
    results = {}
    for path in model_paths():
        model, info = load_checkpoint(path, "cpu")
        results[path.stem] = {"train_temperature": info.get("temperature"), **measure(model.eval(), x, y, budgets,
                                                                                      cw["c_init"], cw["lr"])}
        print(f"[cw_budget] {path.stem}: {results[path.stem]}")
    atomic_write_json(args.out, {"command": "python3 tools/cw_budget.py", "c_init": cw["c_init"], "lr": cw["lr"],
                                 "n_points": cw["n_points"], "threads": torch.get_num_threads(), "models": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
