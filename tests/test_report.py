"""tools/report.py turns `dvc exp show --json` (DVC 3 schema) and metrics.json into markdown tables."""
import json

import report  # tools/, on sys.path through conftest


def metrics(clean, ce, aa, flagged, temperature=20):
    return {"clean_acc": clean, "robust_acc": {"pgd_softmax_ce": {"eps_0p1": ce}, "pgd_margin": {"eps_0p1": aa}},
            "autoattack_headline": aa, "worst_case_headline": aa, "cw_l2_median": None,
            "sensitivity_softmax": 1e-20, "sensitivity_logit": 3.0, "gradient_masking": flagged,
            "train_temperature": temperature}


def state(rev, name, temperature, chain, student, experiments=None, train_seconds=None):
    params = {"method": "defensive_distillation", "temperature": temperature, "chain_length": chain,
              "attack": {"headline_eps": 0.1}}
    data = {"rev": rev, "params": {"params.yaml": {"data": params}},
            "metrics": {"metrics.json": {"data": {"student": student}}}}
    if train_seconds is not None:
        data["metrics"]["timing.json"] = {"data": {"train_seconds_total": train_seconds}}
    return {"rev": rev, "name": name, "data": data, "error": None, "experiments": experiments}


def test_exp_table_has_one_row_per_experiment():
    exp = state("b" * 40, "hot-exp", 100, 0, metrics(0.85, 0.70, 0.003, True), train_seconds=639.0)
    entries = [state("a" * 40, "main", 20, 1, metrics(0.861, 0.338, 0.018, True),
                     experiments=[{"revs": [exp], "executor": None, "name": "hot-exp"}])]
    lines = report.table(entries).splitlines()
    assert len(lines) == 4
    assert lines[2] == "| main | defensive_distillation | 20 | 1 | 86.1 | 33.8 | 1.8 | 1.8 | 1.8 | n/a | 1e-20 | 3 | yes | n/a |"
    assert lines[3].startswith("| hot-exp | defensive_distillation | 100 | 0 | 85.0 | 70.0 | 0.3 |")
    assert lines[3].endswith("| 10.7 |")  # minutes of training, from timing.json


def test_models_table_follows_chain_order(tmp_path):
    m = {"student": metrics(0.8, 0.3, 0.01, True), "teacher": metrics(0.9, 0.3, 0.0, False),
         "assistant_2": metrics(0.85, 0.3, 0.0, True), "assistant_1": metrics(0.86, 0.3, 0.0, True)}
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    table = report.models_table(m, 0.1)
    assert [row.split(" | ")[0].strip("| ") for row in table.splitlines()[2:]] == \
        ["teacher", "assistant_1", "assistant_2", "student"]


def test_unfinished_experiments_are_skipped():
    running = state("c" * 40, "still-running", 100, 1, metrics(0.861, 0.338, 0.018, True))
    entries = [state("a" * 40, "main", 20, 1, metrics(0.861, 0.338, 0.018, True), experiments=[
        {"revs": [running], "executor": {"state": "running"}, "name": "still-running"}])]
    names = [row.split(" | ")[0].strip("| ") for row in report.table(entries).splitlines()[2:]]
    assert names == ["main"]


def test_commits_without_metrics_are_skipped():
    old = {"rev": "d" * 40, "name": None, "error": None, "experiments": None,
           "data": {"rev": "d" * 40, "params": {}, "metrics": {"metrics.json": {"error": {"type": "FileNotFoundError"}}}}}
    entries = [old, state("a" * 40, "main", 20, 1, metrics(0.861, 0.338, 0.018, True))]
    assert [row.split(" | ")[0].strip("| ") for row in report.table(entries).splitlines()[2:]] == ["main"]


def test_commit_filter_experiments_only_and_param_columns():
    exp = state("b" * 40, "ltd-exp", 20, 1, metrics(0.80, 0.72, 0.71, False), train_seconds=1200.0)
    other = state("e" * 40, "other", 20, 1, metrics(0.5, 0.5, 0.5, False))
    entries = [state("a" * 40, "main", 20, 1, metrics(0.861, 0.338, 0.018, True),
                     experiments=[{"revs": [exp], "executor": None, "name": "ltd-exp"}]), other]
    lines = report.table(entries, commit="aaa", experiments_only=True, param_columns=("method",)).splitlines()
    assert lines[0].startswith("| experiment | method | clean % |")
    assert [row.split(" | ")[0].strip("| ") for row in lines[2:]] == ["ltd-exp"]
    assert lines[2].endswith("| no | 20.0 |")


def test_purification_table_orders_models_and_shows_both_protocols():
    def purified(clean, paper, adaptive, purifier="cae"):
        return {**metrics(clean, adaptive, adaptive, False, temperature=1), "purifier": purifier,
                "robust_acc": {"classifier_pgd_ce": {"eps_0p1": paper}, "pgd_softmax_ce": {"eps_0p1": adaptive}},
                "paper_protocol_headline": paper, "paper_protocol_cw_acc": 0.8, "adaptive_headline": adaptive,
                "psnr_clean": 21.04, "ssim_clean": 0.812, "psnr_adversarial": 19.5, "ssim_adversarial": 0.7}
    table = report.purification_table({"student": purified(0.87, 0.55, 0.21),
                                       "purifier_adversarial": purified(0.86, 0.60, 0.25),
                                       "teacher": {**purified(0.89, 0.05, 0.05, None), "psnr_clean": None},
                                       "purifier_normal": purified(0.88, 0.30, 0.01)}, 0.1)
    rows = table.splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| teacher (no purifier)", "| purifier_normal",
                                                 "| purifier_adversarial", "| student"]
    cells = rows[-1].strip("| ").split(" | ")
    header = table.splitlines()[0].strip("| ").split(" | ")
    row = dict(zip(header, cells))
    assert row["paper: PGD-CE %"] == "55.0" and row["adaptive: PGD-CE %"] == "21.0" and row["paper: FGSM %"] == "n/a"
    assert row["PSNR clean"] == "21.0" and row["SSIM clean"] == "0.812"
    assert dict(zip(header, rows[0].strip("| ").split(" | ")))["PSNR clean"] == "n/a"


def bench_result(train_speedup: float, fraction: float, identical: bool = True) -> dict:
    attack = {"engine_images_per_s": 900.0, "reference_images_per_s": 200.0, "speedup": 4.5,
              "engine_robust_acc": 0.01, "reference_robust_acc": 0.0}
    ev = {"cascade_seconds": 10.0, "full_seconds": 30.0, "speedup": 3.0, "identical_worst_case": identical}
    return {"device": "cpu", "cores": 2, "threads": 2, "torch": "2.x", "train_speedup": train_speedup,
            "train": {"images": 100, "batch_size": 10, "engine_images_per_s": 1200.0,
                      "reference_images_per_s": {"workers_0": 1000.0, "workers_2": 800.0},
                      "reference_loading_only_images_per_s": 9000.0},
            "attack": {"steps": 10, "eps": 0.1, "natural": attack, "distilled": attack, "robust": {**attack, "speedup": 1.1}},
            "eval": {"points": 400, "natural": ev, "distilled": ev, "robust": {**ev, "speedup": 1.5}},
            "pipeline": {"stages": [{"stage": "prepare", "seconds": 5.0, "peak_rss_mib": 300},
                                    {"stage": "attack", "seconds": 50.0, "peak_rss_mib": 900}],
                         "full_repro_seconds": 55.0, "attack_only_rerun_seconds": 55.0 * fraction,
                         "attack_only_fraction": fraction, "attack_only_rerun_stages": ["attack", "metrics"],
                         "attack_only_rerun_peak_rss_mib": 950, "attack_only_rerun_command": "dvc repro",
                         "exp_run": {"command": "dvc exp run --temp", "seconds": 20.0, "fraction": 20.0 / 55.0,
                                     "stages": ["attack", "metrics"], "peak_rss_mib": 960}}}


def test_bench_table_marks_each_target():
    text = report.bench_table(bench_result(train_speedup=1.2, fraction=0.3))
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("|")}
    train_row = next(v for k, v in rows.items() if k.startswith("training"))
    assert "1.20" in train_row and train_row.endswith("**no** |")
    pgd_natural = next(v for k, v in rows.items() if k.startswith("PGD") and "natural" in k)
    assert pgd_natural.endswith("| 4.50 | ≥ 1.3 | yes |")
    assert "| **55.0** | 900 |" in rows["**full default `dvc repro`**"]
    assert list(rows).index("prepare") < list(rows).index("attack")      # the pipeline's order, not sorted
    assert "Attack-only rerun (`dvc repro`): 30.0% of the full run (target ≤ 25%: **no**); with `dvc exp run --temp`: 36.4%." in text
    assert "| 20.0 | 960 |" in rows["`dvc exp run --temp` after an attack-only change (reran: attack, metrics)"]
    old = bench_result(train_speedup=1.6, fraction=0.3)  # results/bench_history: only the exp-run measure, unnamed
    del old["pipeline"]["attack_only_rerun_command"], old["pipeline"]["exp_run"]
    assert "Attack-only rerun (`dvc exp run --temp`): 30.0% of the full run (target ≤ 25%: **no**)." in report.bench_table(old)
    text = report.bench_table(bench_result(train_speedup=1.6, fraction=0.2, identical=False))
    assert "≥ 1.5 | yes |" in text and "25%: yes" in text
    assert "worst case identical: NO" in text  # a cascade that changes the result never counts as met
    suite_natural = next(line for line in text.splitlines() if line.startswith("| attack suite, natural"))
    assert "**no**" in suite_natural


def test_bench_table_names_the_processor():
    result = {**bench_result(train_speedup=1.6, fraction=0.2), "cpu": "AMD EPYC (family 25, model 17)",
              "cpu_flags": ["avx2", "avx512f"]}
    first = report.bench_table(result).splitlines()[0]
    assert first == ("Device: cpu, AMD EPYC (family 25, model 17) (flags: avx2, avx512f), 2 cores, 2 threads, "
                     "torch 2.x.")
    # Results written before the processor was recorded still render.
    assert report.bench_table(bench_result(1.6, 0.2)).splitlines()[0] == "Device: cpu, 2 cores, 2 threads, torch 2.x."


def test_bench_table_shows_the_training_floor_and_the_suite_breakdown():
    result = bench_result(train_speedup=1.6, fraction=0.2)
    assert "bare training loop" not in report.bench_table(result)  # older runs have neither: still render
    assert "Seconds per part" not in report.bench_table(result)
    result["train"].update(bare_loop_images_per_s=1250.4, bare_loop_bf16_images_per_s=2100.0)
    for label, full_aa in (("natural", 12.0), ("distilled", 11.0), ("robust", 9.0)):
        result["eval"][label] = {**result["eval"][label],
                                 "full_parts_seconds": {"autoattack": full_aa, "clean": 1.5, "square": 3.0},
                                 "cascade_parts_seconds": {"autoattack": 2.0, "clean": 1.5, "square": 0.5}}
    text = report.bench_table(result)
    assert ("A bare training loop over pre-cast channels_last tensors (no data path, no validation): 1250 images/s "
            "in fp32, 2100 under bf16 autocast.") in text
    assert "the engine in fp32" not in text  # runs before the engine's precision was recorded
    result["train"].update(engine_precision="bf16-autocast", engine_fp32_images_per_s=1180.2, speedup_fp32_engine=1.31)
    lines = report.bench_table(result).splitlines()
    assert lines[4].startswith(f"| training, images/s (100 images, batch 10) | "
                               f"{result['train']['engine_images_per_s']:.0f} (bf16-autocast) | DataLoader: ")
    assert lines[5].startswith("| training, the engine in fp32 (`engine.bf16: false`), images/s | 1180 | DataLoader: ")
    assert lines[5].endswith(" | 1.31 | – | – |")
    lines = text.splitlines()
    head = lines.index("| part | natural model | distilled model | robust model |")
    assert lines[head + 2:head + 5] == ["| autoattack | 12.0 / 2.0 | 11.0 / 2.0 | 9.0 / 2.0 |",  # costliest first
                                        "| square | 3.0 / 0.5 | 3.0 / 0.5 | 3.0 / 0.5 |",
                                        "| clean | 1.5 / 1.5 | 1.5 / 1.5 | 1.5 / 1.5 |"]


def test_bench_table_shows_the_default_runs_attack_stage_and_the_attacked_models():
    result = bench_result(train_speedup=1.6, fraction=0.2)
    assert "default run's attack stage" not in report.bench_table(result)  # older runs: still render
    result["pipeline"]["attack_stage"] = {"command": "python src/attack.py", "models": ["teacher", "student"],
                                          "cascade_seconds": 40.2, "full_seconds": 101.7, "speedup": 2.53,
                                          "identical_worst_case": False}
    result["attacked_models"] = {
        "robust": {"images": 12800, "epochs": 2, "schedule": "PGD-AT"},
        "natural": {"images": 55000, "epochs": 3, "schedule": "params.yaml teacher"},
        "distilled": {"images": 55000, "epochs": [3, 2], "schedule": "teacher, then student"}}
    text = report.bench_table(result)
    row = next(line for line in text.splitlines() if line.startswith("| default run's attack stage"))
    assert row == ("| default run's attack stage (`python src/attack.py`: teacher, student), seconds | cascade: 40 | "
                   "everything on every point: 102 | 2.53 | – | – (worst case identical: NO) |")
    assert ("Attacked models: natural: params.yaml teacher, 3 epoch(s) on 55,000 images; distilled: teacher, then "
            "student, 3 + 2 epoch(s) on 55,000 images; robust: PGD-AT, 2 epoch(s) on 12,800 images.") in text


def test_an_old_metrics_file_still_renders_with_a_note_on_the_missing_keys(tmp_path, capsys):
    """metrics.json from before the headline file: prose masking_reasons, a true/false flag, no intervals."""
    old = {"student": {**metrics(0.8, 0.3, 0.01, True), "masking_reasons": "ε=0.1: autoattack leaves 1.0% but ..."}}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(old))
    report.main(["--models", str(path), "--headline-eps", "0.1"])
    out, err = capsys.readouterr()
    assert err.startswith(f"note: {path} predates the current metrics schema; missing keys: clean_acc_ci_low, ")
    assert "masking_codes" in err and "old `masking_reasons` key" in err and len(err.splitlines()) == 1
    assert out.splitlines()[2].endswith("| yes |")
    new = {"student": {**metrics(0.8, 0.3, 0.01, 1), **dict.fromkeys(report.CURRENT_KEYS, 0.0), "masking_codes": ""}}
    path.write_text(json.dumps(new))
    report.main(["--models", str(path), "--headline-eps", "0.1"])
    out, err = capsys.readouterr()
    assert err == "" and out.splitlines()[2].endswith("| yes |")  # the 0/1 flag reads as the old true/false


def test_exp_table_reads_the_full_metrics_of_runs_that_declare_only_the_headline(monkeypatch):
    """From headline.json on, `dvc exp show --json` carries headline.json; metrics.json comes from git."""
    entry = state("c" * 40, "new", 20, 1, None)
    entry["data"]["metrics"] = {"headline.json": {"data": {"clean": 0.9, "worst": 0.01, "aa": 0.02, "masking": 0}}}
    shown = {}

    def git_show(cmd, **kw):
        shown.setdefault("cmds", []).append(cmd)
        if cmd[-1].endswith(":timing.json"):
            return type("R", (), {"stdout": json.dumps({"train_seconds_total": 90.0})})()
        return type("R", (), {"stdout": json.dumps({"student": metrics(0.9, 0.25, 0.02, 0)})})()

    monkeypatch.setattr(report.subprocess, "run", git_show)
    row = report.table([entry]).splitlines()[2]
    assert shown["cmds"] == [["git", "show", f"{'c' * 40}:{name}"] for name in ("metrics.json", "timing.json")]
    assert row.endswith("| 1.5 |")  # training minutes, from the committed timing.json
    assert row.startswith("| new | defensive_distillation | 20 | 1 | 90.0 | 25.0 | 2.0 | 2.0 | 2.0 |") and "| no |" in row

    def no_git(cmd, **kw):
        raise report.subprocess.CalledProcessError(128, cmd)

    monkeypatch.setattr(report.subprocess, "run", no_git)  # e.g. not in the repository: the headline's columns
    row = report.table([entry]).splitlines()[2]
    assert row.startswith("| new | defensive_distillation | 20 | 1 | 90.0 | n/a | n/a | 2.0 | 1.0 | n/a |")


def test_every_accuracy_shows_its_interval_where_metrics_json_has_it():
    m = {**metrics(0.8, 0.3, 0.01, 0), "clean_acc_ci_low": 0.7921, "clean_acc_ci_high": 0.8076,
         "worst_case_headline_ci_low": 0.0034, "worst_case_headline_ci_high": 0.029,
         "autoattack_headline_ci_low": 0.0034, "autoattack_headline_ci_high": 0.029,
         "robust_acc_headline_ci_low": {"pgd_softmax_ce": 0.2575, "pgd_margin": 0.0034},
         "robust_acc_headline_ci_high": {"pgd_softmax_ce": 0.3462, "pgd_margin": 0.029}}
    row = report.models_table({"student": m}, 0.1).splitlines()[2]
    assert row.startswith("| student | 20 | 80.0 [79.2, 80.8] | 30.0 [25.8, 34.6] | 1.0 [0.3, 2.9] | "
                          "1.0 [0.3, 2.9] | 1.0 [0.3, 2.9] | n/a |")
    exp_row = report.table([state("a" * 40, "main", 20, 1, m)]).splitlines()[2]
    assert "| 80.0 [79.2, 80.8] | 30.0 [25.8, 34.6] |" in exp_row
    purified = {**m, "purifier": "cae", "paper_protocol_headline": 0.5, "paper_protocol_headline_ci_low": 0.4,
                "paper_protocol_headline_ci_high": 0.6, "adaptive_headline": 0.2, "adaptive_headline_ci_low": 0.15,
                "adaptive_headline_ci_high": 0.25}
    cells = report.purification_table({"student": purified}, 0.1).splitlines()[2].strip("| ").split(" | ")
    assert cells[1] == "80.0 [79.2, 80.8]" and cells[5] == "50.0 [40.0, 60.0]" and cells[9] == "20.0 [15.0, 25.0]"
    assert cells[7] == "30.0 [25.8, 34.6]" and cells[10] == "1.0 [0.3, 2.9]"


def test_bench_table_shows_the_robust_training_epoch_in_wall_and_cpu_seconds():
    result = bench_result(train_speedup=1.6, fraction=0.2)
    assert "PGD-AT epoch" not in report.bench_table(result)  # older runs have none: still render
    result["robust_train"] = {
        "images": 3200, "batch_size": 128, "repeats": 5, "train_precision": "bf16-autocast",
        "attack_precision": "bf16-autocast", "train_attack": {"eps": 0.1, "steps": 3, "step_size": 0.05,
                                                              "mode": "eval", "bf16": True},
        "seconds": 10.0, "fp32_attack_seconds": 21.0, "speedup": 2.1,
        "cpu_seconds": 2.6, "fp32_attack_cpu_seconds": 3.7, "cpu_speedup": 1.42,
        "load_average_1min": [15.0, 16.0], "commit": "abc1234", "cpu": "Another CPU", "threads": 1,
        "command": "OMP_NUM_THREADS=1 python tools/bench.py --only robust_train"}
    text = report.bench_table(result)
    rows = [line for line in text.splitlines() if line.startswith("| PGD-AT epoch")]
    assert len(rows) == 2
    assert rows[0] == ("| PGD-AT epoch (3200 images, batch 128, PGD-3 ε=0.1; training bf16-autocast), seconds | "
                       "inner attack bf16-autocast: 10.0 | inner attack fp32: 21.0 | 2.10 | ≥ 1.5 | yes |")
    assert rows[1].startswith("| PGD-AT epoch (3200 images, batch 128, PGD-3 ε=0.1; training bf16-autocast), CPU seconds")
    assert rows[1].endswith("| 1.42 | ≥ 1.5 | **no** |")  # each measure judged on its own
    assert ("The PGD-AT epoch rows: 5 alternating runs per side, medians from `OMP_NUM_THREADS=1 python tools/bench.py "
            "--only robust_train` at commit `abc1234` on Another CPU with 1 thread(s); 1-minute load average 15.0 "
            "before, 16.0 after.") in text


def test_bench_table_of_a_robust_train_only_run_on_a_gpu():
    """`bench.py --only robust_train --json NEW.json` on a GPU: the file holds that part alone, and the device line
    names the GPU (the host CPU is not what the timings measure)."""
    robust = {"images": 12800, "batch_size": 128, "repeats": 3, "train_precision": "bf16-autocast",
              "attack_precision": "bf16-autocast", "seconds": 1.44, "fp32_attack_seconds": 1.41, "speedup": 0.981,
              "train_attack": {"eps": 0.1, "steps": 3, "step_size": 0.05, "mode": "eval", "bf16": True},
              "command": "python tools/bench.py --only robust_train --json x.json", "commit": "abc1234",
              "cpu": "Xeon", "threads": 16, "load_average_1min": [0.3, 2.1]}
    result = {"device": "cuda", "gpu": "NVIDIA H200", "cpu": "Xeon", "cpu_flags": ["avx2"], "cores": 16,
              "threads": 16, "torch": "2.x", "robust_train": robust, "robust_train_speedup": 0.981}
    lines = report.bench_table(result).splitlines()
    assert lines[0] == "Device: cuda (NVIDIA H200), host Xeon (flags: avx2), 16 cores, 16 threads, torch 2.x."
    rows = [line for line in lines if line.startswith("| PGD-AT epoch")]
    assert len(rows) == 1  # no CPU-seconds row: that run recorded none
    assert rows[0].endswith("| inner attack bf16-autocast: 1.4 | inner attack fp32: 1.4 | 0.98 | ≥ 1.5 | **no** |")
    assert lines[-1] == ("The PGD-AT epoch rows: 3 alternating runs per side, medians from `python tools/bench.py "
                         "--only robust_train --json x.json` at commit `abc1234`; 1-minute load average 0.3 before, "
                         "2.1 after.")
