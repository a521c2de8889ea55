"""Stage `metrics`: per-model metrics.json, gradient-masking report, plot data (JSON) and PNG figures.

Training times go to timing.json, not metrics.json: metrics.json depends only on params (same params ->
same bytes), wall-clock time never does. They are read from .timing/<role>.json, which each training stage writes
beside its checkpoint: neither a DVC output nor a dep, so a retraining that gives the same checkpoint reruns
nothing downstream, and a rerun of this stage alone reports the latest training times. Method darht: darht_transferability.json (the teachers' K x K
transferability matrix, and each teacher's transfer to the student) and its heatmap; other methods write an
empty matrix there. Torch-free (robustkd.stage, robustkd.suite), so the stage starts fast.
"""
import json
from pathlib import Path

from robustkd import plotting, stage
from robustkd.diagnostics import summarise, transferability
from robustkd.io import atomic_write_json, atomic_write_text
from robustkd.suite import eps_key

RESULTS_DIR = Path("results/attack")
PLOTS_DIR = Path("plots")
TIMING_DIR = Path(".timing")  # robustkd.pipeline.TIMING_DIR (not imported: that module needs torch)


def train_seconds(role: str) -> float | None:
    """The training seconds the stage that trained ``role`` recorded; None if it left none (e.g. another clone)."""
    try:
        return json.loads((TIMING_DIR / f"{role}.json").read_text())["train_seconds"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_results() -> list[dict]:
    names = json.loads((RESULTS_DIR / "index.json").read_text())["models"]
    return [json.loads((RESULTS_DIR / f"{n}.json").read_text()) for n in names]


def masking_report(metrics: dict, headline_eps: float) -> str:
    lines = ["# Gradient-masking report", "",
             "Written by `python src/metrics.py` (stage `metrics`) from results/attack/. Thresholds: params.yaml `metrics.masking`.",
             ""]
    for name, m in metrics.items():
        verdict = "FLAGGED" if m["gradient_masking"] else "not flagged"
        lines.append(f"## {name}: {verdict}")
        lines.append(f"clean {100 * m['clean_acc']:.1f}%, worst case at ε={headline_eps:g}: "
                     f"{100 * m['worst_case_headline']:.1f}%")
        lines += [f"- {r}" for r in m["masking_reasons"].split(" | ") if r] or ["- no check fired"]
        lines.append("")
    return "\n".join(lines)


def main(params: dict) -> None:
    thresholds = params["metrics"]["masking"]
    results = load_results()
    metrics = {r["model"]: summarise(r, thresholds) for r in results}
    headline = results[0]["headline_eps"]
    atomic_write_json("metrics.json", metrics)
    seconds = {r["model"]: train_seconds(r["info"].get("role", r["model"])) for r in results}
    atomic_write_json("timing.json", {"train_seconds": seconds,
                                      "train_seconds_total": round(sum(v or 0 for v in seconds.values()), 2)})
    atomic_write_text("results/gradient_masking.md", masking_report(metrics, headline))

    acc_rob = [{"model": n, "clean_acc": m["clean_acc"], "worst_case_acc": m["worst_case_headline"],
                "autoattack_acc": m["autoattack_headline"]} for n, m in metrics.items()]
    vs_eps = []
    for n, m in metrics.items():
        for attack, per_eps in {**m["robust_acc"], "worst_case": m["worst_case"]}.items():
            for eps in results[0]["eps"]:
                if eps_key(eps) in per_eps:
                    vs_eps.append({"model": n, "attack": attack, "series": f"{n}/{attack}", "eps": eps,
                                   "robust_acc": per_eps[eps_key(eps)]})
    sens = [{"model": n, "temperature": m["train_temperature"], "sensitivity_softmax": m["sensitivity_softmax"],
             "sensitivity_logit": m["sensitivity_logit"]} for n, m in metrics.items()]
    atomic_write_json(PLOTS_DIR / "accuracy_vs_robustness.json", acc_rob)
    atomic_write_json(PLOTS_DIR / "robust_vs_eps.json", vs_eps)
    atomic_write_json(PLOTS_DIR / "sensitivity_vs_temperature.json", sens)
    plotting.accuracy_vs_robustness(acc_rob, headline, PLOTS_DIR / "accuracy_vs_robustness.png")
    plotting.robust_vs_eps(vs_eps, PLOTS_DIR / "robust_vs_eps.png")
    matrix = transferability(results)
    atomic_write_json("darht_transferability.json", matrix)
    cells = [{"source": s, "target": t, "success_rate": v} for s in matrix["teachers"]
             for t, v in {**matrix["success_rate"][s],
                          **({"student": matrix["success_rate_on_student"][s]} if "success_rate_on_student" in matrix
                             else {})}.items()]
    atomic_write_json(PLOTS_DIR / "darht_transferability.json", cells)
    plotting.transferability_heatmap(matrix, PLOTS_DIR / "darht_transferability.png")
    if matrix["teachers"]:
        print(f"[metrics] DARHT transferability (mean off-diagonal success {matrix['mean_off_diagonal']}): "
              f"{json.dumps(matrix['success_rate'])}")
    for n, m in metrics.items():
        flag = "MASKING" if m["gradient_masking"] else "ok"
        print(f"[metrics] {n}: clean {m['clean_acc']:.4f} worst@{headline:g} {m['worst_case_headline']:.4f} "
              f"AA {m['autoattack_headline']} [{flag}]")


if __name__ == "__main__":
    stage.run(main)
