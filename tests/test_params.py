"""The params schema: typos, types, ranges and combinations fail early with messages that name the key."""
import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustkd.errors import ParamsError
from robustkd.params import validate

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
    ("dataset", "imagenet", "`dataset` = 'imagenet': unknown; allowed: fashion_mnist, mnist, cifar10"),
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
    assert params.load(tmp_path / "params.yaml")["teacher"]["lr"] == 0.003
    assert params.read_yaml(text) == BASE  # the shipped file reads the same either way
