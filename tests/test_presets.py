"""Every shipped preset merges into params.yaml and passes the schema (alone, and robust on top of a dataset)."""
from pathlib import Path

import pytest
import yaml

from apply_preset import merge
from conftest import ROOT
from robustkd.params import validate

PRESETS = ROOT / "src" / "presets"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("dataset", ["cifar10.yaml", "cifar100.yaml"])
def test_dataset_presets_alone_and_with_robust_training(dataset):
    base = load(ROOT / "params.yaml")
    with_dataset = validate(merge(base, load(PRESETS / dataset)))
    robust = validate(merge(with_dataset, load(PRESETS / "robust_resnet18.yaml")))
    assert robust["student"]["arch"] == robust["teacher"]["arch"] == "resnet18"
    assert robust["train_attack"]["eps"] is None and robust["attack"]["headline_eps"] == pytest.approx(8 / 255)
    assert robust["train_attack"]["steps"] == 10


def test_darht_homogeneous_preset_swaps_the_families_for_one_family_and_keeps_k():
    base = validate(load(ROOT / "params.yaml"))
    homo = validate(merge(base, load(PRESETS / "darht_homogeneous.yaml")))
    used = lambda p: [t for t in p["darht"]["pool"].values() if t["use"]]  # noqa: E731
    hetero = used({**base, "method": "darht"})
    assert homo["method"] == "darht" and len(used(homo)) == len(hetero) == 4
    assert {t["arch"] for t in used(homo)} == {"papernot_cnn"} and len({t["seed"] for t in used(homo)}) == 4
    assert len({t["arch"] for t in hetero}) == 4  # the default set spans four families
    # everything else (student, training budget, evaluation) is the same
    for key in ("student", "train_attack", "attack"):
        assert homo[key] == base[key]
    assert {k: v for k, v in homo["darht"].items() if k != "pool"} == {k: v for k, v in base["darht"].items() if k != "pool"}


def test_darht_select_pool_preset_gives_six_candidates_of_four_families_and_k():
    base = validate(load(ROOT / "params.yaml"))
    preset = validate(merge(base, load(PRESETS / "darht_select_pool.yaml")))
    candidates = [t for t in preset["darht"]["pool"].values() if t["use"]]
    assert preset["method"] == "darht" and len(candidates) >= 6
    assert {t["arch"] for t in candidates} == {"papernot_cnn", "resnet_small", "mobilenetv2_small", "vit_small"}
    assert len({(t["arch"], t["width"], t.get("depth"), t["seed"]) for t in candidates}) == len(candidates)
    assert 2 <= preset["darht"]["select"]["k"] < len(candidates)
    # `dvc exp run -S darht.select.k=3` on top of it is valid too; the training budget is the default pool's
    validate({**preset, "darht": {**preset["darht"], "select": {**preset["darht"]["select"], "k": 3}}})
    assert preset["darht"]["teacher_training"] == base["darht"]["teacher_training"]


def test_every_preset_is_covered():
    assert {p.name for p in PRESETS.glob("*.yaml")} == {"cifar10.yaml", "cifar100.yaml", "robust_resnet18.yaml",
                                                       "darht_homogeneous.yaml", "darht_select_pool.yaml"}
