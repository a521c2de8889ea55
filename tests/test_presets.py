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


def test_every_preset_is_covered():
    assert {p.name for p in PRESETS.glob("*.yaml")} == {"cifar10.yaml", "cifar100.yaml", "robust_resnet18.yaml"}
