"""torchrun + DistributedDataParallel on CPU (gloo, 2 processes) through the real training loop and stage scripts.

The 2-process run must match a single-process run of the same global batch. Not bitwise: each process sums its
own share and DDP averages the two gradients, so float additions happen in another order, and how much that moves
the weights depends on the processor's kernels. Adam divides each step by the gradient's running RMS, so a
reassociation in a near-zero gradient can become a step of up to lr in that one element: no per-element tolerance
holds on every processor. What is compared is the whole model's L2 gap relative to its weights' norm, against a
bound set by the precision's unit roundoff and far below what a real error gives (a run from another seed is ~140%
away):
- fp32 (unit roundoff 6e-8): at most 1e-4. Measured on an AMD EPYC: 1.1e-7 (tests/ddp_worker.py: lenet, Adam, CE,
  2 epochs, batch 32 split 16 + 16, last batch 8 split 4 + 4, augmentation on).
- bf16 autocast (the engine's default on a CPU with native bf16; unit roundoff 2^-8 = 3.9e-3, and each reassociated
  sum is rounded to it in the next forward pass): at most 1e-2. Measured: 1.7e-3.
- the stage scripts in fp32 (teacher at T = 20, then an assistant distilled from it): softmax at T = 20 gives many
  near-zero gradients, so Adam's amplification is the rule rather than the exception, and the assistant inherits
  the teacher's gap: at most 1e-2. Measured 0.05% (teacher) and 0.30% (assistant), while training moved the
  weights 34% and 24% away from their initial values.
Counts (accuracy) and the epoch that was kept are outcomes and must be equal in fp32.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustkd import distributed
from robustkd.errors import ParamsError
from robustkd.training import Engine, precision_name

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ddp_worker.py"
FP32_REL_L2 = 1e-4         # whole model, relative to its weights' norm: the training loop in fp32
BF16_REL_L2 = 1e-2         # the training loop under bf16 autocast
STAGE_REL_L2 = 1e-2        # the stage scripts (fp32)


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # gloo on CPU, even on a GPU machine


def _run(cmd, cwd=ROOT, timeout=300):
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]


def trained(out: Path):
    return torch.load(out / "weights.pt", weights_only=True), json.loads((out / "result.json").read_text())


def relative_l2_gap(got: dict, expected: dict) -> float:
    """||got - expected|| / ||expected|| over every float tensor of the state dict taken as one vector."""
    assert got.keys() == expected.keys()
    keys = [k for k in expected if expected[k].is_floating_point()]
    gap = sum(float(((got[k].double() - expected[k].double()) ** 2).sum()) for k in keys)
    norm = sum(float((expected[k].double() ** 2).sum()) for k in keys)
    return (gap / norm) ** 0.5


@pytest.mark.cross_processor
@pytest.mark.parametrize("bf16", ["0", "1"])
def test_two_processes_match_one_process_of_the_same_global_batch(tmp_path, bf16):
    """bf16 "0": fp32, the per-element tolerance. "1": the engine's default, bf16 autocast where the CPU has native
    bf16 (else fp32 again), the bf16 tolerance."""
    _run([sys.executable, WORKER, tmp_path / "single", "ce", "32", bf16])
    _run(torchrun(WORKER, tmp_path / "ddp", "ce", "32", bf16))
    single, single_info = trained(tmp_path / "single")
    ddp, ddp_info = trained(tmp_path / "ddp")
    assert single_info["world_size"] == 1 and ddp_info["world_size"] == 2
    assert ddp_info["ranks_agree"]  # DDP kept the two processes' weights identical
    assert ddp_info["precision"] == single_info["precision"] == ("fp32" if bf16 == "0" else
                                                                 precision_name(torch.device("cpu"), Engine()))
    exact = ddp_info["precision"] == "fp32"
    last = lambda run: torch.load(tmp_path / run / "resume.pt", weights_only=True)  # noqa: E731
    assert last("ddp")["epoch"] == last("single")["epoch"] == 2
    for got, expected in ((ddp, single), (last("ddp")["model"], last("single")["model"])):  # kept epoch's, last epoch's
        assert got.keys() == expected.keys()
        assert relative_l2_gap(got, expected) < (FP32_REL_L2 if exact else BF16_REL_L2)
    assert ddp_info["best_epoch"] == single_info["best_epoch"]
    for a, b in zip(ddp_info["history"], single_info["history"]):
        if exact:
            assert a["val_acc"] == b["val_acc"] and a["train_acc"] == b["train_acc"]  # counts summed over processes
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5 if exact else 1e-3)
    # only rank 0 wrote the resume file and the dvclive log (one line per epoch, no duplicates)
    assert (tmp_path / "ddp" / "resume.pt").is_file()
    assert (tmp_path / "ddp" / "live" / "plots" / "metrics" / "val_acc.tsv").read_text().count("\n") == 3


def test_adversarial_loss_trains_under_ddp(tmp_path):
    """TRADES: crafting (extra forward passes, on the module inside DDP) and two forwards before one backward."""
    _run(torchrun(WORKER, tmp_path / "ddp", "trades"))
    _, info = trained(tmp_path / "ddp")
    assert info["world_size"] == 2 and info["ranks_agree"]
    assert info["history"][-1]["train_loss"] < info["history"][0]["train_loss"]


@pytest.mark.cross_processor
def test_awp_under_ddp_matches_one_process(tmp_path):
    """Adversarial weight perturbation under DDP: each process's proxy gradient (its share of the batch) is averaged
    over the processes before the rescaling, so both apply the single process's perturbation and end with its
    weights (fp32, the loop's tolerance); without that average each would perturb along its own share."""
    _run([sys.executable, WORKER, tmp_path / "single", "ce_awp", "32", "0"])
    _run(torchrun(WORKER, tmp_path / "ddp", "ce_awp", "32", "0"))
    single, single_info = trained(tmp_path / "single")
    ddp, ddp_info = trained(tmp_path / "ddp")
    assert ddp_info["world_size"] == 2 and ddp_info["ranks_agree"]
    assert relative_l2_gap(ddp, single) < FP32_REL_L2
    assert ddp_info["best_epoch"] == single_info["best_epoch"]


def test_batch_size_must_split_evenly_across_processes():
    distributed.check_batch_size(32, 200, "teacher.batch_size", world=2)  # 16 + 16, last batch 4 + 4
    with pytest.raises(ParamsError, match=r"`teacher.batch_size` = 33: not divisible by the 2 processes .*e\.g\. 32 or 34"):
        distributed.check_batch_size(33, 200, "teacher.batch_size", world=2)
    with pytest.raises(ParamsError, match=r"`student.batch_size` = 32: the last batch of each epoch holds 1 "):
        distributed.check_batch_size(32, 65, "student.batch_size", world=2)
    distributed.check_batch_size(33, 200, "teacher.batch_size", world=1)  # one process: anything goes


def test_stage_rejects_params_unfit_for_the_launch_before_reading_data(monkeypatch):
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ParamsError) as err:
        distributed.check_params(params)
    msg = str(err.value)
    # the roles share `training.batch_size` (reported once); a role's own batch_size is named as its own
    assert msg.count("`training.batch_size` = 128: not divisible by the 3 processes") == 1
    params["surrogate"]["batch_size"] = 100
    with pytest.raises(ParamsError, match="`surrogate.batch_size` = 100: not divisible by the 3 processes"):
        distributed.check_params(params)
    params["method"] = "purification"
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ParamsError, match="`method` = 'purification'"):
        distributed.check_params(params)
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.check_params(params)


@pytest.mark.slow  # 36 s alone, 100 s with the machine busy
def test_stage_scripts_run_under_torchrun(tmp_path):
    """`torchrun --nproc_per_node 2 src/teacher.py`, then src/assistant.py (which reads the checkpoint rank 0 just
    wrote): the same files as the single-process stages, weights within the stage tolerance above. In fp32: under
    bf16 autocast the teacher's gap grows to 4% (T = 20 amplifies each bf16 rounding through Adam, as above), which
    would hide a real error; the bf16 path under DDP is tested on the training loop."""
    from test_reliability import reliability_params
    from tiny_repo import make_tiny_repo

    params = reliability_params()
    params["teacher"].update(epochs=2)
    params["engine"]["bf16"] = False
    repos = {name: make_tiny_repo(tmp_path / name, params) for name in ("single", "ddp")}
    for name, repo in repos.items():
        for stage in ("validate", "prepare"):  # validate writes the teacher's resolved config, results/config/
            _run([sys.executable, f"src/{stage}.py"], cwd=repo)
        for stage in ("teacher", "assistant"):
            script = f"src/{stage}.py"
            _run(torchrun(script) if name == "ddp" else [sys.executable, script], cwd=repo)
    files = lambda repo: sorted(p.relative_to(repo).as_posix() for d in ("models", "dvclive")  # noqa: E731
                                for p in (repo / d).rglob("*") if p.is_file())
    assert files(repos["ddp"]) == files(repos["single"])
    # rank 0 alone wrote the resume files (kept, finished, as in a single process) and the timing files
    assert sorted(p.name for p in (repos["ddp"] / ".resume").glob("*")) == ["assistant_1.pt", "teacher.pt"]
    assert sorted(p.name for p in (repos["ddp"] / ".timing").glob("*")) == ["assistant_1.json", "teacher.json"]
    for ckpt in ("models/teacher.pt", "models/assistants/assistant_1.pt"):
        load = lambda repo: torch.load(repo / ckpt, weights_only=True)["state_dict"]  # noqa: E731
        gap = relative_l2_gap(load(repos["ddp"]), load(repos["single"]))
        assert gap <= STAGE_REL_L2, f"{ckpt}: the 2-process weights are {gap:.2%} away from the 1-process ones"
