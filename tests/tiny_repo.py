"""A throw-away copy of this repository with a tiny config, for end-to-end DVC tests.

The data are small Fashion-MNIST IDX files in the real format, written into the copy's data/raw/.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from fixtures_data import write_fashion_mnist_idx
from robustkd.params import read_yaml

ROOT = Path(__file__).resolve().parents[1]
GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}

TRAINED_ROLES = ("teacher", "assistant", "student", "surrogate", "purifier_teachers", "purifier_student")


def tiny_params() -> dict:
    """The repo's params.yaml shrunk to seconds per stage; every code path still runs."""
    p = read_yaml((ROOT / "params.yaml").read_text())
    p["data"].update(val_size=100, train_subset=400, test_subset=200)
    p["training"].update(epochs=2, batch_size=64)
    for role in TRAINED_ROLES:  # a role that overrides the shared epochs keeps overriding them, with the tiny budget
        if "epochs" in p[role]:
            p[role]["epochs"] = 2
    p["darht"]["teacher_training"].update(epochs=1, batch_size=64)
    p["darht"]["select"].update(n_points=60, steps=2, batch_size=30)  # of the 100 validation points
    p["train_attack"].update(steps=1)  # adversarial training still crafts its examples; one step does it
    a = p["attack"]
    a.update(n_points=40, batch_size=20, eps=[0.1, 0.3], headline_eps=0.1, sensitivity_points=20,
             n_example_images=4)
    a["pgd"].update(steps=5)
    a["pgd_l2"].update(eps=[1.0], steps=5)
    a["cw_l2"].update(n_points=8, steps=10, binary_search_steps=2)
    # the quick custom subset (labelled so wherever reported); standard AutoAttack is tested in test_cascade/test_attacks
    a["autoattack"].update(version="custom", attacks=["apgd-ce", "apgd-dlr"], eps=[0.1], apgd_restarts=1)
    a["square"].update(n_queries=20)
    a["transfer"].update(steps=5)
    return p


def darht_stages(params: dict | None = None) -> set[str]:
    """The `darht_teacher@<name>` stages (one per entry of darht.pool) and `darht_select`; for other methods they
    only write a marker, but they run whenever `method` changes."""
    p = params or read_yaml((ROOT / "params.yaml").read_text())
    return {f"darht_teacher@{name}" for name in p["darht"]["pool"]} | {"darht_select"}


def env() -> dict[str, str]:
    """The environment of every command run in a tiny repo."""
    return {**os.environ, **GIT_ENV, "DVC_NO_ANALYTICS": "1", "PYTHONHASHSEED": "0"}


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def stages_run(output: str) -> set[str]:
    """Stage names that `dvc repro` / `dvc exp run` actually executed."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def make_tiny_repo(path: Path, params: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    # .dvc/plots_template.html: the offline plots page, built by .ci/setup (git-ignored; copied when built)
    for item in ("src", "pretrained", "dvc.yaml", "params.yaml", ".dvc/config", ".dvc/plots", ".dvc/plots_template.html",
                 ".dvc/.gitignore", ".dvcignore", ".gitignore"):
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, path / item, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (path / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, path / item)
    (path / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(), sort_keys=False))
    write_fashion_mnist_idx(path / "data" / "raw", n_train=600, n_test=300, seed=0)
    run(["git", "init", "-q"], path)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "tiny repo"], path)
    return path


def set_params(repo: Path, **changes) -> None:
    """Edit params.yaml: keys are dotted paths given with '__' (attack__eps=[...])."""
    p = read_yaml((repo / "params.yaml").read_text())
    for dotted, value in changes.items():
        node, keys = p, dotted.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
