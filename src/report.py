"""Turn `dvc exp show --json` into a markdown table (one row per experiment, the deployed student).

    dvc exp show --json > /tmp/exps.json && python src/report.py /tmp/exps.json
    dvc exp show --json | python src/report.py -          # same, from a pipe

Columns: the params that define a variant, then the student's clean accuracy, robust accuracy under
the papers' softmax-CE PGD and under AutoAttack at the headline ε, the per-point worst case, the CW-L2
median, the softmax sensitivity and the gradient-masking flag.
"""
from __future__ import annotations

import argparse
import json
import sys

PARAM_COLUMNS = ("method", "temperature", "chain_length")


def _experiments(entries: list) -> list[tuple[str, dict]]:
    """(name, data) for every committed baseline and experiment that has results."""
    rows = []
    for entry in entries:
        runs = [entry] + [r for group in entry.get("experiments") or [] for r in group.get("revs", [])]
        for run in runs:
            data = run.get("data") or {}
            name = run.get("name") or data.get("name") or run.get("rev", "?")[:7]
            if data.get("metrics"):
                rows.append((name, data))
    return rows


def _fmt(value, pct=True):
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{100 * value:.1f}" if pct else f"{value:.3g}"


def table(entries: list, model: str = "student") -> str:
    header = ["experiment", *PARAM_COLUMNS, "clean %", "softmax-CE PGD %", "AutoAttack %", "worst case %",
              "CW-L2 median", "sensitivity (softmax)", "masking flagged"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    seen = set()
    for name, data in _experiments(entries):
        params = data["params"]["params.yaml"]["data"]
        metrics = data["metrics"]["metrics.json"]["data"][model]
        eps_key = "eps_" + f"{params['attack']['headline_eps']:g}".replace(".", "p")
        key = (tuple(params.get(c) for c in PARAM_COLUMNS), json.dumps(metrics, sort_keys=True))
        if key in seen:  # the workspace repeats the commit it sits on
            continue
        seen.add(key)
        lines.append("| " + " | ".join([
            name, *[str(params.get(c)) for c in PARAM_COLUMNS],
            _fmt(metrics["clean_acc"]),
            _fmt(metrics["robust_acc"]["pgd_softmax_ce"].get(eps_key)),
            _fmt(metrics["autoattack_headline"]),
            _fmt(metrics["worst_case_headline"]),
            _fmt(metrics["cw_l2_median"], pct=False),
            _fmt(metrics["sensitivity_softmax"], pct=False),
            _fmt(metrics["gradient_masking"]),
        ]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp_show_json", help="output of `dvc exp show --json` (a file, or - for stdin)")
    parser.add_argument("--model", default="student", help="which model's metrics to tabulate (default: student)")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.exp_show_json == "-" else open(args.exp_show_json).read()
    print(table(json.loads(text), args.model))


if __name__ == "__main__":
    main()
