"""dvc.yaml's code deps: every robustkd module a stage's script imports is a dep of that stage (else editing it
would not rerun the stage), and the stages that never run a model start without importing torch."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
TORCH_FREE = {"validate", "darht_teacher", "darht_select", "metrics"}

# Imports the stage's script as `python src/<stage>.py` would (without running main) and reports what it loaded.
PROBE = """
import importlib.util, json, sys
sys.path.insert(0, "src")
spec = importlib.util.spec_from_file_location("stage_script", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps({"modules": sorted(m for m in sys.modules if m.startswith("robustkd")),
                  "torch": "torch" in sys.modules}))
"""


def stage_body(name: str) -> dict:
    stage = STAGES[name]
    return stage["do"] if "foreach" in stage else stage


def imported(script: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, script], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def module_file(module: str) -> str:
    """robustkd.attacks.pgd -> the dep that covers it (the attacks folder); robustkd.io -> src/robustkd/io.py."""
    parts = module.split(".")
    if len(parts) == 1:
        return "src/robustkd/__init__.py"
    path = ROOT / "src" / "robustkd" / parts[1]
    return f"src/robustkd/{parts[1]}" if path.is_dir() else f"src/robustkd/{parts[1]}.py"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_the_modules_its_script_imports(name):
    body = stage_body(name)
    script = body["cmd"].split()[1]
    assert script in body["deps"]
    loaded = imported(script)
    needed = {module_file(m) for m in loaded["modules"]} - {"src/robustkd/__init__.py"}
    assert needed, f"{script} imports no robustkd module: the probe is broken"
    missing = needed - set(body["deps"])
    assert not missing, f"stage {name}: dvc.yaml deps lack {sorted(missing)}, which {script} imports"
    assert loaded["torch"] == (name not in TORCH_FREE), f"stage {name}: torch imported = {loaded['torch']}"


def test_attack_settings_do_not_rerun_predict():
    """Clean predictions read only `attack.batch_size` (and `data.workers`, which decode a streamed test set), so
    any other attack change reruns attack and metrics."""
    assert stage_body("predict")["params"] == ["attack.batch_size", "data.workers"]
    assert "results/predict" in stage_body("attack")["deps"]


def test_teacher_stage_depends_on_its_resolved_configuration_not_on_params():
    """The teacher stage lists no params: its params-derived dep is results/config/teacher.json, which the validate
    stage writes (robustkd.teacher_config). Honest only if the stage reads nothing else: src/teacher.py uses the
    params it is given only to check that file against them (teacher_config.read), and trains from the file."""
    teacher, validate = stage_body("teacher"), stage_body("validate")
    assert "params" not in teacher
    assert "results/config/teacher.json" in teacher["deps"]
    assert any(isinstance(o, dict) and "results/config/teacher.json" in o for o in validate["outs"])
    assert "params.yaml" in validate["deps"] and "pretrained" in validate["deps"]
    tree = ast.parse((ROOT / "src" / "teacher.py").read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    uses = [n for n in ast.walk(main) if isinstance(n, ast.Name) and n.id == "params" and isinstance(n.ctx, ast.Load)]
    calls = [n for n in ast.walk(main) if isinstance(n, ast.Call) and ast.unparse(n.func) == "teacher_config.read"]
    assert len(uses) == 1 and len(calls) == 1 and ast.unparse(calls[0].args[0]) == "params", \
        "src/teacher.py reads params beyond its resolved configuration: record it in robustkd.teacher_config"
