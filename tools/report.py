"""Markdown tables from results: one row per experiment (`dvc exp show --json`) or per model (metrics.json).

    dvc exp show --json > /tmp/exps.json && python tools/report.py /tmp/exps.json
    dvc exp show --json | python tools/report.py -          # same, from a pipe
    dvc exp show --all-commits --json | python tools/report.py - --commit 1a2b3c4 --experiments-only --params method
                                                          # one sweep: the experiments queued from commit 1a2b3c4
    python tools/report.py --models metrics.json            # every model of the current run
    python tools/report.py --purification metrics.json      # method purification: both protocols, PSNR / SSIM
    python tools/report.py --transfer darht_transferability.json   # method darht: the transferability matrix
    python tools/report.py --bench results/bench.json       # tools/bench.py's JSON: speed, memory, targets met

Columns: the params that define a variant, then the student's clean accuracy, robust accuracy under
the papers' softmax-CE PGD and under AutoAttack at the headline ε, the per-point worst case, the CW-L2
median, the softmax sensitivity and the gradient-masking flag; per experiment also the training time
of all its models (timing.json: teacher, assistants and student, not the shared surrogate).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # `python tools/report.py` imports robustkd from src/

PARAM_COLUMNS = ("method", "temperature", "chain_length")


def _experiments(entries: list) -> list[tuple[str, dict]]:
    """(name, data, rev) of every committed baseline and every finished experiment, the workspace last.

    Queued, running and failed experiments are skipped: their metrics are not theirs yet.
    """
    def has_metrics(data: dict | None) -> bool:  # old commits may have no (or unreadable) metrics files
        files = (data or {}).get("metrics") or {}
        return any(files.get(name, {}).get("data") for name in ("metrics.json", "headline.json"))

    rows, workspace = [], []
    for entry in entries:
        name = "workspace" if entry.get("rev") == "workspace" else entry.get("name") or entry.get("rev", "?")[:7]
        target = workspace if name == "workspace" else rows
        if has_metrics(entry.get("data")):
            target.append((name, entry["data"], entry.get("rev")))
        for group in entry.get("experiments") or []:
            executor = group.get("executor") or {}
            if executor.get("state", "success") != "success":
                continue
            for run in group.get("revs", []):
                if has_metrics(run.get("data")):
                    rows.append((run.get("name") or run["rev"][:7], run["data"], run.get("rev")))
    return rows + workspace


def _fmt(value, pct=True):
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if pct == "flag":  # gradient_masking: 1/0 (true/false in metrics files written before the 0/1 flag)
        return "yes" if value else "no"
    return f"{100 * value:.1f}" if pct else f"{value:.3g}"


METRIC_COLUMNS = ("clean %", "softmax-CE PGD %", "margin PGD %", "AutoAttack %", "worst case %", "CW-L2 median",
                  "sensitivity (softmax)", "sensitivity (logit)", "masking flagged")


def metric_cells(metrics: dict, eps_key: str) -> list[str]:
    """The metric columns; a key missing from an older schema shows as n/a."""
    robust = metrics.get("robust_acc", {})
    return [
        _fmt(metrics.get("clean_acc")),
        _fmt(robust.get("pgd_softmax_ce", {}).get(eps_key)),
        _fmt(robust.get("pgd_margin", {}).get(eps_key)),
        _fmt(metrics.get("autoattack_headline")),
        _fmt(metrics.get("worst_case_headline")),
        _fmt(metrics.get("cw_l2_median"), pct=False),
        _fmt(metrics.get("sensitivity_softmax"), pct=False),
        _fmt(metrics.get("sensitivity_logit"), pct=False),
        _fmt(metrics.get("gradient_masking"), pct="flag"),
    ]


# Keys added to metrics.json by the change that moved the masking reasons to results/gradient_masking.md.
CURRENT_KEYS = ("clean_acc_ci_low", "clean_acc_ci_high", "worst_case_headline_ci_low", "worst_case_headline_ci_high",
                "autoattack_headline_ci_low", "autoattack_headline_ci_high", "masking_codes")


def schema_note(metrics: dict, path: str) -> str | None:
    """One line naming the current keys an older metrics.json lacks (None when it has them all)."""
    missing = [k for k in CURRENT_KEYS if any(k not in m for m in metrics.values())]
    if not missing:
        return None
    return (f"note: {path} predates the current metrics schema; missing keys: {', '.join(missing)} (not in these "
            f"tables; rerun `dvc repro metrics` to add them)"
            + ("; its masking reasons are in its old `masking_reasons` key" if any("masking_reasons" in m for m in
                                                                                    metrics.values()) else ""))


# headline.json key -> metrics.json key: a run whose full metrics.json cannot be read still shows these.
HEADLINE_KEYS = {"clean_acc": "clean_acc", "worst_case_acc": "worst_case_headline",
                 "autoattack_acc": "autoattack_headline", "gradient_masking": "gradient_masking"}


def full_metrics(data: dict, rev: str | None, model: str) -> dict:
    """One model's metrics.json entry for an experiment of `dvc exp show --json`.

    Commits from before headline.json declared metrics.json itself as metrics, so DVC's JSON has it; later ones
    declare only headline.json, and metrics.json (committed by every run, as a cache: false output) is read with
    `git show <rev>:metrics.json` (the workspace: the file). Failing that, the headline's keys alone.
    """
    files = data.get("metrics") or {}
    full = (files.get("metrics.json") or {}).get("data")
    if full is None:
        try:
            text = (open("metrics.json").read() if rev in (None, "workspace") else
                    subprocess.run(["git", "show", f"{rev}:metrics.json"], capture_output=True, text=True,
                                   check=True).stdout)
            full = json.loads(text)
        except (OSError, subprocess.CalledProcessError, json.JSONDecodeError):
            head = (files.get("headline.json") or {}).get("data") or {}
            full = {name: {src: m.get(k) for k, src in HEADLINE_KEYS.items()} for name, m in head.items()}
    return full[model]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


PURIFIER_ORDER = ("purifier_normal", "purifier_adversarial")


def chain_position(name: str) -> tuple[int, int]:
    """teacher, its purifiers, assistant_1, assistant_2, ..., the DARHT teachers, student (metrics.json itself is
    sorted by name)."""
    if name.startswith("assistant_"):
        return (1, int(name.split("_")[1]))
    if name.startswith("darht_"):
        return (2, 0)
    if name in PURIFIER_ORDER:
        return (0, 1 + PURIFIER_ORDER.index(name))
    return (0, 0) if name == "teacher" else (3, 0)


PURIFICATION_COLUMNS = ("clean %", "paper: FGSM %", "paper: PGD-CE %", "paper: margin PGD %", "paper: worst %",
                        "paper: CW-L2 %", "adaptive: PGD-CE %", "adaptive: AutoAttack %", "adaptive: worst %",
                        "worst case (all) %", "PSNR clean", "SSIM clean", "PSNR adv.", "SSIM adv.", "masking flagged")


def purification_table(metrics: dict, headline_eps: float) -> str:
    """Method purification, one row per deployed model: the bare classifier ("no purifier"), each purifier
    teacher and the student purifier. "paper": crafted on the classifier alone, then purified; "adaptive":
    white-box through classifier∘purifier; "adv.": the purified paper-protocol PGD-CE example."""
    key = "eps_" + f"{headline_eps:g}".replace(".", "p")
    lines = [_row(["model", *PURIFICATION_COLUMNS]), "|" + "---|" * (1 + len(PURIFICATION_COLUMNS))]
    for name, m in sorted(metrics.items(), key=lambda kv: chain_position(kv[0])):
        robust = m.get("robust_acc", {})
        cells = [m.get("clean_acc"), *(robust.get(a, {}).get(key) for a in
                                       ("classifier_fgsm", "classifier_pgd_ce", "classifier_pgd_margin")),
                 m.get("paper_protocol_headline"), m.get("paper_protocol_cw_acc"),
                 robust.get("pgd_softmax_ce", {}).get(key), m.get("autoattack_headline"), m.get("adaptive_headline"),
                 m.get("worst_case_headline")]
        quality = [m.get(k) for k in ("psnr_clean", "ssim_clean", "psnr_adversarial", "ssim_adversarial")]
        quality = ["n/a" if v is None else f"{v:.{1 if i % 2 == 0 else 3}f}" for i, v in enumerate(quality)]
        label = "teacher (no purifier)" if m.get("purifier") is None else name
        lines.append(_row([label, *map(_fmt, cells), *quality, _fmt(m.get("gradient_masking"), pct="flag")]))
    return "\n".join(lines)


def models_table(metrics: dict, headline_eps: float) -> str:
    key = "eps_" + f"{headline_eps:g}".replace(".", "p")
    lines = [_row(["model", "train T", *METRIC_COLUMNS]), "|" + "---|" * (2 + len(METRIC_COLUMNS))]
    for name, m in sorted(metrics.items(), key=lambda kv: chain_position(kv[0])):
        lines.append(_row([name, f"{m['train_temperature']:g}", *metric_cells(m, key)]))
    return "\n".join(lines)


def transfer_table(matrix: dict) -> str:
    """The DARHT transferability matrix (darht_transferability.json): rows = crafted on, columns = evaluated on
    (the teachers, then the student); success rates in % over the target's clean-correct attacked points."""
    teachers = matrix.get("teachers") or []
    if not teachers:
        return "no DARHT teachers in this run (method is not darht)"
    on_student = matrix.get("success_rate_on_student")
    targets = teachers + (["student"] if on_student else [])
    short = lambda n: n.removeprefix("darht_")  # noqa: E731
    lines = [_row(["crafted on (row) / evaluated on (column)", *map(short, targets)]), "|" + "---|" * (1 + len(targets))]
    for s in teachers:
        cells = [matrix["success_rate"][s].get(t) if t != "student" else on_student[s] for t in targets]
        lines.append(_row([short(s), *map(_fmt, cells)]))
    counts = ", ".join(f"{short(t)} {n}" for t, n in matrix.get("n_clean_correct", {}).items())
    lines.append("")
    lines.append(f"ε = {matrix['eps']:g}; mean off-diagonal success {_fmt(matrix.get('mean_off_diagonal'))}%; "
                 f"clean-correct attacked points per target: {counts}.")
    if matrix.get("chosen"):
        lines.append(f"The student learnt from {', '.join(map(short, matrix['chosen']))}, chosen on the validation "
                     f"split (darht.select.k; results/darht_select.json); this test-split matrix is a report.")
    return "\n".join(lines)


def training_minutes(data: dict) -> str:
    timing = ((data.get("metrics") or {}).get("timing.json") or {}).get("data") or {}
    total = timing.get("train_seconds_total")
    return "n/a" if total is None else f"{total / 60:.1f}"


def table(entries: list, model: str = "student", commit: str | None = None, experiments_only: bool = False,
          param_columns: tuple[str, ...] = PARAM_COLUMNS) -> str:
    """One row per experiment; ``commit``: only that commit (a SHA prefix) and the experiments based on it;
    ``experiments_only``: leave out the commits' own (committed) results."""
    if commit:
        entries = [e for e in entries if str(e.get("rev", "")).startswith(commit)]
    if experiments_only:
        entries = [{**e, "data": None} for e in entries]
    header = ["experiment", *param_columns, *METRIC_COLUMNS, "train min (all models)"]
    lines = [_row(header), "|" + "---|" * len(header)]
    seen = set()
    for name, data, rev in _experiments(entries):
        params = data["params"]["params.yaml"]["data"]
        metrics = full_metrics(data, rev, model)
        eps_key = "eps_" + f"{params['attack']['headline_eps']:g}".replace(".", "p")
        key = (tuple(params.get(c) for c in param_columns), json.dumps(metrics, sort_keys=True))
        if key in seen:  # the workspace repeats the commit it sits on
            continue
        seen.add(key)
        lines.append(_row([name, *[str(params.get(c)) for c in param_columns], *metric_cells(metrics, eps_key),
                           training_minutes(data)]))
    return "\n".join(lines)


# Issue targets for tools/bench.py on the 2-core CPU: (key, comparison, bound).
BENCH_TARGETS = {"train_speedup": 1.5, "attack_speedup": 1.3, "eval_speedup": 2.0}
ATTACK_ONLY_MAX_FRACTION = 0.25
BENCH_MODELS = ("natural", "distilled", "robust")  # the headline speedups are the natural model's


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def bench_table(result: dict) -> str:
    """tools/bench.py's last output line as Markdown: engine vs reference, then the pipeline's stages."""
    train, attack, ev = result["train"], result["attack"], result["eval"]
    refs = train["reference_images_per_s"]
    reference = "DataLoader: " + ", ".join(f"{v:.0f} ({k.split('_')[1]} workers)" for k, v in sorted(refs.items()))
    cpu = f", {result['cpu']}" if result.get("cpu") else ""
    flags = f" (flags: {', '.join(result['cpu_flags']) or 'none of avx2, avx512'})" if "cpu_flags" in result else ""
    lines = [f"Device: {result['device']}{cpu}{flags}, {result['cores']} cores, {result['threads']} threads, "
             f"torch {result['torch']}.",
             "",
             "| measure | this engine | reference | speedup | target | met |",
             "|---|---:|---:|---:|---:|---|",
             f"| training, images/s ({train['images']} images, batch {train['batch_size']}) | "
             f"{train['engine_images_per_s']:.0f}"
             + (f" ({train['engine_precision']})" if "engine_precision" in train else "")  # runs from its addition on
             + f" | {reference} | {result['train_speedup']:.2f} | ≥ {BENCH_TARGETS['train_speedup']} | "
             f"{_met(result['train_speedup'] >= BENCH_TARGETS['train_speedup'])} |"]
    if "engine_fp32_images_per_s" in train:
        lines.append(f"| training, the engine in fp32 (`engine.bf16: false`), images/s | "
                     f"{train['engine_fp32_images_per_s']:.0f} | {reference} | {train['speedup_fp32_engine']:.2f} | – | – |")
    for label in BENCH_MODELS:
        a = attack[label]
        key = "attack_speedup" if label == "natural" else None
        lines.append(f"| PGD-L∞ ({attack['steps']} steps, ε={attack['eps']}), {label} model, images/s | "
                     f"{a['engine_images_per_s']:.0f} (robust acc {100 * a['engine_robust_acc']:.1f}%) | torchattacks: "
                     f"{a['reference_images_per_s']:.0f} ({100 * a['reference_robust_acc']:.1f}%) | {a['speedup']:.2f} | "
                     + (f"≥ {BENCH_TARGETS[key]} | {_met(a['speedup'] >= BENCH_TARGETS[key])} |" if key else "– | – |"))
    for label in BENCH_MODELS:
        e = ev[label]
        key = "eval_speedup" if label == "natural" else None
        lines.append(f"| attack suite, {label} model, {ev['points']} points, seconds | cascade: {e['cascade_seconds']:.0f} | "
                     f"everything on every point: {e['full_seconds']:.0f} | {e['speedup']:.2f} | "
                     + (f"≥ {BENCH_TARGETS[key]} | " if key else "– | ")
                     + (_met(e["speedup"] >= BENCH_TARGETS[key] and e["identical_worst_case"]) if key else "–")
                     + f" (worst case identical: {'yes' if e['identical_worst_case'] else 'NO'}) |")
    stage = (result.get("pipeline") or {}).get("attack_stage")
    if stage:  # runs from this field's introduction on
        lines.append(f"| default run's attack stage (`{stage['command']}`: {', '.join(stage['models'])}), seconds | "
                     f"cascade: {stage['cascade_seconds']:.0f} | everything on every point: {stage['full_seconds']:.0f} | "
                     f"{stage['speedup']:.2f} | – | – (worst case identical: "
                     f"{'yes' if stage['identical_worst_case'] else 'NO'}) |")
    lines.append("")
    models = result.get("attacked_models")
    if models:
        lines.append("Attacked models: " + "; ".join(
            f"{label}: {m['schedule']}, {m['epochs'] if isinstance(m['epochs'], int) else ' + '.join(map(str, m['epochs']))}"
            f" epoch(s) on {m['images']:,} images" for label, m in ((k, models[k]) for k in BENCH_MODELS if k in models)) + ".")
        lines.append("")
    lines.append(f"The reference loop's data loading alone (0 workers, no model): "
                 f"{train['reference_loading_only_images_per_s']:.0f} images/s.")
    if "bare_loop_images_per_s" in train:  # runs from 9e979ba on
        lines[-1] += (f" A bare training loop over pre-cast channels_last tensors (no data path, no validation): "
                      f"{train['bare_loop_images_per_s']:.0f} images/s in fp32, "
                      f"{train['bare_loop_bf16_images_per_s']:.0f} under bf16 autocast.")
    if all("cascade_parts_seconds" in ev[label] for label in BENCH_MODELS):
        parts = sorted({p for label in BENCH_MODELS for p in ev[label]["full_parts_seconds"]},
                       key=lambda p: -ev[BENCH_MODELS[0]]["full_parts_seconds"].get(p, 0))
        lines += ["", "Seconds per part of the attack suite, without / with the cascade:", "",
                  "| part | " + " | ".join(f"{label} model" for label in BENCH_MODELS) + " |",
                  "|---|" + "---:|" * len(BENCH_MODELS)]
        for part in parts:
            cells = [f"{ev[label]['full_parts_seconds'].get(part, 0):.1f} / "
                     f"{ev[label]['cascade_parts_seconds'].get(part, 0):.1f}" for label in BENCH_MODELS]
            lines.append(f"| {part} | " + " | ".join(cells) + " |")
    pipe = result.get("pipeline")
    if pipe:
        lines += ["", "| stage | seconds | peak RSS (MiB) |", "|---|---:|---:|"]
        lines += [f"| {st['stage']} | {st['seconds']:.1f} | {st['peak_rss_mib']} |" for st in pipe["stages"]]
        lines.append(f"| **full default `dvc repro`** | **{pipe['full_repro_seconds']:.1f}** | "
                     f"{max(st['peak_rss_mib'] for st in pipe['stages'])} |")
        frac = pipe["attack_only_fraction"]
        # Runs before the `dvc repro` measure was added timed only `dvc exp run --temp`, under these keys.
        command = pipe.get("attack_only_rerun_command", "dvc exp run --temp")
        lines.append(f"| `{command}` after an attack-only change (reran: {', '.join(pipe['attack_only_rerun_stages'])}) | "
                     f"{pipe['attack_only_rerun_seconds']:.1f} | {pipe['attack_only_rerun_peak_rss_mib']} |")
        exp = pipe.get("exp_run")
        if exp:
            lines.append(f"| `{exp['command']}` after an attack-only change (reran: {', '.join(exp['stages'])}) | "
                         f"{exp['seconds']:.1f} | {exp['peak_rss_mib']} |")
        lines += ["", f"Attack-only rerun (`{command}`): {100 * frac:.1f}% of the full run (target ≤ "
                      f"{100 * ATTACK_ONLY_MAX_FRACTION:.0f}%: {_met(frac <= ATTACK_ONLY_MAX_FRACTION)})"
                      + (f"; with `{exp['command']}`: {100 * exp['fraction']:.1f}%." if exp else ".")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp_show_json", nargs="?", help="output of `dvc exp show --json` (a file, or - for stdin)")
    parser.add_argument("--model", default="student", help="which model's metrics to tabulate (default: student)")
    parser.add_argument("--commit", help="only this commit (SHA prefix) and the experiments queued from it")
    parser.add_argument("--experiments-only", action="store_true", help="leave out the commits' own results")
    parser.add_argument("--params", default=",".join(PARAM_COLUMNS),
                        help=f"top-level params shown as columns (default: {','.join(PARAM_COLUMNS)})")
    parser.add_argument("--models", metavar="METRICS_JSON", help="tabulate every model of one metrics.json instead")
    parser.add_argument("--purification", metavar="METRICS_JSON",
                        help="method purification: both protocols and PSNR/SSIM for every model of one metrics.json")
    parser.add_argument("--transfer", metavar="DARHT_TRANSFERABILITY_JSON",
                        help="method darht: the teachers' transferability matrix (darht_transferability.json)")
    parser.add_argument("--headline-eps", type=float, default=None,
                        help="with --models: the ε of the robust-accuracy columns (default: params.yaml attack.headline_eps)")
    parser.add_argument("--bench", metavar="BENCH_JSON", help="tools/bench.py's JSON (its last output line)")
    args = parser.parse_args(argv)
    if args.bench:
        text = open(args.bench).read().strip()
        try:  # bench.py --json's file; else its captured output, whose last line is the JSON
            result = json.loads(text)
        except json.JSONDecodeError:
            result = json.loads(text.splitlines()[-1])
        print(bench_table(result))
        return
    if args.transfer:
        print(transfer_table(json.loads(open(args.transfer).read())))
        return
    if args.models or args.purification:
        eps = args.headline_eps
        if eps is None:
            from robustkd.params import read_yaml

            eps = read_yaml(open("params.yaml").read())["attack"]["headline_eps"]
        render = models_table if args.models else purification_table
        path = args.models or args.purification
        metrics = json.loads(open(path).read())
        note = schema_note(metrics, path)
        if note:
            print(note, file=sys.stderr)
        print(render(metrics, eps))
        return
    if not args.exp_show_json:
        parser.error("give the `dvc exp show --json` output (or --models metrics.json)")
    text = sys.stdin.read() if args.exp_show_json == "-" else open(args.exp_show_json).read()
    print(table(json.loads(text), args.model, args.commit, args.experiments_only,
                tuple(c for c in args.params.split(",") if c)))


if __name__ == "__main__":
    main()
