"""The verdicts must not depend on the processor (issue 25): the committed default run, trained under bf16 autocast,
and the same run trained in fp32 (results/precision/fp32/, made by the command in results/precision/README.md)
flag the same models for gradient masking."""
import json

from conftest import ROOT
from robustkd.params import read_yaml

FP32 = ROOT / "results" / "precision" / "fp32"


def test_the_fp32_run_is_the_default_run_but_for_the_precision():
    default, fp32 = (read_yaml((p / "params.yaml").read_text()) for p in (ROOT, FP32))
    assert fp32["engine"]["bf16"] is False
    fp32["engine"]["bf16"] = default["engine"]["bf16"]
    assert fp32 == default
    assert {m["train_precision"] for m in json.loads((FP32 / "metrics.json").read_text()).values()} == {"fp32"}


def test_every_model_gets_the_same_masking_flag_in_fp32_and_bf16():
    default, fp32 = (json.loads((p / "metrics.json").read_text()) for p in (ROOT, FP32))
    assert set(default) == set(fp32)
    assert {n: m["gradient_masking"] for n, m in fp32.items()} == {n: m["gradient_masking"] for n, m in default.items()}
