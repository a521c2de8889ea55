"""The package's shape: no import cycle, no method branch in a stage script or the training loop, and one list of
method names that the params schema and dvc.yaml follow."""
import ast
from pathlib import Path

import pytest
import yaml

from robustkd import params as params_mod
from robustkd.method_names import METHOD_NAMES, STUDENT_PARAMS
from robustkd.methods.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# The stage scripts (dvc.yaml's commands), but DARHT's own teacher stage, which may name its method.
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
STAGE_SCRIPTS = sorted({(s.get("do") or s)["cmd"].split()[1] for s in STAGES.values()} - {"src/darht_teacher.py"})


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = SRC) -> set[str]:
    """The robustkd modules ``path`` imports anywhere (a lazy import inside a function counts too)."""
    name = module_name(path, root)
    package = name.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from . import io` imports a module
    return {m for m in found if m.startswith("robustkd")} - {name}


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    return {name: {m for m in imports_of(path, root) if m in modules} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting, done = [], set()

    def visit(node):
        if node in visiting:
            return visiting[visiting.index(node):] + [node]
        if node in done:
            return None
        visiting.append(node)
        for nxt in sorted(graph[node]):
            cycle = visit(nxt)
            if cycle:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_no_import_cycle():
    graph = import_graph(SRC)
    assert graph["robustkd.methods.registry"] >= {"robustkd.methods.darht", "robustkd.methods.purification"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_lazy_cycle(tmp_path):
    package = tmp_path / "robustkd"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def f():\n    from .a import g\n")
    assert find_cycle(import_graph(tmp_path)) == ["robustkd.a", "robustkd.b", "robustkd.a"]


def string_constants(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


@pytest.mark.parametrize("path", [*(ROOT / s for s in STAGE_SCRIPTS), SRC / "robustkd" / "training.py"],
                         ids=lambda p: p.name)
def test_no_stage_script_or_training_loop_names_a_method(path):
    tree = ast.parse(path.read_text())
    compared = {node.value for cmp in ast.walk(tree) if isinstance(cmp, ast.Compare)
                for node in ast.walk(cmp) if isinstance(node, ast.Constant)}
    assert not compared & set(METHOD_NAMES), f"{path.name} branches on a method name"
    assert "FeatureMapHead" not in string_constants(path)
    imported = imports_of(path)
    assert not {m for m in imported if m.startswith("robustkd.methods.") and m.split(".")[2]
                in METHOD_NAMES}, f"{path.name} imports a method's own module"


def test_method_names_are_listed_once_and_followed():
    assert set(METHODS) == set(METHOD_NAMES)
    assert params_mod.SCHEMA.fields["method"].choices == METHOD_NAMES
    student_params = STAGES["student"]["params"]
    for method, keys in STUDENT_PARAMS.items():
        for key in keys:
            assert key.split(".")[0] in params_mod.SCHEMA.fields, (method, key)
            assert key in student_params or key.split(".")[0] in student_params, \
                f"dvc.yaml's student stage lacks `{key}`, which method {method} reads"
    # the teacher stage's resolved configuration knows every method's teacher and extras
    from robustkd.method_names import TEACHER_EXTRAS, TEACHER_TRAINING
    from robustkd.teacher_config import EXTRAS
    assert set(TEACHER_TRAINING) == set(METHOD_NAMES) and set(EXTRAS) == set(TEACHER_EXTRAS)
    assert set(TEACHER_TRAINING.values()) <= set(params_mod.TEACHER_TRAININGS) - {"auto"}
