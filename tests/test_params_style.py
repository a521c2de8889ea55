"""params.yaml is written the way DVC writes it, so `dvc exp run -S key=value` changes only the line it sets."""
import difflib
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override", ["temperature=50", "attack.n_points=200", "train_attack.eps=0.2"])
def test_a_dvc_set_param_rewrite_changes_exactly_one_line(tmp_path, override):
    """DVC's own `-S` code path (dvc.utils.hydra.apply_overrides: ruamel.yaml round trip) on a copy of params.yaml."""
    hydra = pytest.importorskip("dvc.utils.hydra")
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    before = path.read_text().splitlines()
    hydra.apply_overrides(path, [override])
    after = path.read_text().splitlines()
    changed = [line for line in difflib.unified_diff(before, after, lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    key, value = override.split("=")
    assert len(changed) == 2, "\n".join(changed)  # one line out, one line in
    assert changed[1][1:].split("#")[0].strip() == f"{key.split('.')[-1]}: {value}"
    old, new = yaml.safe_load("\n".join(before)), yaml.safe_load("\n".join(after))
    node = new
    for part in key.split(".")[:-1]:
        node = node[part]
    node[key.split(".")[-1]] = old_value(old, key)
    assert new == old  # nothing else moved


def old_value(params: dict, key: str):
    for part in key.split("."):
        params = params[part]
    return params


def test_dvc_style_round_trip_keeps_every_value_and_every_byte():
    """Rewriting params.yaml unchanged through DVC's YAML round trip gives the same bytes (the file is already in
    DVC's style: empty for null, block lists), and the values parse as before."""
    from dvc.utils.serialize import modify_yaml

    text = (ROOT / "params.yaml").read_text()
    path = Path(__file__).parent / ".params_roundtrip.yaml"
    try:
        path.write_text(text)
        with modify_yaml(path):
            pass
        assert path.read_text() == text
    finally:
        path.unlink(missing_ok=True)
    params = yaml.safe_load(text)
    assert params["data"]["train_subset"] is None and params["train_attack"]["eps"] is None
    assert params["attack"]["eps"] == [0.05, 0.1, 0.2, 0.3] and params["attack"]["autoattack"]["eps"] == [0.1]
    assert params["attack"]["autoattack"]["attacks"] is None  # standard AutoAttack: its attacks are fixed
