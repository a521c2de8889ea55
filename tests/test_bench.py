"""tools/bench.py: its last line is one JSON object with the promised keys, and the pipeline timing reruns only the
attack and metrics stages after an attack-only change."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from tiny_repo import env, make_tiny_repo, run


def test_cpu_description_reads_the_model_name_and_the_flags_that_matter():
    import bench
    info = "processor\t: 0\nmodel name\t: Some CPU\ncpu family\t: 25\nmodel\t\t: 17\nflags\t\t: fpu avx2 avx512f sse\n" \
           "\nprocessor\t: 1\nmodel name\t: Some CPU\n"
    assert bench.cpu_description(info) == {"cpu": "Some CPU (family 25, model 17)", "cpu_flags": ["avx2", "avx512f"]}
    assert bench.cpu_description("")["cpu_flags"] == []


@pytest.mark.slow
def test_bench_quick_prints_the_promised_json():
    pytest.importorskip("torchattacks")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), "--quick"], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("train_speedup", "attack_speedup", "attack_speedup_distilled", "attack_speedup_robust",
                "eval_speedup", "eval_speedup_distilled", "eval_speedup_robust"):
        assert result[key] > 0
    assert result["cpu"] and isinstance(result["cpu_flags"], list)  # which processor the speedups belong to
    assert result["train"]["engine_images_per_s"] > 0 and result["train"]["reference_loading_only_images_per_s"] > 0
    for model in ("natural", "distilled", "robust"):
        assert result["attack"][model]["engine_images_per_s"] > 0 and result["attack"][model]["reference_images_per_s"] > 0
        assert 0 <= result["attack"][model]["engine_robust_acc"] <= 1
    assert set(result["train"]["reference_images_per_s"]) == {"workers_0", "workers_2"}
    # The cascade must not change the per-point worst case, on a weak and on an adversarially trained model.
    assert result["eval_identical_worst_case"] is True
    for model in ("natural", "distilled", "robust"):
        assert result["eval"][model]["autoattack_points"] <= result["eval"]["points"]
        ev = result["eval"][model]
        assert ev["square_points"] <= ev["autoattack_points"]
        # the breakdown: every attack of the suite timed, and the parts add up to no more than the whole
        assert {"clean", "fgsm_softmax_ce", "pgd_softmax_ce", "autoattack", "square", "sensitivity"} <= set(ev["full_parts_seconds"])
        assert sum(ev["full_parts_seconds"].values()) <= ev["full_seconds"] + 0.5
        assert sum(ev["cascade_parts_seconds"].values()) <= ev["cascade_seconds"] + 0.5
    assert result["train"]["bare_loop_images_per_s"] > 0 and result["train"]["bare_loop_bf16_images_per_s"] > 0
    # train_speedup is the engine as params.yaml runs it; its precision is named, and the fp32 engine timed beside it
    from robustkd.training import Engine, precision_name
    assert result["train"]["engine_precision"] == precision_name(torch.device(result["device"]), Engine())
    assert result["train"]["engine_fp32_images_per_s"] > 0 and result["train"]["speedup_fp32_engine"] > 0
    # The natural and distilled models follow the default pipeline's teacher / student schedules (--quick: 512 images).
    import yaml
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    models = result["attacked_models"]
    from robustkd.params import role_settings
    teacher, student = role_settings(params, "teacher"), role_settings(params, "student")
    assert models["natural"] == {"images": 512, "epochs": teacher["epochs"], "schedule": "params.yaml teacher"}
    assert models["distilled"]["epochs"] == [teacher["epochs"], student["epochs"]]
    assert models["distilled"]["temperature"] == params["temperature"]
    check_robust_train(result, params)


def check_robust_train(result: dict, params: dict) -> None:
    """robust_train: one PGD-AT epoch, params.yaml's inner attack (bf16 crafting where training is bf16) vs fp32."""
    from robustkd.training import Engine, precision_name
    robust = result["robust_train"]
    assert result["robust_train_speedup"] == robust["speedup"] > 0 and robust["cpu_speedup"] > 0
    precision = precision_name(torch.device(result["device"]), Engine.from_params(params["engine"]))
    assert robust["train_precision"] == precision and robust["fp32_attack_precision"] == "fp32"
    assert robust["attack_precision"] == (precision if params["train_attack"]["bf16"] else "fp32")
    assert robust["train_attack"]["steps"] == params["train_attack"]["steps"]
    assert robust["train_attack"]["bf16"] == params["train_attack"]["bf16"]
    assert len(robust["runs_seconds"]) == len(robust["fp32_attack_runs_seconds"]) == robust["repeats"]
    assert robust["seconds"] > 0 and robust["fp32_attack_seconds"] > 0 and robust["images"] == 512


@pytest.mark.slow
def test_only_robust_train_keeps_the_files_other_measurements(tmp_path):
    import yaml
    out = tmp_path / "bench.json"
    earlier = {"train_speedup": 2.0, "train": {"images": 1}, "cpu": "x", "device": "cpu", "threads": 2}
    out.write_text(json.dumps(earlier))
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), "--quick", "--only", "robust_train",
                           "--json", str(out)], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads(out.read_text())
    assert written == json.loads(proc.stdout.strip().splitlines()[-1])
    assert {k: written[k] for k in earlier} == earlier  # the other measurements are kept as they were
    assert "--only robust_train" in written["robust_train"]["command"] and written["robust_train"]["commit"]
    check_robust_train(written, yaml.safe_load((ROOT / "params.yaml").read_text()))


@pytest.mark.slow
def test_pipeline_timing_on_a_tiny_repo(tmp_path):
    import bench  # tools/, on sys.path through conftest

    repo = make_tiny_repo(tmp_path / "repo")
    result = bench.bench_pipeline(repo, tmp_path / "clone")
    names = [s["stage"] for s in result["stages"]]
    assert {"prepare", "teacher", "student", "attack", "metrics"} <= set(names)
    assert names.index("prepare") < names.index("teacher") < names.index("attack")
    # A python process with torch, at least; and each stage's own peak, not this (bigger) test process's size
    # carried over through fork.
    rss = [s["peak_rss_mib"] for s in result["stages"]]
    assert min(rss) > 50 and len(set(rss)) > 1
    # validate reruns too: it reads the whole params.yaml (a constant output, so nothing else reruns for it)
    assert result["attack_only_rerun_stages"] == ["attack", "metrics", "validate"] == result["exp_run"]["stages"]
    assert result["attack_only_rerun_command"] == "dvc repro"
    assert 0 < result["attack_only_fraction"] < 1 and 0 < result["exp_run"]["fraction"] < 1
    # The attack stage alone, with and without the cascade, on the models the tiny default run trained.
    stage = result["attack_stage"]
    assert stage["models"][0] == "teacher" and stage["models"][-1] == "student"
    assert stage["identical_worst_case"] is True
    assert stage["cascade_seconds"] > 0 and stage["full_seconds"] > 0
    assert run(["dvc", "status", "-q"], tmp_path / "clone").returncode == 0  # the clone keeps the default run
