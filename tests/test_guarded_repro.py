"""End to end, with the real `dvc repro` on one finished tiny repo (module fixture, shared by every case):

* bad params stop `dvc repro` with the project's own message (key, value, allowed, did you mean) before DVC removes
  any output: every output, dvclive log, resume and timing file is byte-identical afterwards;
* `dvc repro -f teacher` with unchanged params gives a byte-identical models/teacher.pt, so DVC reruns nothing
  downstream, both when the teacher really retrains and when its finished resume state is reused.
"""
import shutil

import pytest
import yaml

from test_reliability import reliability_params
from tiny_repo import make_tiny_repo, run, stages_run

pytestmark = pytest.mark.slow
SKIP = (".git/", ".dvc/", "params.yaml")


def snapshot(repo, skip=SKIP) -> dict[str, bytes]:
    """Every file of the workspace but git's, DVC's own and params.yaml: outputs (cached and not), dvclive logs,
    dvc.lock, .resume/ and .timing/."""
    files = {p.relative_to(repo).as_posix(): p for p in repo.rglob("*") if p.is_file()}
    return {name: p.read_bytes() for name, p in sorted(files.items())
            if not name.startswith(skip) and "__pycache__" not in name}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    repo = make_tiny_repo(tmp_path_factory.mktemp("guarded") / "repo", reliability_params())
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "finished run"], repo)
    before = snapshot(repo)
    assert {"models/teacher.pt", "results/validated.json", "dvclive/teacher/metrics.json", "metrics.json",
            ".resume/teacher.pt", ".timing/teacher.json"} <= set(before)
    return repo, before


def edit(repo, change) -> None:
    p = yaml.safe_load((repo / "params.yaml").read_text())
    change(p)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def _set(path, value):
    def change(p):
        node, keys = p, path.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return change


def _rename_top(old, new):
    return lambda p: p.update({new: p.pop(old)})


def _drop(key):
    return lambda p: p.pop(key)


BAD = {
    "negative temperature": (_set("temperature", -1.0), "`temperature` = -1.0: out of range; allowed: (0.0, 10000.0]"),
    "string for a number": (_set("teacher.lr", "fast"), "`teacher.lr` = 'fast': must be a finite number"),
    "top-level typo": (_rename_top("temperature", "temprature"), "`temprature`: unknown key; did you mean `temperature`?"),
    "missing group": (_drop("ltd"), "`ltd`: missing; add it"),
    "eps > 1": (_set("attack.headline_eps", 1.5), "`attack.headline_eps` = 1.5: out of range; allowed: [0.0, 1.0]"),
    "unknown method": (_set("method", "defensive_distilation"),
                       "`method` = 'defensive_distilation': unknown; allowed: natural, defensive_distillation"),
    "darht.select.k > pool": (lambda p: (_set("method", "darht")(p), _set("darht.select.k", 5)(p)),
                              "`darht.select.k` = 5: larger than the pool of 4 candidate(s)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_params_stop_repro_with_our_message_before_anything_is_removed(finished, case):
    repo, before = finished
    change, expected = BAD[case]
    edit(repo, change)
    try:
        out = run(["dvc", "repro"], repo, check=False)
        text = out.stdout + out.stderr
        assert out.returncode != 0, text
        assert "error: params.yaml is not valid:" in text and expected in text, text
        assert "failed to reproduce 'validate'" in text and "are missing" not in text, text
        assert stages_run(out.stdout) == {"validate"}  # DVC stopped at the first stage
        assert snapshot(repo) == before
    finally:
        run(["git", "checkout", "params.yaml"], repo)


def test_missing_darht_group_fails_at_dvc_parse_time_before_anything_is_removed(finished):
    """dvc.yaml's `foreach: ${darht.pool}` is resolved when DVC parses dvc.yaml: that error is DVC's own and cannot
    be ours, but it comes before any stage runs; `python src/validate.py` gives the full report."""
    repo, before = finished
    edit(repo, _drop("darht"))
    try:
        out = run(["dvc", "repro"], repo, check=False)
        assert out.returncode != 0 and "Could not find 'darht.pool'" in out.stdout + out.stderr
        assert stages_run(out.stdout) == set() and snapshot(repo) == before
        ours = run(["python", "src/validate.py"], repo, check=False)
        assert ours.returncode == 2 and "`darht`: missing; add it" in ours.stderr
        assert snapshot(repo) == before
    finally:
        run(["git", "checkout", "params.yaml"], repo)


def test_yaml_1_2_float_reruns_nothing_but_the_check(finished):
    """`lr: 3e-3` is the float 0.003 to DVC (YAML 1.2) and to the stages: only `validate` (params.yaml is its dep)
    reruns; its constant output keeps every other stage up to date."""
    repo, before = finished
    text = (repo / "params.yaml").read_text()
    assert "  lr: 0.003\n" in text
    (repo / "params.yaml").write_text(text.replace("  lr: 0.003\n", "  lr: 3e-3\n"))
    try:
        out = run(["dvc", "repro"], repo)
        assert stages_run(out.stdout) == {"validate"}
        after = snapshot(repo)
        assert {k: v for k, v in after.items() if k != "dvc.lock"} == {k: v for k, v in before.items() if k != "dvc.lock"}
    finally:
        run(["git", "checkout", "params.yaml", "dvc.lock"], repo)


def test_forced_teacher_rerun_is_byte_identical_and_reruns_nothing_downstream(finished):
    repo, before = finished
    times = ".timing/"  # wall-clock seconds: the one file a real retraining rewrites with another value
    # 1. A real retraining: no resume state to reuse.
    shutil.rmtree(repo / ".resume")
    out = run(["dvc", "repro", "-f", "teacher"], repo)
    assert "teacher" in stages_run(out.stdout) and "epoch 3/3" in out.stdout
    assert "resuming" not in out.stdout and "rebuilding" not in out.stdout
    after = snapshot(repo, SKIP + (times,))
    assert after["models/teacher.pt"] == before["models/teacher.pt"]
    assert {k for k in after if k.startswith(".resume/")} == {".resume/teacher.pt"}
    assert {k: v for k, v in after.items() if not k.startswith(".resume/")} == \
        {k: v for k, v in before.items() if not k.startswith((".resume/", times))}
    assert "up to date" in run(["dvc", "status"], repo).stdout
    assert stages_run(run(["dvc", "repro"], repo).stdout) == set()
    # 2. Again, now with the finished resume state kept by the first rerun: rebuilt in seconds, same bytes.
    out = run(["dvc", "repro", "-f", "teacher"], repo)
    assert "[teacher] all 3 epochs done in .resume/teacher.pt (same run fingerprint): rebuilding" in out.stdout
    assert snapshot(repo, SKIP + (times,)) == after
    assert "up to date" in run(["dvc", "status"], repo).stdout
    assert stages_run(run(["dvc", "repro"], repo).stdout) == set()
