"""The metrics stage end to end on hand-built attack results: the files it writes (numbers and short labels in the
metrics files, the reasons in words in the masking report) and the summary it ends with."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import metrics as stage
from robustkd.bitsets import encode_bits
from robustkd.diagnostics import worst_case_points
from robustkd.errors import ProjectError
from robustkd.outcomes import points_sha256, read_outcomes
from robustkd.params import load
from robustkd.stats import wilson
from test_diagnostics import healthy_result

ROOT = Path(__file__).resolve().parents[1]


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def clean_correct_of(result: dict) -> np.ndarray:
    """Per test image: right on the attacked points as the attack result says, and on the first of the others until
    the result's clean_correct count is reached."""
    correct = np.zeros(result["n_test"], dtype=bool)
    correct[result["attack_points"]] = np.asarray(result["attacked_clean_correct"], dtype=bool)
    rest = np.setdiff1d(np.arange(result["n_test"]), result["attack_points"])
    correct[rest[:result["clean_correct"] - int(correct.sum())]] = True
    return correct


def write_predictions(work: Path, results) -> None:
    """The predict stage's files, as far as the metrics stage reads them."""
    (work / "results" / "predict").mkdir(parents=True, exist_ok=True)
    for r in results:
        record = {"model": r["model"], "n_test": r["n_test"], "clean_correct": r["clean_correct"],
                  "test_sha256": "sha-of-test", "correct": encode_bits(clean_correct_of(r))}
        (work / "results" / "predict" / f"{r['model']}.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Runs the stage's main in a scratch folder on a healthy student and a flagged teacher."""
    work = tmp_path_factory.mktemp("metrics_stage")
    params = load(ROOT / "params.yaml")
    student = healthy_result()
    teacher = copy.deepcopy(healthy_result())
    teacher["model"], teacher["info"]["role"] = "teacher", "teacher"
    teacher["linf"]["pgd_softmax_ce"]["eps_0p1"] = [1] * 40 + [0] * 60  # 13 points above AutoAttack
    (work / "results" / "attack").mkdir(parents=True)
    (work / "plots").mkdir()
    for r in (teacher, student):
        (work / "results" / "attack" / f"{r['model']}.json").write_text(json.dumps(r))
    (work / "results" / "attack" / "index.json").write_text(json.dumps({"models": ["teacher", "student"]}))
    write_predictions(work, (teacher, student))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        from io import StringIO
        from contextlib import redirect_stdout
        out = StringIO()
        with redirect_stdout(out):
            stage.main(params)
    finally:
        os.chdir(cwd)
    return work, out.getvalue()


def test_autoattack_is_labelled_by_the_version_that_ran():
    """The quick custom subset is never shown as plain "AutoAttack" (issue 22)."""
    one = {"autoattack_version": "custom", "gradient_masking": 0, "masking_codes": "", "n_attacked": 100,
           **{f"{k}{end}": v for k in ("clean_acc", "worst_case_headline", "autoattack_headline")
              for end, v in (("", 0.2), ("_ci_low", 0.1), ("_ci_high", 0.3))}}
    assert "AutoAttack (custom subset) on 100 attacked points" in stage.closing_summary({"student": one}, 0.1)
    assert "AutoAttack on 100 attacked points" in stage.closing_summary(
        {"student": {**one, "autoattack_version": "standard"}}, 0.1)
    mixed = stage.closing_summary({"student": one, "teacher": {**one, "autoattack_version": "standard"}}, 0.1)
    assert "standard or custom subset" in mixed


def test_the_stage_ends_with_the_headline_table_and_the_pointers(run):
    work, printed = run
    lines = printed.rstrip("\n").splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("model "))
    assert lines[head].split() == ["model", "clean", "[95%", "CI]", "worst", "case", "[95%", "CI]", "AutoAttack",
                                   "[95%", "CI]", "gradient", "masking"]
    teacher, student = lines[head + 1].split(), lines[head + 2].split()
    low, high = wilson(27, 100)  # 27 of the 100 attacked points survive every attack
    c_low, c_high = wilson(900, 1000)
    interval = [f"[{100 * low:.1f}%,", f"{100 * high:.1f}%]"]
    assert student == ["student", "90.0%", f"[{100 * c_low:.1f}%,", f"{100 * c_high:.1f}%]", "27.0%", *interval,
                       "27.0%", *interval, "not", "flagged"]
    assert teacher[0] == "teacher" and teacher[-2:] == ["FLAGGED", "(ce_gap)"]
    assert "on 100 attacked points; each with the 95% Wilson interval" in lines[head - 1]
    tail = "\n".join(lines[head + 3:])
    for pointer in ("headline.json", "metrics.json", "results/gradient_masking.md", "plots/", "results/outcomes.json",
                    "python tools/report.py --models metrics.json"):
        assert pointer in tail
    assert lines[-1].strip().startswith("python tools/report.py --models metrics.json")  # the last word is the pointers'


def test_metrics_files_hold_numbers_and_short_labels_the_report_holds_the_words(run):
    work, _ = run
    full = json.loads((work / "metrics.json").read_text())
    assert full["teacher"]["gradient_masking"] == 1 and full["teacher"]["masking_codes"] == "ce_gap"
    assert full["student"]["gradient_masking"] == 0 and full["student"]["masking_codes"] == ""
    for name in ("metrics.json", "headline.json", "timing.json", "darht_transferability.json"):
        for key, value in flatten(json.loads((work / name).read_text()) or {}).items():
            assert not isinstance(value, str) or len(value) <= 40, (name, key, value)
    report = (work / "results" / "gradient_masking.md").read_text()
    assert "## teacher: FLAGGED (ce_gap)" in report and "## student: not flagged" in report
    assert "autoattack leaves 27.0% but softmax-CE PGD leaves 40.0%" in report
    # no placeholder figure: only .keep, which keeps the (git-tracked) folder in a clone and which DVC ignores
    assert [p.name for p in (work / "plots" / "darht").iterdir()] == [".keep"]


def test_headline_file_is_the_students_numbers_flat_and_short(run):
    work, _ = run
    headline = json.loads((work / "headline.json").read_text())
    assert set(headline) == {"clean", "clean_lo", "clean_hi", "worst", "worst_lo", "worst_hi", "aa", "aa_lo", "aa_hi",
                             "masking"}
    assert all(v is None or isinstance(v, (int, float)) for v in headline.values())
    assert (headline["worst"], headline["worst_lo"], headline["worst_hi"]) == (0.27, *wilson(27, 100))
    assert headline["clean"] == 0.9 and headline["masking"] == 0  # the student's, not the flagged teacher's
    with pytest.raises(ValueError, match="no 'student'"):
        stage.headline_metrics({"teacher": {}})


def test_the_committed_headline_is_what_dvc_prints_and_its_diff_is_short(tmp_path):
    """dvc.yaml declares headline.json (not the full metrics.json) as metrics; `dvc metrics diff` of two runs that
    differ in every headline value of the committed default run stays under 5 KB, in lines of at most 160 columns."""
    import yaml

    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["metrics"]
    assert "headline.json" in declared and "metrics.json" not in declared
    headline = json.loads((ROOT / "headline.json").read_text())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, env=env)  # noqa: E731
    git("init", "-q")
    git("config", "user.email", "t@t.invalid")
    git("config", "user.name", "t")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, env=env)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"metrics": declared}))
    for name in declared:
        (tmp_path / name).write_text((ROOT / name).read_text())
    git("add", "-A")
    git("commit", "-qm", "base")
    moved = {k: (None if v is None else round(v + 0.0011, 4)) for k, v in headline.items()}
    (tmp_path / "headline.json").write_text(json.dumps(moved))
    out = subprocess.run([sys.executable, "-m", "dvc", "metrics", "diff"], cwd=tmp_path, check=True,
                         capture_output=True, text=True, env={**env, "COLUMNS": "160"}).stdout
    assert len(out.encode()) < 5000, len(out)
    assert max(map(len, out.splitlines())) <= 160
    assert sum("headline.json" in line for line in out.splitlines()) == len(flatten(headline))


def test_outcomes_reproduce_the_metrics_point_by_point(run):
    """results/outcomes.json: per model, clean correctness over the test set and, over the attacked points, the
    worst case per ε (the very points metrics.json's worst_case counts) and each attack per ε; a few KB."""
    work, _ = run
    text = (work / "results" / "outcomes.json").read_text()
    outcomes = read_outcomes(text)
    metrics = json.loads((work / "metrics.json").read_text())
    assert outcomes.attack_points.tolist() == [10 * i for i in range(100)]
    assert outcomes.attack_points_sha256 == points_sha256(range(0, 1000, 10))
    assert (outcomes.n_test, outcomes.test_sha256, outcomes.dataset) == (1000, "sha-of-test", "fashion_mnist")
    assert (outcomes.eps, outcomes.headline_eps) == ([0.05, 0.1, 0.3], 0.1)
    assert set(outcomes.models) == set(metrics)
    for name, m in metrics.items():
        o = outcomes.models[name]
        result = json.loads((work / "results" / "attack" / f"{name}.json").read_text())
        assert round(o.clean_correct.sum() / 1000, 4) == m["clean_acc"]
        assert o.clean_correct[outcomes.attack_points].tolist() == [bool(v) for v in result["attacked_clean_correct"]]
        assert set(o.worst_case) == set(m["worst_case"])
        for key, acc in m["worst_case"].items():
            assert o.worst_case[key].tolist() == [bool(v) for v in worst_case_points(result["linf"], key)]
            assert round(o.worst_case[key].mean(), 4) == acc
        for attack, per_eps in m["robust_acc"].items():
            assert {k: round(o.robust[attack][k].mean(), 4) for k in per_eps} == per_eps
    assert len(text.encode()) < 3000 * len(metrics)  # 100 points here; ~5 KB a model at 1,000 points


def test_predictions_without_the_bitset_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    params = load(ROOT / "params.yaml")
    (tmp_path / "results" / "attack").mkdir(parents=True)
    r = healthy_result()
    (tmp_path / "results" / "attack" / "student.json").write_text(json.dumps(r))
    (tmp_path / "results" / "attack" / "index.json").write_text(json.dumps({"models": ["student"]}))
    write_predictions(tmp_path, [r])
    record = json.loads((tmp_path / "results" / "predict" / "student.json").read_text())
    del record["correct"]
    (tmp_path / "results" / "predict" / "student.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProjectError, match=r"results/predict/student\.json: no per-image `correct` bitset .*dvc repro predict"):
        stage.main(params)
    assert not (tmp_path / "metrics.json").exists()


def test_every_accuracy_at_the_headline_eps_carries_its_wilson_interval(run):
    """Clean, each attack and the worst case at the headline ε: flat numeric _ci_low / _ci_high keys."""
    work, _ = run
    for name, m in json.loads((work / "metrics.json").read_text()).items():
        result = json.loads((work / "results" / "attack" / f"{name}.json").read_text())
        assert (m["clean_acc_ci_low"], m["clean_acc_ci_high"]) == wilson(900, 1000)
        attacks = {a for a, per_eps in result["linf"].items() if "eps_0p1" in per_eps}
        assert set(m["robust_acc_headline_ci_low"]) == set(m["robust_acc_headline_ci_high"]) == attacks
        for attack in attacks:
            robust = sum(result["linf"][attack]["eps_0p1"])
            assert (m["robust_acc_headline_ci_low"][attack], m["robust_acc_headline_ci_high"][attack]) == \
                wilson(robust, 100)
            assert m["robust_acc_headline_ci_low"][attack] <= m["robust_acc"][attack]["eps_0p1"] <= \
                m["robust_acc_headline_ci_high"][attack]
        assert m["worst_case_headline_ci_low"] <= m["worst_case_headline"] <= m["worst_case_headline_ci_high"]
        assert m["adaptive_headline_ci_low"] <= m["adaptive_headline"] <= m["adaptive_headline_ci_high"]
        assert m["paper_protocol_headline_ci_low"] is None  # not method purification: no paper-protocol numbers
