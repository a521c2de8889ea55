"""tools/study.py: study files are checked before anything is queued; the report and its verdicts come from the
collected files alone; `report --check` catches an edited table and stale code; and (slow) a tiny study runs end to
end through DVC's queue: run, killed, resumed, collected, reported, checked."""
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import study  # tools/, on sys.path through conftest
from robustkd.outcomes import encode_bits, points_sha256
from robustkd.params import read_yaml
from tiny_repo import env, make_tiny_repo, run

ROOT = Path(__file__).resolve().parents[1]
STUDY_PY = ROOT / "tools" / "study.py"


@pytest.fixture
def repo(tmp_path):
    """A folder with the repository's params.yaml, dvc.lock and presets, and an empty results page."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(ROOT / "dvc.lock", tmp_path / "dvc.lock")
    shutil.copytree(ROOT / "src" / "presets", tmp_path / "src" / "presets")
    (tmp_path / "studies").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("# Results\n")
    return tmp_path


def write_study(repo: Path, name: str, spec: dict) -> None:
    (repo / "studies" / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def two_arms(**changes) -> dict:
    spec = {"claim": "T = 100 beats T = 20.", "seeds": [0, 1, 2], "baseline": "t20",
            "arms": {"t20": {"role": "baseline", "overrides": {"temperature": 20}},
                     "t100": {"overrides": {"temperature": 100}}}}
    spec.update(changes)
    return spec


def load_error(repo: Path, spec: dict) -> str:
    write_study(repo, "s", spec)
    with pytest.raises(study.StudyError) as err:
        study.load_study("s", repo)
    return str(err.value)


# --- the study file --------------------------------------------------------------------------------------------
def test_valid_study_loads_with_params_of_each_arm(repo):
    write_study(repo, "s", two_arms(base={"attack.autoattack.version": "standard"}))
    s = study.load_study("s", repo)
    assert [a.name for a in s.arms.values()] == ["t20", "t100"]
    assert s.arms["t100"].baseline == "t20" and s.arms["t20"].baseline is None
    p = s.arms["t100"].expected_params(2)
    assert (p["seed"], p["temperature"], p["attack"]["autoattack"]["version"]) == (2, 100, "standard")
    assert [(a.name, k) for a, k in s.pairs()] == [("t20", 0), ("t20", 1), ("t20", 2), ("t100", 0), ("t100", 1),
                                                   ("t100", 2)]


def test_unknown_params_key_names_file_arm_key_and_the_fix(repo):
    spec = two_arms()
    spec["arms"]["t100"]["overrides"] = {"temperatur": 100}
    spec["arms"]["t20"]["overrides"] = {"temperature": 20, "attack.autoattak.version": "standard"}
    msg = load_error(repo, spec)
    assert "studies/s.yaml" in msg and "`arms.t100`" in msg and "`temperatur`: unknown key" in msg
    assert "did you mean `temperature`?" in msg
    assert "`attack.autoattak`: unknown key; did you mean `attack.autoattack`?" in msg  # nested, both at once
    assert "Fix the key or value in studies/s.yaml" in msg


def test_bad_value_is_refused_with_the_schema_message(repo):
    spec = two_arms()
    spec["arms"]["t100"]["overrides"] = {"temperature": -1}
    assert "`temperature` = -1: out of range" in load_error(repo, spec)


def test_no_seeds_and_arm_without_overrides_are_refused(repo):
    spec = two_arms()
    del spec["seeds"]
    spec["arms"]["t100"] = {"role": "compared"}
    msg = load_error(repo, spec)
    assert "`seeds`: missing; add e.g. `seeds: [0, 1, 2]`" in msg
    assert "`arms.t100`: no overrides; add `overrides: {key: value}`" in msg
    assert load_error(repo, two_arms(seeds=[])).count("`seeds` = []: must be a non-empty list") == 1


def test_unknown_baseline_arm_and_seed_override_are_refused(repo):
    spec = two_arms(baseline="t2")
    spec["arms"]["t100"]["overrides"]["seed"] = 4
    msg = load_error(repo, spec)
    assert "`baseline`: unknown arm `t2`; did you mean `t20`?" in msg
    assert "`seed`: set by the study's `seeds`" in msg
    msg = load_error(repo, two_arms(baseline={"best_of": ["t20", "t50"]}))
    assert "unknown arm `t50`" in msg


def test_unknown_study_key_has_did_you_mean(repo):
    spec = two_arms()
    spec["baselin"] = spec.pop("baseline")
    msg = load_error(repo, spec)
    assert "`baselin`: unknown key; did you mean `baseline`?" in msg
    assert "compared arm without a baseline" in msg


def test_the_studies_are_well_formed_and_their_params_valid():
    """Structure (roles, seeds, baselines) and every arm's params against the schema, as `run` checks them."""
    names = study.all_studies(ROOT)
    assert names == ["chain", "darht", "methods", "precision", "purification"]
    for name in names:
        s = study.load_study(name, ROOT)
        assert all(a.role != "compared" or len(a.seeds) >= 3 for a in s.arms.values())
        for arm in s.arms.values():
            assert dict(arm.overrides).get("attack.autoattack.version") == "standard"
    chain = study.load_study("chain", ROOT)  # every key it uses exists today
    assert {a.baseline for a in chain.arms.values() if a.role == "compared"} == {"t20_c0", "t100_c0"}


def test_run_refuses_an_unknown_arm_or_an_empty_selection_before_touching_the_queue(repo):
    write_study(repo, "s", two_arms())
    s = study.load_study("s", repo)
    with pytest.raises(study.StudyError, match=r"--arms: no arm `t10` in .*did you mean `t100`\?"):
        study.cmd_run(s, repo, 1, 1, False, 1.0, arms=["t10"])
    with pytest.raises(study.StudyError, match="select no"):
        study.cmd_run(s, repo, 1, 1, False, 1.0, arms=["t20"], seeds=[7])


def test_only_dvcs_parallel_worker_race_counts_as_transient(tmp_path):
    """The line a CI run's failed experiment ended with (two workers, the same marker stage): retried once. A
    failure of the experiment's own stage is not."""
    log = tmp_path / "run.out"
    log.write_text("Running stage 'darht_teacher@vit':\nERROR: failed to reproduce 'darht_teacher@vit': [Errno 2] No "
                   "such file or directory: '/tmp/pytest-of-root/pytest-201/scale_out0/repo/.dvc/cache/runs/cd/"
                   "cd7c53ea48829ca695d018bcfcb7b175df0811954902c2391ffc9ea003a8edfe/.m0Rt9huvwMtzVORB18NTRA.tmp'\n")
    assert study.transient_failure(log)
    log.write_text("ERROR: failed to reproduce 'teacher': [Errno 2] No such file or directory: 'data/prepared/x.pt'\n")
    assert not study.transient_failure(log)
    log.write_text("ERROR: failed to reproduce 'student': CUDA out of memory\n")
    assert not study.transient_failure(log)
    assert not study.transient_failure(tmp_path / "no-such.out")


def test_a_run_no_study_py_watched_is_timed_from_its_executor_log(tmp_path):
    run_dir = tmp_path / ".dvc" / "tmp" / "exps" / "run"
    for rev, name in [("aaa", "s-a-s0"), ("bbb", "s-b-s0")]:
        (run_dir / rev).mkdir(parents=True)
        (run_dir / rev / f"{rev}.run").write_text(json.dumps({"name": name, "status": 2}))
        (run_dir / rev / f"{rev}.out").write_text("Reproducing experiment\n")
    born = float(subprocess.run(["stat", "-c", "%W", str(run_dir / "aaa" / "aaa.out")], capture_output=True,
                                text=True).stdout or 0)
    if born <= 0:
        pytest.skip("this filesystem does not record file creation times")
    assert study.log_started(tmp_path, "s-a-s0", born + 60) == born
    assert study.log_started(tmp_path, "s-a-s0", born - 60) is None  # began after that run finished: another run
    assert study.log_started(tmp_path, "s-c-s0", born + 60) is None


def test_dvc_lock_held_by_another_command_is_waited_for(monkeypatch, tmp_path):
    """Two `study.py run` at once: one's `dvc status` meets the lock the other's `dvc exp run --queue` holds. It waits
    and retries; any other failure, or a lock held past the wait, is returned at once / at the deadline."""
    calls = []
    locked = subprocess.CompletedProcess([], 1, "", "ERROR: Unable to acquire lock. Most likely another DVC process")

    def fake_run(args, **kwargs):
        calls.append(args)
        return locked if len(calls) < 3 else subprocess.CompletedProcess(args, 0, "{}", "")

    monkeypatch.setattr(study.subprocess, "run", fake_run)
    monkeypatch.setattr(study, "LOCK_RETRY_S", 0.01)
    assert study.run_dvc(["dvc", "status"], tmp_path).returncode == 0 and len(calls) == 3
    calls.clear()
    monkeypatch.setattr(study.subprocess, "run", lambda args, **kw: (calls.append(args), locked)[1])
    assert study.run_dvc(["dvc", "status"], tmp_path, wait_s=0.05).returncode == 1 and len(calls) >= 2
    calls.clear()
    other = subprocess.CompletedProcess([], 1, "", "ERROR: bad params")
    monkeypatch.setattr(study.subprocess, "run", lambda args, **kw: (calls.append(args), other)[1])
    assert study.run_dvc(["dvc", "status"], tmp_path).returncode == 1 and len(calls) == 1


def test_set_params_are_what_dvc_applies(repo, tmp_path):
    """The `-S` arguments, applied by DVC's own override code, give exactly the params the study validated: values
    of every type, a preset that adds pool entries (`++`), and an override after the preset."""
    from dvc.utils.hydra import apply_overrides

    write_study(repo, "s", {
        "claim": "c", "seeds": [3], "baseline": "homo",
        "base": {"attack.autoattack.version": "standard", "attack.n_points": None, "attack.eps": [0.1, 0.3],
                 "attack.headline_eps": 0.1, "attack.autoattack.eps": [0.1], "train_attack.step_size_ratio": 1e-3},
        "arms": {"homo": {"role": "baseline", "preset": "src/presets/darht_homogeneous.yaml",
                          "overrides": {"darht.pool.papernot_3.seed": 9, "engine.bf16": False}},
                 "het": {"overrides": {"method": "darht", "training.arch": "lenet"}}}})
    s = study.load_study("s", repo)
    for arm in s.arms.values():
        args = study.set_params_args(arm, 3, s.base_params)
        target = tmp_path / f"{arm.name}.yaml"
        shutil.copy(repo / "params.yaml", target)
        apply_overrides(str(target), args)
        assert read_yaml(target.read_text()) == arm.expected_params(3), args
    homo = study.set_params_args(s.arms["homo"], 3, s.base_params)
    assert "++darht.pool.papernot_2={use:true,arch:papernot_cnn,width:mnist,training:pgd_at,seed:2}" in homo
    assert "darht.pool.resnet.use=false" in homo and "attack.n_points=null" in homo


# --- the report from hand-made result folders --------------------------------------------------------------------
N_TEST, POINTS = 60, np.arange(0, 60, 3)  # 20 attacked points


def outcomes(worst: np.ndarray, clean: np.ndarray) -> dict:
    mask = np.zeros(N_TEST, dtype=bool)
    mask[POINTS] = True
    return {"schema": "robustkd-outcomes/1", "dataset": "fashion_mnist", "n_test": N_TEST, "test_sha256": "t",
            "eps": [0.1], "headline_eps": 0.1,
            "attack_points": {"n": len(POINTS), "sha256": points_sha256(POINTS), "bits": encode_bits(mask)},
            "models": {"student": {"clean_correct": encode_bits(clean), "worst_case": {"eps_0p1": encode_bits(worst)},
                                   "robust": {}, "autoattack_version": "standard"}}}


def fresh_deps(repo: Path, params: dict) -> dict:
    head = study.head_lock_deps(repo)
    return {"files": dict(head["files"]),
            "params": {k: study.dotted_get(params, k) for k in head["params"]}}


def add_run(repo: Path, s, arm: str, seed: int, n_robust: int, wall_s: float = 60.0) -> Path:
    """A collected run whose student is robust on the first ``n_robust`` attacked points."""
    worst = np.arange(len(POINTS)) < n_robust
    clean = np.ones(N_TEST, dtype=bool)
    folder = study.run_folder(repo, s.name, arm, seed)
    folder.mkdir(parents=True)
    acc = n_robust / len(POINTS)
    flagged = n_robust % 2  # odd counts: flagged, so the report's count of flags is checked
    files = {"metrics.json": {"student": {"autoattack_version": "standard", "gradient_masking": flagged,
                                          "masking_codes": "ce_gap" if flagged else "", "cw_l2_median": 1.5}},
             "headline.json": {"clean": 1.0, "worst": acc, "masking": flagged},  # the student's, flat (as metrics.py)
             "timing.json": {"train_seconds_total": 1.0},
             "outcomes.json": outcomes(worst, clean),
             "deps.json": fresh_deps(repo, s.arms[arm].expected_params(seed)),
             "run.json": {"experiment": f"{s.name}-{arm}-s{seed}", "baseline_commit": "abcdef0123", "wall_s": wall_s,
                          "threads": 2}}
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content))
    (folder / "params.yaml").write_text(yaml.safe_dump(s.arms[arm].expected_params(seed)))
    return folder


def report_repo(repo: Path, robust: dict[str, list[int]], **spec_changes) -> str:
    spec = {"claim": "B beats A.", "seeds": [0, 1, 2], "baseline": "a", "report_metrics": ["cw_l2_median"],
            "arms": {"a": {"role": "baseline", "overrides": {"temperature": 20}},
                     "b": {"overrides": {"temperature": 100}}}}
    spec.update(spec_changes)
    write_study(repo, "s", spec)
    s = study.load_study("s", repo)
    for arm, counts in robust.items():
        for seed, n in zip(s.arms[arm].seeds, counts):
            add_run(repo, s, arm, seed, n)
    return study.section(s, repo, study.head_lock_deps(repo))


def verdict_row(text: str, arm: str = "b") -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {arm} | ") and "McNemar" not in line
                and " s0: " in line)


def verdict_cell(row: str) -> str:
    return row.split("|")[-3].strip()  # the last column is the family-wise one


def test_report_held(repo):
    text = report_repo(repo, {"a": [5, 6, 5], "b": [15, 17, 16]})
    row = verdict_row(text)
    assert verdict_cell(row) == "held"
    assert "s0: +50.0 [" in row and "p < 0.001" in row
    assert "| a | baseline | 0, 1, 2 | 100.0 ± 0.0 [100.0, 100.0] | 26.7 ± 2.9 [" in text
    # 3 runs x 60 s x 2 threads; flags from metrics.json (odd robust counts are flagged: a 5, 6, 5 and b 15, 17, 16)
    assert "AutoAttack" in text and text.count("| standard | 20 | 2 of 3 (ce_gap) | 6 |") == 2
    assert "Cost: 12 CPU minutes" in text and "| 1.5 ± 0 [1.5, 1.5] |" in text
    # the setup: what every arm shares (the budget, from params.yaml) and what each arm changes
    assert "Every arm runs HEAD's params.yaml with no overrides; the budget: dataset fashion_mnist;" in text
    assert "- `a` (baseline, 3 seeds): temperature=20\n- `b` (compared, 3 seeds): temperature=100\n" in text


def test_summary_row_comes_from_the_same_files_as_the_report(repo):
    assert "| not run yet |" in study.summary(repo) or not study.all_studies(repo)
    text = report_repo(repo, {"a": [5, 6, 5], "b": [15, 17, 16]})
    rows = [line for line in study.summary(repo).splitlines() if line.startswith("| [s](")]
    # differences 50, 55, 55 points: mean 53.3, t(2) interval ± 4.303 × 2.887 / √3
    # one compared arm: the family-wise interval is the 95% one
    assert rows == ["| [s](docs/results.md#study-s) | B beats A. | b vs a | 6 of 6 | +53.3 [+46.2, +60.5] | held | "
                    "[+46.2, +60.5] held |"]
    assert verdict_row(text).endswith("| +53.3 [+46.2, +60.5] | held | [+46.2, +60.5] held |")
    shutil.rmtree(repo / "results" / "studies" / "s" / "b")
    row = next(line for line in study.summary(repo).splitlines() if line.startswith("| [s]("))
    assert row.endswith("| 3 of 6 | n/a | not decided: no paired seeds yet | n/a |")


def test_report_did_not_hold(repo):
    assert verdict_cell(verdict_row(report_repo(repo, {"a": [15, 16, 15], "b": [5, 6, 4]}))) == "did not hold"


def test_report_undecided_when_the_interval_over_seeds_includes_zero(repo):
    # every seed's paired difference is large, but in both directions: the seed-level interval decides
    text = report_repo(repo, {"a": [5, 15, 10], "b": [15, 5, 11]})
    row = verdict_row(text)
    assert verdict_cell(row) == "undecided at this budget"
    assert "s0: +50.0" in row and "s1: -50.0" in row


def test_report_best_of_picks_the_best_mean_and_fewer_than_3_seeds_decide_nothing(repo):
    spec = {"baseline": {"best_of": ["a", "c"]},
            "arms": {"a": {"role": "baseline", "overrides": {"temperature": 20}},
                     "c": {"role": "baseline", "overrides": {"temperature": 50}},
                     "b": {"overrides": {"temperature": 100}},
                     "ctx": {"role": "context", "seeds": [0], "overrides": {"method": "natural"}}}}
    text = report_repo(repo, {"a": [5, 5, 5], "c": [10, 11, 10], "b": [12, 13, 12], "ctx": [3]}, **spec)
    row = verdict_row(text)
    assert row.startswith("| b | c | ")
    assert "Baseline: best of a, c by mean worst-case accuracy (a 25.0, c 51.7)." in text
    assert "| ctx | context | 0 | 100.0 (1 seed) | 15.0 (1 seed) |" in text
    one_seed = report_repo(repo, {}, seeds=[0])  # the same files, seed 0 only: no interval over seeds
    assert verdict_row(one_seed).endswith("(1 seed: no interval over seeds) | not decided: 1 paired seed, a verdict "
                                          "needs 3 | n/a |")
    # two seeds give an interval, here wholly above 0, but a claim rests on 3 seeds: no verdict word yet
    two_seeds = report_repo(repo, {}, seeds=[0, 1])
    assert verdict_row(two_seeds).endswith("| +37.5 [+5.7, +69.3] | not decided: 2 paired seeds, a verdict needs 3 | "
                                           "[+5.7, +69.3] not decided: 2 paired seeds, a verdict needs 3 |")


def test_several_compared_arms_get_a_family_wise_interval_and_verdict(repo):
    spec = {"arms": {"a": {"role": "baseline", "overrides": {"temperature": 20}},
                     "b": {"overrides": {"temperature": 100}},
                     "c": {"overrides": {"temperature": 50}}}}
    text = report_repo(repo, {"a": [5, 6, 5], "b": [15, 17, 16], "c": [7, 8, 6]}, **spec)
    # b - a: 50, 55, 55 points; at 1 - 0.05 / 2 = 97.5%, t(0.9875, 2) = 6.205: 53.3 ± 6.205 × 2.887 / √3
    assert verdict_row(text, "b").endswith("| +53.3 [+46.2, +60.5] | held | [+43.0, +63.7] held |")
    # c - a: 10, 10, 5 points: held at 95%, but not once both compared arms are accounted for
    assert verdict_row(text, "c").endswith("| +8.3 [+1.2, +15.5] | held | [-2.0, +18.7] undecided at this budget |")
    assert "With 2 compared arms" in text and "97.50% (Bonferroni)" in text


def test_report_without_runs_says_so_without_numbers(repo):
    write_study(repo, "s", two_arms())
    text = study.section(study.load_study("s", repo), repo, study.head_lock_deps(repo))
    assert "No runs collected yet (0 of 6 arm × seed runs): no numbers." in text
    assert "|" not in text


def test_costs_measure_each_method_and_estimate_what_each_study_has_left(repo):
    report_repo(repo, {"a": [5, 6, 5]})  # arm a: 3 runs of 60 s at 2 threads, 2 CPU minutes each; arm b: none yet
    # a second study: `same` has arm a's params (shared, not rerun), `other` a method never measured
    write_study(repo, "t", {"claim": "x", "seeds": [0, 1], "baseline": "same",
                            "arms": {"same": {"role": "baseline", "overrides": {"temperature": 20}},
                                     "other": {"overrides": {"method": "natural"}}}})
    text = study.costs(repo)
    method = study.load_study("s", repo).arms["a"].params["method"]
    assert method != "natural"
    assert f"| {method} | 3 (s/a) | 2 (2-2) | 0.0 | 2 | 20 | standard |" in text
    assert "| s | 3 of 6 | 6 | 3 | 0 | 6 | 0.1 | no |" in text  # arm b: its method's median run, 3 × 2 minutes
    assert "| t | 0 of 4 | 0 | 4 | 2 | 0 + runs of natural (none measured yet) | 0.0 or more | unknown |" in text
    assert "| of which shared from another study |" in text
    # a run study t shared from s/a (run.json's shared_from) cost t nothing and is left out of the method's row
    folder = add_run(repo, study.load_study("t", repo), "same", 0, 5, wall_s=0.0)
    (folder / "run.json").write_text(json.dumps({**json.loads((folder / "run.json").read_text()),
                                                  "shared_from": "results/studies/s/a/seed-0"}))
    text = study.costs(repo)
    assert f"| {method} | 3 (s/a) | 2 (2-2) |" in text
    assert "| t | 1 of 4 | 0 | 3 | 1 |" in text
    shutil.rmtree(repo / "results" / "studies" / "t")
    run_json = repo / "results" / "studies" / "s" / "a" / "seed-0" / "run.json"
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "wall_s": 6 * 3600.0, "threads": 1}))
    assert "| s | 3 of 6 | 364 | 3 | 0 | 6 | 3.1 | no |" in study.costs(repo)
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "wall_s": 13 * 3600.0}))
    assert "| over the cost rule |" in text and "| 6.6 | yes |" in study.costs(repo)


def test_a_pair_with_another_studys_params_is_shared_not_rerun(repo):
    report_repo(repo, {"a": [5, 6, 5]})
    write_study(repo, "t", {"claim": "x", "seeds": [0, 1], "baseline": "same",
                            "arms": {"same": {"role": "baseline", "overrides": {"temperature": 20}},
                                     "other": {"overrides": {"temperature": 100, "method": "natural"}}}})
    t, head = study.load_study("t", repo), study.head_lock_deps(repo)
    assert study.identical_run(t, t.arms["other"], 0, repo, head) is None
    source = study.identical_run(t, t.arms["same"], 1, repo, head)
    assert source.folder == repo / "results" / "studies" / "s" / "a" / "seed-1"
    folder = study.share(t, t.arms["same"], 1, source, repo)
    assert folder == repo / "results" / "studies" / "t" / "same" / "seed-1"
    for name in ("metrics.json", "outcomes.json", "params.yaml", "timing.json", "headline.json"):
        assert (folder / name).read_bytes() == (source.folder / name).read_bytes()
    run_info = json.loads((folder / "run.json").read_text())
    assert run_info["shared_from"] == "results/studies/s/a/seed-1" and run_info["wall_s"] == 0.0
    assert (run_info["study"], run_info["arm"], run_info["seed"]) == ("t", "same", 1)
    # a shared run is never the source of another share: with s/a seed 1 gone, a third study finds nothing
    shutil.rmtree(repo / "results" / "studies" / "s" / "a" / "seed-1")
    write_study(repo, "u", {"claim": "y", "seeds": [1], "baseline": "again",
                            "arms": {"again": {"role": "baseline", "overrides": {"temperature": 20}},
                                     "x": {"overrides": {"temperature": 50}}}})
    u = study.load_study("u", repo)
    assert study.identical_run(u, u.arms["again"], 1, repo, head) is None
    text = study.section(t, repo, head)
    assert "| same | baseline | 1 | " in text and "| 0 (1 shared) |" in text
    assert "as a run of another study (s) and were copied from it, not rerun" in text


def test_pairing_refuses_other_attacked_points(repo):
    report_repo(repo, {"a": [5, 6, 5], "b": [15, 17, 16]})
    path = repo / "results" / "studies" / "s" / "b" / "seed-1" / "outcomes.json"
    o = json.loads(path.read_text())
    mask = np.zeros(N_TEST, dtype=bool)
    mask[POINTS + 1] = True
    o["attack_points"].update(sha256=points_sha256(POINTS + 1), bits=encode_bits(mask))
    path.write_text(json.dumps(o))
    with pytest.raises(study.StudyError, match="b seed 1 and a seed 1 were attacked on different points"):
        study.section(study.load_study("s", repo), repo, study.head_lock_deps(repo))


def check(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(STUDY_PY), "report", "--check"], cwd=repo, capture_output=True,
                          text=True)


def test_check_fails_on_an_edited_table_and_on_stale_code(repo):
    report_repo(repo, {"a": [5, 6, 5], "b": [15, 17, 16]})
    assert check(repo).returncode == 1  # no section yet
    subprocess.run([sys.executable, str(STUDY_PY), "report"], cwd=repo, check=True, capture_output=True)
    assert check(repo).returncode == 0, check(repo).stderr
    page = repo / "docs" / "results.md"
    good = page.read_text()
    page.write_text(good.replace("| held |", "| did not hold |"))
    proc = check(repo)
    assert proc.returncode == 1 and "the `s` section differs from what results/studies/s/ gives" in proc.stderr
    page.write_text(good)

    deps_path = repo / "results" / "studies" / "s" / "b" / "seed-2" / "deps.json"
    deps = json.loads(deps_path.read_text())
    deps["files"]["src/robustkd/losses.py"] = "0" * 32  # that run ran on other code than HEAD's dvc.lock says
    deps_path.write_text(json.dumps(deps))
    proc = check(repo)
    assert proc.returncode == 1
    assert "results/studies/s/b/seed-2: stale: code changed: src/robustkd/losses.py" in proc.stderr
    subprocess.run([sys.executable, str(STUDY_PY), "report"], cwd=repo, check=True, capture_output=True)
    text = page.read_text()
    assert "- b seed 2: code changed: src/robustkd/losses.py" in text and "| 0, 1, 2 ⚠ |" in text
    assert "| held ⚠ stale |" in text
    assert check(repo).returncode == 1  # the table is current, the result still stale


def test_changed_params_make_a_result_stale(repo):
    report_repo(repo, {"a": [5, 6, 5], "b": [15, 17, 16]})
    params = read_yaml((repo / "params.yaml").read_text())
    params["attack"]["n_points"] = 7  # a default the study does not override, read by the attack stage
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    s = study.load_study("s", repo)
    stale = [c for c in study.load_collected(s, repo, study.head_lock_deps(repo)).values() if c.stale]
    assert len(stale) == 6 and stale[0].stale == ["params changed: attack"]


# --- end to end in the tiny repository ---------------------------------------------------------------------------
TINY_STUDY = {"claim": "Soft labels alone beat soft labels mixed with hard ones.", "seeds": [0, 1],
              "baseline": "mixed",
              "arms": {"mixed": {"role": "baseline", "overrides": {"student.kd_lambda": 0.5}},
                       "soft": {"overrides": {"student.kd_lambda": 1.0}}}}


def study_cmd(*args: str) -> list[str]:
    return [sys.executable, str(STUDY_PY), *args]


@pytest.mark.slow
def test_tiny_study_runs_is_killed_resumes_and_reports(tmp_path):
    """2 arms × 2 seeds through `dvc exp run --queue` and one worker. `dvc repro` first (HEAD's dvc.lock; it also
    puts seed 0's data and teacher, and the whole soft/seed-0 run, in the run cache). SIGTERM once the first run is
    collected (the run in flight is killed), resume: every run collected once, then `report` and `report --check`."""
    from test_reliability import reliability_params

    params = reliability_params()
    params.update(chain_length=0)
    repo = make_tiny_repo(tmp_path / "repo", params)
    run(["dvc", "repro"], repo)
    (repo / "studies").mkdir()
    (repo / "studies" / "tiny.yaml").write_text(yaml.safe_dump(TINY_STUDY, sort_keys=False))
    (repo / "docs").mkdir()
    (repo / "docs" / "results.md").write_text("# Results\n")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "dvc.lock, study"], repo)
    results = repo / "results" / "studies" / "tiny"

    started = time.monotonic()
    log = open(tmp_path / "run1.log", "w")
    proc = subprocess.Popen(study_cmd("run", "tiny", "-j", "1", "--poll", "1"), cwd=repo, env=env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while not list(results.glob("*/seed-*/run.json")):
            assert proc.poll() is None, (tmp_path / "run1.log").read_text()
            assert time.monotonic() - started < 600, (tmp_path / "run1.log").read_text()
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=env(), capture_output=True, timeout=120)
    first = (tmp_path / "run1.log").read_text()
    assert "SIGTERM: stopping" in first, first
    collected_first = sorted(p.parent.relative_to(results).as_posix() for p in results.glob("*/seed-*/run.json"))
    assert 1 <= len(collected_first) < 4, first
    status = run(study_cmd("status", "tiny"), repo).stdout
    for _ in range(60):  # the killed worker may still be taking its next task off the queue: wait until none runs
        if not re.search(r"seed \d+\s+running", status):
            break
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=env(), capture_output=True, timeout=120)
        time.sleep(2)
        status = run(study_cmd("status", "tiny"), repo).stdout
    assert len(re.findall(r"seed \d+\s+collected$", status, re.M)) == len(collected_first), status
    # the run in flight was killed (failed, with its log); the others wait in the queue
    others = [line for line in status.splitlines()[:-1] if not line.endswith(" collected")]
    assert all(re.search(r"seed \d+\s+(queued|failed \(log \.dvc/tmp/exps/run/)", line) for line in others), status

    try:
        # a run the killed worker took off the queue can stay "running" with no process: --stall-timeout requeues it
        second = run(study_cmd("run", "tiny", "-j", "1", "--poll", "1", "--stall-timeout", "60"), repo,
                     timeout=900).stdout
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=env(), capture_output=True, timeout=120)
    print(f"tiny study: {time.monotonic() - started:.0f} s after dvc repro\n{first}\n{second}")
    for done in collected_first:  # skipped, not rerun
        name = "tiny-" + done.replace("/seed-", "-s")
        assert f"collected {name}" not in second and f"queued {name}:" not in second
    assert "tiny: 4 of 4 runs collected; 0 failed" in second, second
    # queued without -f, so DVC's run cache restores what `dvc repro` computed (seed 0's data, teacher, the soft run)
    logs = "".join(p.read_text(errors="replace") for p in (repo / ".dvc" / "tmp" / "exps" / "run").glob("*/*.out"))
    assert "is cached - skipping run" in logs, logs[-3000:]
    for arm in ("mixed", "soft"):
        for seed in (0, 1):
            folder = results / arm / f"seed-{seed}"
            assert {p.name for p in folder.iterdir()} == {"metrics.json", "headline.json", "timing.json",
                                                          "outcomes.json", "params.yaml", "deps.json", "run.json"}
            ran = read_yaml((folder / "params.yaml").read_text())
            assert (ran["seed"], ran["student"]["kd_lambda"]) == (seed, 0.5 if arm == "mixed" else 1.0)
            info = json.loads((folder / "run.json").read_text())
            assert info["experiment"] == f"tiny-{arm}-s{seed}"
            assert info["threads"] in (1, None) and (info["wall_s"] is None or info["wall_s"] > 0)
    assert len(re.findall(r"seed \d+\s+collected$", run(study_cmd("status", "tiny"), repo).stdout, re.M)) == 4

    run(study_cmd("report", "tiny"), repo)
    page = (repo / "docs" / "results.md").read_text()
    assert "4 of 4 runs collected" in page and "| soft | mixed | s0: " in page
    assert run(study_cmd("report", "--check"), repo).returncode == 0
    again = run(study_cmd("run", "tiny"), repo).stdout
    assert "every (arm, seed) is collected on the current code; nothing to run" in again


def pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (Linux /proc), as a crash or the OOM killer would."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    todo, tree = [pid], []
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_a_worker_killed_mid_run_leaves_no_stall(tmp_path):
    """SIGKILL the queue worker and the run it executes: DVC keeps that entry "running" with no process behind it
    (the state that once hung CI). `study.py run` must notice that nothing runs, restart the queue, queue the run
    again and collect it, instead of waiting forever."""
    from test_reliability import reliability_params

    params = reliability_params()
    params.update(chain_length=0)
    repo = make_tiny_repo(tmp_path / "repo", params)
    run(["dvc", "repro"], repo)
    (repo / "studies").mkdir()
    spec = {**TINY_STUDY, "seeds": [1], "arms": {"mixed": TINY_STUDY["arms"]["mixed"]}}
    spec.pop("baseline")
    (repo / "studies" / "one.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (repo / "docs").mkdir()
    (repo / "docs" / "results.md").write_text("# Results\n")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "dvc.lock, study"], repo)

    try:
        queued = run(study_cmd("run", "one", "--no-wait"), repo).stdout
        assert "queued one-mixed-s1" in queued, queued
        runs = repo / ".dvc" / "tmp" / "exps" / "run"
        worker = repo / ".dvc" / "tmp" / "exps" / "celery" / "dvc-exp-worker-1.pid"
        started = time.monotonic()
        while True:  # until the worker has taken the run and its executor process is up
            executors = [p for p in runs.glob("*/*.pid") if pid_alive(p)]
            if executors and pid_alive(worker):
                break
            assert time.monotonic() - started < 300, run(["dvc", "queue", "status"], repo).stdout
            time.sleep(0.2)
        for pid_file in (worker, *executors):
            kill_tree(int(pid_file.read_text()))
        time.sleep(1)
        assert re.search(r"seed 1\s+running", run(study_cmd("status", "one"), repo).stdout)  # stale: no process

        second = run(study_cmd("run", "one", "--poll", "1", "--stall-timeout", "5"), repo, timeout=600).stdout
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=env(), capture_output=True, timeout=120)
    assert "one-mixed-s1: already queued or running" in second, second
    assert "nothing has run for 5 s although one-mixed-s1 wait in DVC's queue" in second, second
    assert "one: 1 of 1 runs collected; 0 failed" in second, second
    assert {p.name for p in (repo / "results" / "studies" / "one" / "mixed" / "seed-1").iterdir()} >= {
        "metrics.json", "outcomes.json", "run.json"}
