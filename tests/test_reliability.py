"""End to end, with the real `dvc repro`: a power cut mid-epoch loses nothing, and reruns are byte-identical.

Two tiny repos with identical params: one runs uninterrupted (module fixture, shared by both tests); the
other is SIGKILLed, whole process group (dvc and the stage's python), while the teacher trains its second
epoch, then `dvc repro` is simply run again. Both must end with the same bytes in metrics.json, plots/*.json,
the dvclive logs and every checkpoint (checkpoints hold no wall-clock time: that goes to .timing/ and timing.json).
"""
import json
import os
import shutil
import signal
import subprocess
import time

import psutil
import pytest
import torch

from tiny_repo import darht_stages, env, make_tiny_repo, run, stages_run, tiny_params

pytestmark = pytest.mark.slow
ALL_STAGES = {"validate", "prepare", "teacher", "assistant", "student", "surrogate", "predict", "attack", "metrics"} | darht_stages()
TEACHER_EPOCHS = 3
CHECKPOINTS = ("models/teacher.pt", "models/assistants/assistant_1.pt", "models/student.pt", "models/surrogate.pt")


def reliability_params() -> dict:
    """tiny_params() made cheaper still (this module runs the pipeline three times); every stage still runs."""
    p = tiny_params()
    p["data"].update(test_subset=100)
    p["teacher"].update(epochs=TEACHER_EPOCHS)  # ~1 s per epoch: killed in epoch 2, resumed for epochs 2-3
    for role in ("assistant", "student", "surrogate"):
        p[role].update(epochs=1)
    a = p["attack"]
    a.update(n_points=20, batch_size=20, eps=[0.1, 0.3], headline_eps=0.1, sensitivity_points=10, n_example_images=2)
    a["pgd"].update(steps=3)
    a["pgd_l2"].update(eps=[1.0], steps=3)
    a["cw_l2"].update(n_points=4, steps=5, binary_search_steps=1)
    a["autoattack"].update(attacks=["apgd-ce"], eps=[0.1])
    a["square"].update(n_queries=10)
    a["transfer"].update(steps=3)
    return p


def output_bytes(repo) -> dict[str, bytes]:
    """Every output that must be byte-identical between runs with the same params."""
    paths = [repo / "metrics.json", *sorted((repo / "plots").glob("*.json")),
             *sorted(p for p in (repo / "dvclive").rglob("*") if p.is_file())]
    return {p.relative_to(repo).as_posix(): p.read_bytes() for p in paths}


def checkpoint_bytes(repo) -> dict[str, bytes]:
    return {name: (repo / name).read_bytes() for name in CHECKPOINTS}


def weights(repo) -> dict[str, dict[str, torch.Tensor]]:
    return {name: torch.load(repo / name, weights_only=True)["state_dict"] for name in CHECKPOINTS}


def assert_same_outputs(got: dict[str, bytes], expected: dict[str, bytes]) -> None:
    assert sorted(got) == sorted(expected)
    assert {"metrics.json", "plots/robust_vs_eps.json", "dvclive/teacher/plots/metrics/val_acc.tsv"} <= set(got)
    for name in expected:
        assert got[name] == expected[name], f"{name} differs"


def assert_same_weights(got, expected) -> None:
    for ckpt, state in expected.items():
        assert got[ckpt].keys() == state.keys(), ckpt
        for key, tensor in state.items():
            assert torch.equal(got[ckpt][key], tensor), f"{ckpt}: {key} differs"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    repo = make_tiny_repo(tmp_path_factory.mktemp("uninterrupted") / "repo", reliability_params())
    out = run(["dvc", "repro"], repo)
    assert stages_run(out.stdout) == ALL_STAGES
    # A snapshot: the forced rerun below rewrites these files in place.
    return repo, {**output_bytes(repo), **checkpoint_bytes(repo)}, weights(repo)


def group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that still run (zombies excluded: they are dead, awaiting their parent)."""
    alive = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return alive


def test_kill_mid_epoch_then_repro_matches_uninterrupted_run(tmp_path, uninterrupted):
    _, expected_outputs, expected_weights = uninterrupted
    repo = make_tiny_repo(tmp_path / "repo", reliability_params())
    resume_file = repo / ".resume" / "teacher.pt"
    log_path = tmp_path / "killed_run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group: dvc and the stages it starts
    try:
        deadline = time.monotonic() + 600
        while not resume_file.exists():  # written atomically at the end of each teacher epoch
            assert proc.poll() is None, f"dvc repro ended before the kill:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the teacher never finished an epoch"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a power cut: no handler, no cleanup, no atexit
        proc.wait()
    deadline = time.monotonic() + 10
    while group_members(proc.pid):
        assert time.monotonic() < deadline, f"survived SIGKILL: {group_members(proc.pid)}"
        time.sleep(0.1)

    # The kill landed mid-training: some epochs done, not all, no checkpoint yet.
    done = torch.load(resume_file, weights_only=True)["epoch"]
    assert 1 <= done < TEACHER_EPOCHS
    assert not (repo / "models" / "teacher.pt").exists()

    # What a user does after a power cut: run `dvc repro` again, nothing else. The killed dvc left its PID in
    # .dvc/tmp/rwlock (the repo-wide .dvc/tmp/lock is an fcntl lock, released by the kernel); DVC 3 sees that
    # the PID is gone, prints "Process ... had been killed. Auto removed it from the lock file." and goes on.
    # Were the PID reused by then (unlikely), DVC would report the outputs as busy: make sure no dvc process
    # runs, delete .dvc/tmp/rwlock, and rerun.
    out = run(["dvc", "repro"], repo)
    assert f"[teacher] resuming after epoch {done} from .resume/teacher.pt" in out.stdout
    # prepare (and any stage DVC ran before the teacher) had finished and was recorded in dvc.lock
    assert stages_run(out.stdout) == ALL_STAGES - (stages_run(log_path.read_text()) - {"teacher"})
    # kept, with every epoch, once the checkpoint is saved: a stage killed after its script ended but before DVC
    # recorded it is rebuilt from it without training
    assert torch.load(resume_file, weights_only=True)["epoch"] == TEACHER_EPOCHS

    assert_same_outputs({**output_bytes(repo), **checkpoint_bytes(repo)}, expected_outputs)
    assert_same_weights(weights(repo), expected_weights)


def test_forced_rerun_is_byte_identical(uninterrupted):
    repo, expected_outputs, expected_weights = uninterrupted
    shutil.rmtree(repo / ".resume")  # finished stages keep their resume state: without it, every model retrains
    out = run(["dvc", "repro", "--force"], repo)
    assert stages_run(out.stdout) == ALL_STAGES
    assert "resuming" not in out.stdout and "rebuilding" not in out.stdout  # trained from scratch
    assert_same_outputs({**output_bytes(repo), **checkpoint_bytes(repo)}, expected_outputs)
    assert_same_weights(weights(repo), expected_weights)


def test_metrics_hold_no_timing(uninterrupted):
    _, outputs, _ = uninterrupted

    def keys(node):
        if isinstance(node, dict):
            for k, v in node.items():
                yield k
                yield from keys(v)
        elif isinstance(node, list):
            for v in node:
                yield from keys(v)

    for name in ("metrics.json", *(n for n in outputs if n.startswith("plots/"))):
        timing = [k for k in keys(json.loads(outputs[name])) if any(w in k.lower() for w in ("second", "time", "elapsed"))]
        assert timing == [], name
