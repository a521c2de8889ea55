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
of all its models (timing.json: teacher, assistants and student, not the shared surrogate). Every accuracy is shown
with its 95% Wilson interval, "86.7 [86.0, 87.3]", where metrics.json has it (runs from before the intervals: the
value alone).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # `python tools/report.py` imports robustkd from src/
from robustkd.suite import autoattack_label  # noqa: E402

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


def _fmt_ci(value, low=None, high=None) -> str:
    """An accuracy in % with its 95% interval, "86.7 [86.0, 87.3]"; the value alone when the interval is missing."""
    if value is None or low is None or high is None:
        return _fmt(value)
    return f"{_fmt(value)} [{_fmt(low)}, {_fmt(high)}]"


def _ci_cell(metrics: dict, name: str) -> str:
    """``name`` (clean_acc, worst_case_headline, ...) with its ``name_ci_low`` / ``name_ci_high``."""
    return _fmt_ci(metrics.get(name), metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high"))


def _attack_cell(metrics: dict, attack: str, eps_key: str) -> str:
    """One attack's robust accuracy at ``eps_key`` with its interval (metrics.json keeps it at the headline ε)."""
    low = (metrics.get("robust_acc_headline_ci_low") or {}).get(attack)
    high = (metrics.get("robust_acc_headline_ci_high") or {}).get(attack)
    return _fmt_ci(metrics.get("robust_acc", {}).get(attack, {}).get(eps_key), low, high)


METRIC_COLUMNS = ("clean %", "softmax-CE PGD %", "margin PGD %", "AutoAttack %", "worst case %", "CW-L2 median",
                  "sensitivity (softmax)", "sensitivity (logit)", "masking flagged")


def labelled(columns: tuple[str, ...], models) -> list[str]:
    """``columns`` with the AutoAttack titles saying which AutoAttack ran (suite.autoattack_label)."""
    label = autoattack_label(m.get("autoattack_version") for m in models)
    return [c.replace("AutoAttack", label) for c in columns]


def metric_cells(metrics: dict, eps_key: str) -> list[str]:
    """The metric columns; a key missing from an older schema shows as n/a."""
    return [
        _ci_cell(metrics, "clean_acc"),
        _attack_cell(metrics, "pgd_softmax_ce", eps_key),
        _attack_cell(metrics, "pgd_margin", eps_key),
        _ci_cell(metrics, "autoattack_headline"),
        _ci_cell(metrics, "worst_case_headline"),
        _fmt(metrics.get("cw_l2_median"), pct=False),
        _fmt(metrics.get("sensitivity_softmax"), pct=False),
        _fmt(metrics.get("sensitivity_logit"), pct=False),
        _fmt(metrics.get("gradient_masking"), pct="flag"),
    ]


# Keys added to metrics.json by the change that moved the masking reasons to results/gradient_masking.md.
CURRENT_KEYS = ("clean_acc_ci_low", "clean_acc_ci_high", "worst_case_headline_ci_low", "worst_case_headline_ci_high",
                "autoattack_headline_ci_low", "autoattack_headline_ci_high", "masking_codes",
                "robust_acc_headline_ci_low", "robust_acc_headline_ci_high")


def schema_note(metrics: dict, path: str) -> str | None:
    """One line naming the current keys an older metrics.json lacks (None when it has them all)."""
    missing = [k for k in CURRENT_KEYS if any(k not in m for m in metrics.values())]
    if not missing:
        return None
    return (f"note: {path} predates the current metrics schema; missing keys: {', '.join(missing)} (not in these "
            f"tables; rerun `dvc repro metrics` to add them)"
            + ("; its masking reasons are in its old `masking_reasons` key" if any("masking_reasons" in m for m in
                                                                                    metrics.values()) else ""))


# headline.json key -> metrics.json key: a run whose full metrics.json cannot be read still shows these. Since issue
# 25's width fix headline.json is flat (the student's numbers, short keys); before it, one object per model.
HEADLINE_KEYS = {"clean": "clean_acc", "worst": "worst_case_headline", "aa": "autoattack_headline",
                 "masking": "gradient_masking",
                 **{f"{h}_{end}": f"{m}_ci_{long}" for h, m in (("clean", "clean_acc"), ("worst", "worst_case_headline"),
                                                                ("aa", "autoattack_headline"))
                    for end, long in (("lo", "low"), ("hi", "high"))}}
OLD_HEADLINE_KEYS = {"clean_acc": "clean_acc", "worst_case_acc": "worst_case_headline",
                     "autoattack_acc": "autoattack_headline", "gradient_masking": "gradient_masking",
                     **{f"{h}_ci_{end}": f"{m}_ci_{end}" for h, m in (("clean_acc", "clean_acc"),
                                                                      ("worst_case_acc", "worst_case_headline"),
                                                                      ("autoattack_acc", "autoattack_headline"))
                        for end in ("low", "high")}}


def from_headline(head: dict) -> dict:
    """metrics.json-style entries from a headline.json of either layout."""
    if any(isinstance(v, dict) for v in head.values()):  # one object per model
        return {name: {src: m.get(k) for k, src in OLD_HEADLINE_KEYS.items()} for name, m in head.items()}
    return {"student": {src: head.get(k) for k, src in HEADLINE_KEYS.items()}} if head else {}


def committed_json(rev: str | None, path: str) -> dict | None:
    """A git-tracked result file as committed at ``rev`` (the workspace: the file itself); None if unreadable."""
    try:
        text = (open(path).read() if rev in (None, "workspace") else
                subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout)
        return json.loads(text)
    except (OSError, subprocess.CalledProcessError, json.JSONDecodeError):
        return None


def full_metrics(data: dict, rev: str | None, model: str) -> dict:
    """One model's metrics.json entry for an experiment of `dvc exp show --json`.

    Commits from before headline.json declared metrics.json itself as metrics, so DVC's JSON has it; later ones
    declare only headline.json, and metrics.json (committed by every run, as a cache: false output) is read with
    `git show <rev>:metrics.json` (the workspace: the file). Failing that, the headline's keys alone.
    """
    files = data.get("metrics") or {}
    full = (files.get("metrics.json") or {}).get("data") or committed_json(rev, "metrics.json")
    if full is None:
        full = from_headline((files.get("headline.json") or {}).get("data") or {})
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
    lines = [_row(["model", *labelled(PURIFICATION_COLUMNS, metrics.values())]),
             "|" + "---|" * (1 + len(PURIFICATION_COLUMNS))]
    for name, m in sorted(metrics.items(), key=lambda kv: chain_position(kv[0])):
        cells = [_ci_cell(m, "clean_acc"), *(_attack_cell(m, a, key) for a in
                                             ("classifier_fgsm", "classifier_pgd_ce", "classifier_pgd_margin")),
                 _ci_cell(m, "paper_protocol_headline"), _fmt(m.get("paper_protocol_cw_acc")),
                 _attack_cell(m, "pgd_softmax_ce", key), _ci_cell(m, "autoattack_headline"),
                 _ci_cell(m, "adaptive_headline"), _ci_cell(m, "worst_case_headline")]
        quality = [m.get(k) for k in ("psnr_clean", "ssim_clean", "psnr_adversarial", "ssim_adversarial")]
        quality = ["n/a" if v is None else f"{v:.{1 if i % 2 == 0 else 3}f}" for i, v in enumerate(quality)]
        label = "teacher (no purifier)" if m.get("purifier") is None else name
        lines.append(_row([label, *cells, *quality, _fmt(m.get("gradient_masking"), pct="flag")]))
    return "\n".join(lines)


def models_table(metrics: dict, headline_eps: float) -> str:
    key = "eps_" + f"{headline_eps:g}".replace(".", "p")
    lines = [_row(["model", "train T", *labelled(METRIC_COLUMNS, metrics.values())]),
             "|" + "---|" * (2 + len(METRIC_COLUMNS))]
    for name, m in sorted(metrics.items(), key=lambda kv: chain_position(kv[0])):
        label = f"{name} (AWP γ={m['awp_gamma']:g})" if m.get("awp") else name  # trained with AWP (robustkd.awp)
        lines.append(_row([label, f"{m['train_temperature']:g}", *metric_cells(m, key)]))
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


def training_minutes(data: dict, rev: str | None = None) -> str:
    """Training minutes of every model; timing.json is no longer declared as metrics (it changes on every run and
    would widen `dvc exp show`), so it is read from git like metrics.json."""
    timing = ((data.get("metrics") or {}).get("timing.json") or {}).get("data") or committed_json(rev, "timing.json") or {}
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
    rows, models = [], []
    seen = set()
    for name, data, rev in _experiments(entries):
        params = data["params"]["params.yaml"]["data"]
        metrics = full_metrics(data, rev, model)
        eps_key = "eps_" + f"{params['attack']['headline_eps']:g}".replace(".", "p")
        key = (tuple(params.get(c) for c in param_columns), json.dumps(metrics, sort_keys=True))
        if key in seen:  # the workspace repeats the commit it sits on
            continue
        seen.add(key)
        models.append(metrics)
        rows.append(_row([name, *[str(params.get(c)) for c in param_columns], *metric_cells(metrics, eps_key),
                          training_minutes(data, rev)]))
    header = ["experiment", *param_columns, *labelled(METRIC_COLUMNS, models), "train min (all models)"]
    return "\n".join([_row(header), "|" + "---|" * len(header), *rows])


# Issue targets for tools/bench.py on the 2-core CPU: (key, comparison, bound).
BENCH_TARGETS = {"train_speedup": 1.5, "attack_speedup": 1.3, "eval_speedup": 2.0, "robust_train_speedup": 1.5}
ATTACK_ONLY_MAX_FRACTION = 0.25
BENCH_MODELS = ("natural", "distilled", "robust")  # the headline speedups are the natural model's


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


BENCH_HEADER = ["| measure | this engine | reference | speedup | target | met |", "|---|---:|---:|---:|---:|---|"]


def bench_device_line(result: dict) -> str:
    gpu = f" ({result['gpu']})" if result.get("gpu") else ""
    cpu = f", {'host ' if gpu else ''}{result['cpu']}" if result.get("cpu") else ""
    flags = f" (flags: {', '.join(result['cpu_flags']) or 'none of avx2, avx512'})" if "cpu_flags" in result else ""
    return (f"Device: {result['device']}{gpu}{cpu}{flags}, {result['cores']} cores, {result['threads']} threads, "
            f"torch {result['torch']}.")


def bench_table(result: dict) -> str:
    """tools/bench.py's last output line as Markdown: engine vs reference, then the pipeline's stages. A file
    written by ``--only robust_train`` alone (no other measurement in it) gives the PGD-AT epoch rows alone."""
    if "train" not in result and result.get("robust_train"):
        robust = result["robust_train"]
        return "\n".join([bench_device_line(result), "", *BENCH_HEADER, *robust_train_rows(robust), "",
                          robust_train_note(robust, result)])
    train, attack, ev = result["train"], result["attack"], result["eval"]
    refs = train["reference_images_per_s"]
    reference = "DataLoader: " + ", ".join(f"{v:.0f} ({k.split('_')[1]} workers)" for k, v in sorted(refs.items()))
    lines = [bench_device_line(result),
             "",
             *BENCH_HEADER,
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
    robust = result.get("robust_train")
    if robust:  # runs from this field's introduction on
        lines += robust_train_rows(robust)
    stage = (result.get("pipeline") or {}).get("attack_stage")
    if stage:  # runs from this field's introduction on
        lines.append(f"| default run's attack stage (`{stage['command']}`: {', '.join(stage['models'])}), seconds | "
                     f"cascade: {stage['cascade_seconds']:.0f} | everything on every point: {stage['full_seconds']:.0f} | "
                     f"{stage['speedup']:.2f} | – | – (worst case identical: "
                     f"{'yes' if stage['identical_worst_case'] else 'NO'}) |")
    lines.append("")
    if robust:
        lines += [robust_train_note(robust, result), ""]
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


def robust_train_rows(robust: dict) -> list[str]:
    """bench.py's robust_train: one PGD-AT epoch, the inner attack as params.yaml runs it vs in fp32, in wall seconds
    (``robust_train_speedup``) and in the process's CPU seconds (what a machine other processes share cannot
    inflate)."""
    a = robust["train_attack"]
    what = (f"PGD-AT epoch ({robust['images']} images, batch {robust['batch_size']}, PGD-{a['steps']} ε={a['eps']:g}; "
            f"training {robust['train_precision']})")
    target = BENCH_TARGETS["robust_train_speedup"]
    rows = []
    for label, here, fp32, ratio in (("seconds", robust["seconds"], robust["fp32_attack_seconds"], robust["speedup"]),
                                     ("CPU seconds", robust.get("cpu_seconds"), robust.get("fp32_attack_cpu_seconds"),
                                      robust.get("cpu_speedup"))):
        if ratio is None:
            continue
        rows.append(f"| {what}, {label} | inner attack {robust['attack_precision']}: {here:.1f} | "
                    f"inner attack fp32: {fp32:.1f} | {ratio:.2f} | ≥ {target} | {_met(ratio >= target)} |")
    return rows


def robust_train_note(robust: dict, result: dict) -> str:
    """Where the robust_train rows come from, when that differs from the rest of the file (``--only robust_train``)."""
    load = robust.get("load_average_1min") or []
    parts = [f"The PGD-AT epoch rows: {robust['repeats']} alternating runs per side, medians"]
    if robust.get("command"):
        parts.append(f"from `{robust['command']}`")
    if robust.get("commit"):
        parts.append(f"at commit `{robust['commit']}`")
    if robust.get("cpu") and robust.get("cpu") != result.get("cpu"):
        parts.append(f"on {robust['cpu']}")
    if robust.get("threads") is not None and robust.get("threads") != result.get("threads"):
        parts.append(f"with {robust['threads']} thread(s)")
    text = " ".join(parts)
    if len(load) == 2 and None not in load:
        text += f"; 1-minute load average {load[0]:.1f} before, {load[1]:.1f} after"
    return text + "."


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
