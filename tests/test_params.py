"""The params schema: typos, types, ranges and combinations fail early with messages that name the key."""
import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustkd.errors import ParamsError
from robustkd.params import validate

ROOT = Path(__file__).resolve().parents[1]

BASE = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())


def with_change(path: str, value):
    p = copy.deepcopy(BASE)
    node, keys = p, path.split(".")
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return p


def test_shipped_params_are_valid():
    assert validate(copy.deepcopy(BASE)) == BASE


@pytest.mark.parametrize("path,value,expected", [
    ("dataset", "imagenet21k", "`dataset` = 'imagenet21k': unknown; allowed: fashion_mnist, mnist, cifar10"),
    ("teacher.arch", "resnet19", "did you mean 'resnet18'"),
    ("method", "distillation", "did you mean 'defensive_distillation'?"),
    ("temperature", 0, "`temperature` = 0: out of range"),
    ("temperature", -5.0, "`temperature` = -5.0: out of range"),
    ("chain_length", -1, "`chain_length` = -1: out of range"),
    ("chain_length", 1.5, "`chain_length` = 1.5: must be an integer"),
    ("chain_length", True, "`chain_length` = True: must be an integer"),
    ("attack.eps", [0.1, 1.5], "`attack.eps[1]` = 1.5: out of range; allowed: [0.0, 1.0]"),
    ("attack.headline_eps", 0.15, "`attack.headline_eps` = 0.15: must be one of `attack.eps`"),
    ("student.kd_lambda", 2, "`student.kd_lambda` = 2: out of range"),
    ("cuda_deterministic", "yes", "`cuda_deterministic` = 'yes': must be true or false"),
])
def test_bad_values_name_key_value_and_allowed(path, value, expected):
    with pytest.raises(ParamsError) as err:
        validate(with_change(path, value))
    assert expected in str(err.value)


def test_typo_suggests_the_closest_key():
    p = copy.deepcopy(BASE)
    p["temprature"] = p.pop("temperature")
    with pytest.raises(ParamsError) as err:
        validate(p)
    msg = str(err.value)
    assert "`temprature`: unknown key; did you mean `temperature`?" in msg
    assert "`temperature`: missing" in msg


def test_nested_typo():
    p = with_change("teacher.epocs", 3)
    with pytest.raises(ParamsError, match=r"`teacher\.epocs`: unknown key; did you mean `teacher\.epochs`"):
        validate(p)


def test_all_problems_reported_at_once():
    p = with_change("dataset", "nope")
    p["temperature"] = -1
    with pytest.raises(ParamsError) as err:
        validate(p)
    assert "`dataset`" in str(err.value) and "`temperature`" in str(err.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_random_documents_are_accepted_or_rejected_cleanly(doc):
    try:
        validate(doc)
    except ParamsError:
        pass


def _leaf_paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaf_paths(v, prefix + (k,))
    else:
        yield prefix


LEAVES = sorted(_leaf_paths(BASE))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(LEAVES), json_values)
def test_mutating_one_key_never_crashes(path, value):
    p = copy.deepcopy(BASE)
    node = p
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    try:
        validate(p)
    except ParamsError as err:
        assert ".".join(path) in str(err) or "attack" in str(err)


def test_params_are_read_as_yaml_1_2_like_dvc(tmp_path):
    """DVC reads params.yaml as YAML 1.2 (ruamel.yaml); PyYAML's 1.1 rules read `3e-3` as a string, `yes` as true,
    `010` as 8. The project's loader must agree with DVC, or a value DVC accepts fails our schema (or worse, differs)."""
    from robustkd import params

    doc = params.read_yaml("a: 3e-3\nb: 1E+2\nc: yes\nd: 010\ne: 1:30\nf: .inf\ng: 0o17\nh: 0x1f\ni: true\nj: -2\n")
    assert doc == {"a": 0.003, "b": 100.0, "c": "yes", "d": 10, "e": "1:30", "f": float("inf"), "g": 15, "h": 31,
                   "i": True, "j": -2}
    assert yaml.safe_load("a: 3e-3")["a"] == "3e-3"  # what the 1.1 reader did
    text = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text.replace("  lr: 0.003\n", "  lr: 3e-3\n", 1))
    assert params.load(tmp_path / "params.yaml")["training"]["lr"] == 0.003
    assert params.read_yaml(text) == BASE  # the shipped file reads the same either way


# --- params.yaml layout (issue 20 item 4): shared training defaults once, per-role overrides ---------------------
def _mappings(node, path=""):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _mappings(value, f"{path}.{key}" if path else str(key))


def test_no_five_identical_key_value_pairs_appear_twice_in_params_yaml():
    """Shared settings are given once: no two groups of params.yaml share five or more identical `key: value` pairs
    (stricter than a block of five consecutive lines)."""
    from robustkd import params

    doc = params.read_yaml((ROOT / "params.yaml").read_text())
    scalars = {path: {(k, repr(v)) for k, v in m.items() if not isinstance(v, (dict, list))}
               for path, m in _mappings(doc)}
    paths = sorted(scalars)
    shared = [(a, b, sorted(scalars[a] & scalars[b])) for i, a in enumerate(paths) for b in paths[i + 1:]]
    repeated = [(a, b, pairs) for a, b, pairs in shared if len(pairs) >= 5]
    assert not repeated, f"groups repeating >= 5 identical key: value pairs (move them to a shared group): {repeated}"


def test_role_settings_are_the_shared_defaults_then_the_role_group():
    from robustkd import params

    p = params.load(ROOT / "params.yaml")
    for role in params.TRAINING_ROLES:
        settings = params.role_settings(p, role)
        assert set(params.TRAINING_FIELDS) <= set(settings)
        for key in params.TRAINING_FIELDS:
            assert settings[key] == p[role].get(key, p["training"][key])
    p = copy.deepcopy(p)
    p["student"]["lr"] = 0.01
    assert params.role_settings(p, "student")["lr"] == 0.01 and params.role_settings(p, "assistant")["lr"] == p["training"]["lr"]
    assert params.setting_key(p, "student", "lr") == "student.lr"
    assert params.setting_key(p, "assistant", "lr") == "training.lr"
    assert params.setting_key(p, "darht.pool.vit", "epochs") == "training.epochs"
    vit = params.darht_teacher_settings(p, "vit")
    assert vit["epochs"] == p["darht"]["teacher_training"]["epochs"] and vit["optimizer"] == p["training"]["optimizer"]
    assert params.darht_teacher_settings(p, "papernot")["depth"] is None  # depth left out: the arch's default


@pytest.mark.parametrize("edit,message", [
    (lambda p: p["training"].update(optimizer="adamw"),
     "`training.optimizer` = 'adamw': unknown; allowed: sgd, adam (did you mean 'adam'?)"),
    (lambda p: p["training"].pop("lr"), "`training.lr`: missing"),
    (lambda p: p["training"].update(lrr=0.1), "`training.lrr`: unknown key; did you mean `training.lr`?"),
    (lambda p: p["teacher"].update(epoch=5), "`teacher.epoch`: unknown key; did you mean `teacher.epochs`?"),
    (lambda p: p["student"].update(schedule="cosin"),
     "`student.schedule` = 'cosin': unknown; allowed: constant, cosine (did you mean 'cosine'?)"),
    (lambda p: p["surrogate"].update(arch="lenett"), "`surrogate.arch` = 'lenett': unknown; allowed:"),
    (lambda p: p["purifier_student"].pop("arch"), "`purifier_student.arch`: missing"),
    (lambda p: p["purifier_teachers"].update(arch="papernot_cnn"),
     "`purifier_teachers.arch` = 'papernot_cnn': unknown; allowed: cae, identity"),
    (lambda p: p["darht"]["teacher_training"].update(optimiser="sgd"),
     "`darht.teacher_training.optimiser`: unknown key; did you mean `darht.teacher_training.optimizer`?"),
    (lambda p: p["ard"].update(temperature=p["ard"].pop("kd_temperature")),
     "`ard.temperature`: unknown key; did you mean `ard.kd_temperature`?"),
])
def test_schema_rejects_bad_shared_and_role_settings(edit, message):
    from robustkd import params

    p = copy.deepcopy(params.load(ROOT / "params.yaml"))
    edit(p)
    with pytest.raises(ParamsError) as err:
        params.validate(p)
    assert message in str(err.value)


def test_each_training_stage_lists_the_shared_training_group_and_its_role_group():
    """Changing a shared default reruns every training stage; changing a role's key reruns that stage only."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    groups = {"assistant": {"assistant"},  # the teacher: tests/test_stage_deps.py (its resolved configuration)
              "student": {"student", "purifier_student"}, "surrogate": {"surrogate"},
              "darht_teacher": {"darht.pool.${key}", "darht.teacher_training"}}
    for name, own in groups.items():
        body = stages[name].get("do", stages[name])
        assert {"training", *own} <= set(body["params"]), name
    for name in ("prepare", "predict", "attack", "metrics"):
        assert "training" not in stages[name].get("params", []), name
