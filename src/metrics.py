"""Stage `metrics`: per-model metrics (headline.json, the few numbers `dvc exp show` and `dvc metrics diff` print by
default; metrics.json, every attack at every ε), gradient-masking report, plot data (JSON) and PNG figures, then a
closing summary on stdout: the headline table and where everything is.

Training times go to timing.json, not metrics.json: metrics.json depends only on params (same params ->
same bytes), wall-clock time never does. They are read from .timing/<role>.json, which each training stage writes
beside its checkpoint: neither a DVC output nor a dep, so a retraining that gives the same checkpoint reruns
nothing downstream, and a rerun of this stage alone reports the latest training times. Method darht:
darht_transferability.json (the teachers' K x K transferability matrix, and each teacher's transfer to the student)
and its heatmap; other methods write an empty matrix there. With `darht.select.k`, metrics.json's `darht_selection`
(the student's record of results/darht_select.json) and plots/darht/selection.png, the validation matrix the teachers
were chosen from. Torch-free (robustkd.stage, robustkd.suite), so the stage starts fast.

results/outcomes.json: every model's per-point outcomes as bitsets (robustkd.outcomes), kept in git for paired
comparisons (tools/compare.py, the studies): clean correctness over the test set from the predict stage's files,
the worst case and each attack per ε over the attacked points from the attack stage's.
"""
import json
from pathlib import Path

from robustkd import plotting, stage
from robustkd.bitsets import BitsetError, decode_bits
from robustkd.diagnostics import masking_reasons, summarise, transferability
from robustkd.io import atomic_write_json, atomic_write_text
from robustkd.outcomes import OUTCOMES_PATH, OutcomesError, build_outcomes
from robustkd.paths import ATTACK_RESULTS_DIR, PREDICTIONS_DIR, TIMING_DIR
from robustkd.suite import autoattack_label, eps_key

PLOTS_DIR = Path("plots")
SELECTION_HEATMAP = PLOTS_DIR / "darht" / "selection.png"


def train_seconds(role: str) -> float | None:
    """The training seconds the stage that trained ``role`` recorded; None if it left none (e.g. another clone)."""
    try:
        return json.loads((TIMING_DIR / f"{role}.json").read_text())["train_seconds"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_results() -> list[dict]:
    names = json.loads((ATTACK_RESULTS_DIR / "index.json").read_text())["models"]
    return [json.loads((ATTACK_RESULTS_DIR / f"{n}.json").read_text()) for n in names]


def clean_correct(names: list[str]) -> tuple[dict, str | None]:
    """Each model's per-test-image correctness (bool arrays) from the predict stage's files, and the sha256 of the
    test split they were computed on."""
    rerun = "rerun the predict stage (`dvc repro predict`)"
    correct, shas = {}, set()
    for name in names:
        path = PREDICTIONS_DIR / f"{name}.json"
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise OutcomesError(f"{path}: unreadable ({err}); {rerun}.") from None
        if "correct" not in record:
            raise OutcomesError(f"{path}: no per-image `correct` bitset (written before the per-point outcomes "
                                f"existed); {rerun}.")
        try:
            correct[name] = decode_bits(record["correct"], int(record["n_test"]))
        except (BitsetError, KeyError, TypeError, ValueError) as err:
            raise OutcomesError(f"{path}: malformed `correct` ({err}); {rerun}.") from None
        shas.add(record.get("test_sha256"))
    if len(shas) > 1:
        raise OutcomesError(f"{PREDICTIONS_DIR}: the models' predictions were made on different test splits; {rerun}.")
    return correct, next(iter(shas), None)


def per_point_outcomes(results: list[dict], dataset: str) -> dict:
    """results/outcomes.json's content (robustkd.outcomes.build_outcomes)."""
    missing = [r["model"] for r in results if "attack_points" not in r]
    if missing:
        raise OutcomesError(f"results/attack/{missing[0]}.json: no `attack_points` (written by an older attack "
                            f"stage); rerun `dvc repro attack`.")
    correct, test_sha256 = clean_correct([r["model"] for r in results])
    return build_outcomes(results, correct, dataset=dataset, test_sha256=test_sha256)


def masking_report(metrics: dict, reasons: dict[str, list[str]], headline_eps: float) -> str:
    """The masking verdicts with every reason in words (``reasons``: per model, from diagnostics.masking_reasons);
    metrics.json keeps only the flag and the short codes."""
    lines = ["# Gradient-masking report", "",
             "Written by `python src/metrics.py` (stage `metrics`) from results/attack/. Thresholds: params.yaml `metrics.masking`.",
             ""]
    for name, m in metrics.items():
        verdict = f"FLAGGED ({m['masking_codes']})" if m["gradient_masking"] else "not flagged"
        lines.append(f"## {name}: {verdict}")
        lines.append(f"clean {100 * m['clean_acc']:.1f}%, worst case at ε={headline_eps:g}: "
                     f"{100 * m['worst_case_headline']:.1f}%")
        lines += [f"- {r}" for r in reasons[name]] or ["- no check fired"]
        lines.append("")
    return "\n".join(lines)


DEPLOYED_MODEL = "student"  # what every method deploys (for purification: the student purifier + the classifier)
# headline.json key: metrics.json key. Short flat keys, the deployed model only: `dvc exp show --only-changed`
# then fits in 160 columns once DVC's dependency-hash columns are dropped (README, "Everyday commands").
HEADLINE_KEYS = {
    "clean": "clean_acc", "clean_lo": "clean_acc_ci_low", "clean_hi": "clean_acc_ci_high",
    "worst": "worst_case_headline", "worst_lo": "worst_case_headline_ci_low", "worst_hi": "worst_case_headline_ci_high",
    "aa": "autoattack_headline", "aa_lo": "autoattack_headline_ci_low", "aa_hi": "autoattack_headline_ci_high",
    "masking": "gradient_masking",
}


def headline_metrics(metrics: dict) -> dict:
    """headline.json: the deployed model's clean accuracy, worst case and AutoAttack at the headline ε, with their
    95% Wilson intervals (``_lo``, ``_hi``), and its masking flag (1 = flagged). Numbers only. Every model's
    numbers are in metrics.json and in the stage's closing summary."""
    if DEPLOYED_MODEL not in metrics:
        raise ValueError(f"results/attack/ holds no {DEPLOYED_MODEL!r} (models: {', '.join(metrics)}): "
                         f"rerun `dvc repro` so that the attack stage evaluates every model")
    m = metrics[DEPLOYED_MODEL]
    return {k: m.get(src) for k, src in HEADLINE_KEYS.items()}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _with_ci(m: dict, name: str) -> str:
    """``m[name]`` in % with its 95% interval, "27.0% [19.3%, 36.4%]" ("n/a" when not measured)."""
    if m.get(name) is None:
        return "n/a"
    return f"{_pct(m[name])} [{_pct(m[f'{name}_ci_low'])}, {_pct(m[f'{name}_ci_high'])}]"


def closing_summary(metrics: dict, headline_eps: float) -> str:
    """The table the stage ends with, and where the results are."""
    n = {m["n_attacked"] for m in metrics.values()}
    aa = autoattack_label(m.get("autoattack_version") for m in metrics.values())
    rows = [("model", "clean [95% CI]", "worst case [95% CI]", f"{aa} [95% CI]", "gradient masking")]
    for name, m in metrics.items():
        flag = f"FLAGGED ({m['masking_codes']})" if m["gradient_masking"] else "not flagged"
        rows.append((name, _with_ci(m, "clean_acc"), _with_ci(m, "worst_case_headline"),
                     _with_ci(m, "autoattack_headline"), flag))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([
        f"Results at ε={headline_eps:g} (L∞): clean accuracy on the test set; worst case (per point, over every "
        f"attack) and {aa} on {' / '.join(map(str, sorted(n)))} attacked points; each with the 95% Wilson "
        f"interval of its sample.",
        *table,
        "",
        "Where everything is:",
        "  headline.json                       the student's numbers (`dvc metrics show`, `dvc exp show`)",
        "  metrics.json                        every attack at every ε, per model (`dvc metrics show metrics.json`)",
        "  results/gradient_masking.md         why each model is (or is not) flagged, in words",
        "  plots/                              figures (PNG) and plot data (`dvc plots show`)",
        "  results/outcomes.json               per-point outcomes, for `python tools/compare.py A B`",
        "  python tools/report.py --models metrics.json   the full table, per model",
    ])


def main(params: dict) -> None:
    thresholds = params["metrics"]["masking"]
    results = load_results()
    outcomes = per_point_outcomes(results, params["dataset"])  # checked first: nothing is written on bad input
    metrics = {r["model"]: summarise(r, thresholds) for r in results}
    reasons = {r["model"]: masking_reasons(r, thresholds) for r in results}
    headline = results[0]["headline_eps"]
    atomic_write_json("metrics.json", metrics)
    atomic_write_json("headline.json", headline_metrics(metrics))
    seconds = {r["model"]: train_seconds(r["info"].get("role", r["model"])) for r in results}
    atomic_write_json("timing.json", {"train_seconds": seconds,
                                      "train_seconds_total": round(sum(v or 0 for v in seconds.values()), 2)})
    atomic_write_text("results/gradient_masking.md", masking_report(metrics, reasons, headline))
    atomic_write_json(OUTCOMES_PATH, outcomes)

    acc_rob = [{"model": n, "clean_acc": m["clean_acc"], "worst_case_acc": m["worst_case_headline"],
                "worst_case_acc_ci_low": m["worst_case_headline_ci_low"],
                "worst_case_acc_ci_high": m["worst_case_headline_ci_high"],
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
    # The heatmap is drawn for method darht only; other methods leave no figure. The folder always holds .keep (which
    # .dvcignore hides from DVC): git keeps no empty folder, and a clone without it would show the output as deleted
    # in `dvc status`.
    heatmap = PLOTS_DIR / "darht" / "transferability.png"
    heatmap.parent.mkdir(parents=True, exist_ok=True)
    (heatmap.parent / ".keep").touch()
    selection = metrics.get("student", {}).get("darht_selection")
    if matrix["teachers"]:
        plotting.transferability_heatmap(matrix, heatmap)
        print(f"[metrics] DARHT transferability (mean off-diagonal success {matrix['mean_off_diagonal']}): "
              f"{json.dumps(matrix['success_rate'])}")
    else:
        heatmap.unlink(missing_ok=True)  # a direct run after a DARHT one (DVC itself removes outputs first)
    # darht.select.k: the validation matrix the teachers were chosen from (the student's record), chosen ones starred
    if selection:
        plotting.selection_heatmap(selection, SELECTION_HEATMAP)
        print(f"[metrics] DARHT teachers chosen on the validation split: {', '.join(selection['chosen'])} of "
              f"{', '.join(selection['candidates'])} (mean pairwise transferability {selection['score']})")
    else:
        SELECTION_HEATMAP.unlink(missing_ok=True)
    print(closing_summary(metrics, headline))


if __name__ == "__main__":
    stage.run(main)
