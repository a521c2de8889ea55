"""Scale-out with DVC, end to end in a throw-away repo: two queued experiments run by two parallel workers
(`dvc queue start -j 2`), and an experiment shared through a bare git remote and a local-directory DVC remote
(`dvc exp push` / `dvc exp pull` + `dvc pull` in a fresh clone)."""
import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from test_reliability import reliability_params
from tiny_repo import env, make_tiny_repo

pytestmark = pytest.mark.slow
EXPERIMENTS = {"t-five": 5, "t-ten": 10}
QUEUE_TIMEOUT_S = 900


def sh(cmd: list[str], cwd: Path, timeout: int = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env={**env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def count(status: str, state: str) -> int:
    """Tasks in ``state`` in the output of `dvc queue status` (one task per line)."""
    return sum(state in line for line in status.splitlines())


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A repo with a git remote (`origin`, bare) and a default DVC remote (`storage`, a local folder), whose shared
    stages (prepare, surrogate, the DARHT markers) ran and were committed; then two experiments queued and run by two workers."""
    root = tmp_path_factory.mktemp("scale_out")
    repo = make_tiny_repo(root / "repo", reliability_params())
    sh(["git", "init", "-q", "--bare", str(root / "origin.git")], root)
    sh(["git", "remote", "add", "origin", str(root / "origin.git")], repo)
    sh(["dvc", "remote", "add", "-d", "storage", str(root / "dvc-storage")], repo)
    # Also the stages both experiments would run identically (the DARHT marker stages): two workers saving the same
    # run-cache entry at once trip a DVC race (treeverse/dvc#10673; tools/study.py retries such a run once).
    sh(["dvc", "repro", "prepare", "surrogate", "darht_select"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "shared stages, remotes"], repo)
    branch = sh(["git", "rev-parse", "--abbrev-ref", "HEAD"], repo).strip()
    sh(["git", "push", "-q", "origin", branch], repo)
    sh(["dvc", "push"], repo)  # the baseline's data and surrogate, for a collaborator's `dvc pull`

    for name, temperature in EXPERIMENTS.items():
        sh(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"temperature={temperature}", "-S", "chain_length=0"],
           repo)
    started, most_running = time.monotonic(), 0
    try:
        # Returns at once; the workers run in the background. Not through sh(): the workers would inherit its
        # output pipes, and reading those to the end would wait for the workers to exit.
        with open(root / "queue-start.log", "w") as log:
            subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=repo, env={**env(), "OMP_NUM_THREADS": "1"},
                           stdout=log, stderr=subprocess.STDOUT, timeout=120, check=True)
        while True:
            status = sh(["dvc", "queue", "status"], repo)
            most_running = max(most_running, count(status, "Running"))
            if not count(status, "Queued") + count(status, "Running"):
                break
            assert time.monotonic() - started < QUEUE_TIMEOUT_S, f"queue still busy:\n{status}"
            time.sleep(2)
    finally:  # never leave workers behind, even when the test failed
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=env(), capture_output=True, timeout=120)
    return repo, root, branch, status, most_running, time.monotonic() - started


def experiments(repo: Path) -> dict[str, dict]:
    """name -> {"params": ..., "metrics": ...} from `dvc exp show --json`, for the experiments of HEAD."""
    found = {}
    for commit in json.loads(sh(["dvc", "exp", "show", "--json"], repo)):
        for exp in commit.get("experiments") or []:
            rev = exp["revs"][0]
            data = rev.get("data") or {}
            found[rev.get("name") or exp.get("name")] = {
                "params": data.get("params", {}).get("params.yaml", {}).get("data", {}),
                "metrics": data.get("metrics", {}).get("headline.json", {}).get("data", {})}
    return found


def test_two_workers_finish_both_queued_experiments(shared):
    repo, _, _, status, most_running, seconds = shared
    print(f"two queued experiments, 2 workers: {seconds:.0f} s")
    assert count(status, "Success") == len(EXPERIMENTS), status
    assert most_running == 2  # the two workers ran the experiments at the same time
    exps = experiments(repo)
    assert set(EXPERIMENTS) <= set(exps), exps.keys()
    for name, temperature in EXPERIMENTS.items():
        assert exps[name]["params"]["temperature"] == temperature
        student = exps[name]["metrics"]  # headline.json: the student's numbers
        assert 0.0 <= student["clean"] <= 1.0
        assert student["worst_lo"] <= student["worst"] <= student["worst_hi"]


def test_experiment_travels_through_git_and_dvc_remotes(shared, tmp_path):
    repo, root, branch, *_ = shared
    name = "t-ten"
    sh(["dvc", "exp", "push", "origin", name], repo)  # git refs to origin, its cached outputs to `storage`
    ref = sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).split()
    ref = next(r for r in ref if r.endswith("/" + name))
    want = {p: sh(["git", "show", f"{ref}:{p}"], repo) for p in ("metrics.json", "dvc.lock")}
    lock = yaml.safe_load(want["dvc.lock"])
    student_md5 = next(o["md5"] for o in lock["stages"]["student"]["outs"] if o["path"] == "models/student.pt")

    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", "--branch", branch, str(root / "origin.git"), str(clone)], tmp_path)
    sh(["dvc", "exp", "pull", "origin", name], clone)
    assert name in experiments(clone)
    sh(["dvc", "exp", "apply", name], clone)
    sh(["dvc", "pull"], clone)
    assert (clone / "metrics.json").read_text() == want["metrics.json"]
    student = clone / "models" / "student.pt"
    assert hashlib.md5(student.read_bytes()).hexdigest() == student_md5  # the experiment's exact model file
    assert sha256(student) == sha256(Path(repo / ".dvc" / "cache" / "files" / "md5" / student_md5[:2] /
                                          student_md5[2:]))
    assert json.loads(want["metrics.json"])["student"]["train_temperature"] == 10
    status = sh(["dvc", "status"], clone)
    assert "changed" not in status.lower(), status  # workspace = the experiment, outputs and all
