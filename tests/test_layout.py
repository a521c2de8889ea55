"""src/ holds the stage scripts and the package, tools/ the rest: every src/*.py is the command of a dvc.yaml stage,
and every tool runs as `python tools/<name>.py` from the repository root, importing robustkd from src/."""
import re
import subprocess
import sys

import yaml

from conftest import ROOT


def stage_commands() -> dict[str, str]:
    """Stage name -> its cmd (a foreach stage's from its `do` block)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: (stage.get("do") or stage)["cmd"] for name, stage in stages.items()}


def test_every_src_script_is_the_command_of_a_stage():
    scripts = {m.group(1) for cmd in stage_commands().values() for m in re.finditer(r"\bsrc/(\w+\.py)\b", cmd)}
    on_disk = {p.name for p in (ROOT / "src").glob("*.py")}
    assert on_disk - scripts == set(), (f"src/ holds only stage scripts; move these to tools/ "
                                        f"(or give them a stage in dvc.yaml): {sorted(on_disk - scripts)}")
    assert scripts - on_disk == set(), f"dvc.yaml runs scripts that src/ lacks: {sorted(scripts - on_disk)}"


def test_every_stage_runs_a_script_of_src():
    for name, cmd in stage_commands().items():
        assert re.match(r"python3? src/\w+\.py\b", cmd), f"stage {name}: {cmd!r} is not `python src/<script>.py`"


def run_tool(*args: str) -> subprocess.CompletedProcess:
    # From the repository root, as the README says, with no PYTHONPATH: the tool finds robustkd itself.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_report_tool_runs_from_the_repo_root_on_the_committed_metrics():
    proc = run_tool("tools/report.py", "--models", "metrics.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("| model |") and "| student |" in proc.stdout


def test_preset_tool_runs_from_the_repo_root_without_writing(tmp_path):
    before = (ROOT / "params.yaml").read_bytes()
    proc = run_tool("tools/apply_preset.py", "src/presets/cifar10.yaml", "--dry-run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert yaml.safe_load(proc.stdout)["dataset"] == "cifar10"
    assert (ROOT / "params.yaml").read_bytes() == before


def test_bench_tool_imports_from_the_repo_root():
    proc = run_tool("tools/bench.py", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--pipeline" in proc.stdout
