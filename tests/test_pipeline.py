"""End-to-end: the real DVC pipeline on a tiny config in a temporary git repo."""
import hashlib
import json
import re
import sys
from fractions import Fraction

import pytest

from robustkd.methods.darht_select import choose, subset_score
from robustkd.outcomes import read_outcomes
from tiny_repo import ROOT, darht_stages, make_tiny_repo, run, set_params, stages_run

pytestmark = pytest.mark.slow
DARHT_STAGES = darht_stages()   # markers only, unless method = darht; they rerun when `method` changes
CHECK = {"validate"}  # reruns (in well under a second) whenever params.yaml changes; its output never changes
ALL_STAGES = CHECK | {"prepare", "teacher", "assistant", "student", "surrogate", "predict", "attack", "metrics"} | DARHT_STAGES


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = make_tiny_repo(tmp_path_factory.mktemp("pipeline") / "repo")
    out = run(["dvc", "repro"], repo)
    assert stages_run(out.stdout) == ALL_STAGES
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline run"], repo)
    return repo


def test_outputs_and_metrics_schema(repo):
    metrics = json.loads((repo / "metrics.json").read_text())
    assert set(metrics) == {"teacher", "assistant_1", "student"}
    for m in metrics.values():
        assert 0 <= m["clean_acc"] <= 1 and m["n_attacked"] == 40
        assert set(m["worst_case"]) == {"eps_0p1", "eps_0p3"}
        # worst case is a per-point minimum over attacks: never above any single attack
        for attack, per_eps in m["robust_acc"].items():
            for key, acc in per_eps.items():
                assert m["worst_case"][key] <= acc, (attack, key)
        assert m["gradient_masking"] in (0, 1) and isinstance(m["masking_codes"], str)
        assert all("." not in k for k in m)  # flat keys for `dvc metrics diff`
        assert m["awp"] == 0 and m["awp_gamma"] is None  # `awp.enabled: false`: no model records AWP
    for name, m in metrics.items():  # clean accuracy is the predict stage's, read by the attack stage
        record = json.loads((repo / "results" / "predict" / f"{name}.json").read_text())
        assert len(record["predictions"]) == record["n_test"] == m["n_test"]
        assert round(record["clean_correct"] / record["n_test"], 4) == m["clean_acc"]
    for name in ("accuracy_vs_robustness", "robust_vs_eps", "sensitivity_vs_temperature"):
        assert json.loads((repo / "plots" / f"{name}.json").read_text())
    for name in ("accuracy_vs_robustness.png", "robust_vs_eps.png", "adversarial_examples.png"):
        assert (repo / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert (repo / "models" / "assistants" / "assistant_1.pt").is_file()
    assistants = json.loads((repo / "models" / "assistants" / "models.json").read_text())["models"]
    assert assistants[0] == {"name": "assistant_1", "checkpoint": "models/assistants/assistant_1.pt"}
    assert json.loads((repo / "models" / "purifiers" / "models.json").read_text())["models"] == []
    for name in ("papernot", "vit"):  # DARHT's teacher stages only wrote their (empty) manifests
        written = json.loads((repo / "models" / "darht" / name / "models.json").read_text())
        assert written["models"] == [] and not (repo / "models" / "darht" / name / "teacher.pt").exists()
    assert json.loads((repo / "darht_transferability.json").read_text())["teachers"] == []
    assert metrics["student"]["purifier"] is None and metrics["student"]["paper_protocol_headline"] is None
    # the per-point outcomes, committed with the run (cache: false), reproduce the metrics point by point
    outcomes = read_outcomes(run(["git", "show", "HEAD:results/outcomes.json"], repo).stdout)
    assert set(outcomes.models) == set(metrics) and len(outcomes.attack_points) == 40
    for name, m in metrics.items():
        o = outcomes.models[name]
        assert round(o.clean_correct.mean(), 4) == m["clean_acc"] and len(o.clean_correct) == m["n_test"]
        assert {k: round(v.mean(), 4) for k, v in o.worst_case.items()} == m["worst_case"]
        assert round(o.robust["pgd_margin"]["eps_0p1"].mean(), 4) == m["robust_acc"]["pgd_margin"]["eps_0p1"]


def test_second_repro_reruns_nothing(repo):
    out = run(["dvc", "repro"], repo)
    assert stages_run(out.stdout) == set()
    assert "up to date" in out.stdout.lower()


def test_attack_change_reruns_only_attack_and_metrics(repo):
    set_params(repo, attack__eps=[0.1, 0.2])
    out = run(["dvc", "repro"], repo)
    assert stages_run(out.stdout) == CHECK | {"attack", "metrics"}
    metrics = json.loads((repo / "metrics.json").read_text())
    assert set(metrics["student"]["worst_case"]) == {"eps_0p1", "eps_0p2"}
    run(["git", "checkout", "params.yaml"], repo)
    run(["dvc", "checkout"], repo)


def test_exp_run_temperature_reruns_training_not_prepare(repo):
    out = run(["dvc", "exp", "run", "-S", "temperature=50"], repo)
    assert stages_run(out.stdout) == CHECK | {"teacher", "assistant", "student", "predict", "attack", "metrics"}
    diff = json.loads(run(["dvc", "metrics", "diff", "--json", "--targets", "metrics.json"], repo).stdout)
    changed = diff["metrics.json"]  # the full metrics file, on request (headline.json is the default)
    assert "student.sensitivity_softmax" in changed or "student.clean_acc" in changed
    teacher_ckpt_info = json.loads((repo / "results" / "attack" / "teacher.json").read_text())["info"]
    assert teacher_ckpt_info["temperature"] == 50
    # Readable in a 160-column terminal (issue 25): the headline's columns and the changed param, once DVC's
    # dependency-hash columns (one 32-character md5 per changed file dep) are dropped as the README says.
    wide = {"COLUMNS": "1024"}  # the table's natural width, as DVC's pager shows it
    table = run(["dvc", "exp", "show", "--only-changed", "--no-pager", "--drop", ".*/|params.yaml"], repo, extra_env=wide)
    assert "temperature" in table.stdout and "worst_lo" in table.stdout
    assert max(map(len, table.stdout.splitlines())) <= 160, table.stdout
    assert len(run(["dvc", "metrics", "diff"], repo).stdout.encode()) < 5000
    # the committed run vs the experiment, by its name, from git alone: paired differences on the same 40 points
    name = re.search(r"Ran experiment\(s\): (\S+)", out.stdout).group(1)
    assert name in {ref.rsplit("/", 1)[-1] for ref in
                    run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).stdout.split()}
    out = run([sys.executable, str(ROOT / "tools" / "compare.py"), "HEAD", name], repo).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["b"]["kind"] == "experiment" and result["n_attacked"] == 40
    student = result["models"]["student"]["worst_case"]
    new = read_outcomes((repo / "results" / "outcomes.json").read_text()).models["student"]
    assert student["b_acc"] == round(new.worst_case["eps_0p1"].mean(), 4)
    assert student["ci_low"] <= student["diff"] <= student["ci_high"] and 0 < student["p_value"] <= 1


def test_plots_show_writes_html(repo):
    run(["dvc", "plots", "show", "-o", "plots_html"], repo)
    html = (repo / "plots_html" / "index.html").read_text()
    assert "Accuracy vs robustness" in html


def test_exp_run_robust_distillation_method_end_to_end(repo):
    """`dvc exp run -S method=ltd -S awp.enabled=true`: an adversarially trained teacher, no assistant chain
    (chain_length is ignored), a student that keeps its temperature, both trained with adversarial weight
    perturbation, the full evaluation, AWP recorded in metrics.json; prepare and surrogate are reused."""
    ltd = ["-S", "method=ltd", "-S", "ltd.output_temperature=2.0", "-S", "awp.enabled=true"]
    out = run(["dvc", "exp", "run", *ltd], repo)
    assert stages_run(out.stdout) == CHECK | {"teacher", "assistant", "student", "predict", "attack", "metrics"} | DARHT_STAGES
    assert "[student] adversarial weight perturbation: gamma 0.005, from epoch 1" in out.stdout
    metrics = json.loads((repo / "metrics.json").read_text())
    assert set(metrics) == {"teacher", "student"} and metrics["student"]["method"] == "ltd"
    teacher = json.loads((repo / "results" / "attack" / "teacher.json").read_text())["info"]
    student = json.loads((repo / "results" / "attack" / "student.json").read_text())["info"]
    assert teacher["training"] == "pgd_at" and teacher["loss_params"]["train_attack"]["eps"] == 0.1
    assert student["distilled_from"] == "teacher" and student["output_temperature"] == 2.0
    for name, info in (("teacher", teacher), ("student", student)):  # PGD-AT and LTD: both with AWP
        assert info["awp"] == {"enabled": True, "gamma": 0.005, "warmup_epochs": 0}
        assert (metrics[name]["awp"], metrics[name]["awp_gamma"], metrics[name]["awp_warmup_epochs"]) == (1, 0.005, 0)
    timing = json.loads((repo / "timing.json").read_text())
    assert set(timing["train_seconds"]) == {"teacher", "student"} and timing["train_seconds_total"] > 0
    # a robust-training setting reruns training; the attack settings alone would not
    out = run(["dvc", "exp", "run", *ltd, "-S", "ltd.beta=1.0"], repo)
    assert stages_run(out.stdout) == CHECK | {"student", "predict", "attack", "metrics"}
    # ARD, RSLAD and LTD share one robust teacher: the teacher stage depends on its resolved configuration
    # (results/config/teacher.json), not on `method`, so switching among them, or changing a setting the teacher does
    # not read, reruns nothing there ...
    robust_teacher = md5(repo / "models" / "teacher.pt")
    for changes in ({"method": "rslad"}, {"method": "ard", "temperature": 50, "ard__kd_temperature": 4.0}):
        set_params(repo, **changes)
        assert stages_run(run(["dvc", "repro", "teacher"], repo).stdout) == CHECK, changes
        assert md5(repo / "models" / "teacher.pt") == robust_teacher
    # ... while the teacher's own settings retrain it. Set back, DVC's run cache restores the teacher trained before
    # (every output of the stage is cached, its dvclive logs too), without training.
    set_params(repo, teacher__epochs=1)
    assert stages_run(run(["dvc", "repro", "teacher"], repo).stdout) == CHECK | {"teacher"}
    assert md5(repo / "models" / "teacher.pt") != robust_teacher
    set_params(repo, teacher__epochs=2)
    out = run(["dvc", "repro", "teacher"], repo).stdout
    assert stages_run(out) == CHECK and "Stage 'teacher' is cached - skipping run" in out
    assert md5(repo / "models" / "teacher.pt") == robust_teacher
    run(["git", "checkout", "params.yaml"], repo)
    run(["dvc", "checkout"], repo)


def test_teacher_from_a_file(repo):
    """`teacher.init_from` with `teacher.epochs: 0`: the file's weights as they are, in a sealed checkpoint that
    records the file's sha256; editing the file reruns validate and the teacher; a pickle payload stops the pipeline
    at validate, before DVC removes any output."""
    import torch

    from robustkd.models import load_checkpoint

    start = repo / "pretrained" / "start.pt"
    trained, _ = load_checkpoint(repo / "models" / "teacher.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}, start)
    set_params(repo, teacher__init_from="pretrained/start.pt", teacher__epochs=0)
    assert stages_run(run(["dvc", "repro", "teacher"], repo).stdout) == CHECK | {"teacher"}
    model, info = load_checkpoint(repo / "models" / "teacher.pt")  # sealed: seal and digest checked
    assert info["best_epoch"] == 0 and info["init_from"]["path"] == "pretrained/start.pt"
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())
    config = json.loads((repo / "results" / "config" / "teacher.json").read_text())
    assert config["init_from"] == info["init_from"] and len(info["init_from"]["sha256"]) == 64
    # the file changes, its name does not: validate records the new sha256, and the teacher reruns
    torch.save({k: v + 1 if v.is_floating_point() and not k.startswith("normalize.") else v
                for k, v in trained.state_dict().items()}, start)
    assert stages_run(run(["dvc", "repro", "teacher"], repo).stdout) == CHECK | {"teacher"}
    model, info2 = load_checkpoint(repo / "models" / "teacher.pt")
    assert info2["init_from"]["sha256"] != info["init_from"]["sha256"]
    assert torch.equal(model.head.bias, trained.head.bias + 1)
    assert stages_run(run(["dvc", "repro", "teacher"], repo).stdout) == set()
    before = md5(repo / "models" / "teacher.pt")
    start.write_bytes(b"PK\x03\x04 not a checkpoint")
    out = run(["dvc", "repro", "teacher"], repo, check=False)
    assert out.returncode != 0 and "`teacher.init_from` = 'pretrained/start.pt': not a PyTorch checkpoint" in out.stderr
    assert md5(repo / "models" / "teacher.pt") == before  # nothing removed
    start.unlink()
    run(["git", "checkout", "--", "."], repo)  # params.yaml, dvc.lock, results/config/teacher.json
    run(["dvc", "checkout"], repo)
    assert "up to date" in run(["dvc", "status"], repo).stdout.lower()


def test_exp_run_purification_end_to_end(repo):
    """`dvc exp run -S method=purification`: the teacher stage trains the classifier and both purifier teachers,
    the student is a purifier in front of the same classifier, and every model gets both protocols."""
    import torch

    out = run(["dvc", "exp", "run", "-S", "method=purification"], repo)
    assert stages_run(out.stdout) == CHECK | {"teacher", "assistant", "student", "predict", "attack", "metrics"} | DARHT_STAGES
    metrics = json.loads((repo / "metrics.json").read_text())
    assert set(metrics) == {"teacher", "purifier_normal", "purifier_adversarial", "student"}
    assert metrics["teacher"]["purifier"] is None and metrics["teacher"]["arch"] == "papernot_cnn"
    for name in ("purifier_normal", "purifier_adversarial", "student"):
        m = metrics[name]
        assert m["purifier"] == "cae" and m["arch"] == "cae+papernot_cnn"
        assert 0 <= m["paper_protocol_headline"] <= 1 and 0 <= m["ssim_clean"] <= 1 and m["psnr_clean"] > 0
        assert m["worst_case_headline"] <= min(m["paper_protocol_headline"], m["adaptive_headline"])
    student = json.loads((repo / "results" / "attack" / "student.json").read_text())["info"]
    assert student["distilled_from"] == "purifier_normal+purifier_adversarial"
    load = lambda p: torch.load(repo / p, weights_only=True)["state_dict"]  # noqa: E731
    classifier = load("models/teacher.pt")
    for path in ("models/student.pt", "models/purifiers/purifier_adversarial.pt"):
        fixed = {k[len("classifier."):]: v for k, v in load(path).items() if k.startswith("classifier.")}
        assert fixed.keys() == classifier.keys() and all(torch.equal(fixed[k], classifier[k]) for k in classifier)
    assert (repo / "plots" / "adversarial_examples.png").read_bytes()[:4] == b"\x89PNG"
    # a distillation setting reruns the student and the evaluation, not the classifier or the teachers
    out = run(["dvc", "exp", "run", "-S", "method=purification", "-S",
               "purifier_student.adversarial_teacher_weight=1.0"], repo)
    assert stages_run(out.stdout) == CHECK | {"student", "predict", "attack", "metrics"}
    # the paper's single-teacher student: the teacher stage trains the adversarial purifier teacher only (the same
    # model as in the ensemble: its seed and record are its own), and the student distils from it alone
    adversarial = md5(repo / "models" / "purifiers" / "purifier_adversarial.pt")
    out = run(["dvc", "exp", "run", "-S", "method=purification", "-S", "purifier_student.teachers=[adversarial]",
               "student"], repo)
    assert stages_run(out.stdout) == CHECK | {"teacher", "student"}
    assert sorted(p.name for p in (repo / "models" / "purifiers").iterdir()) == ["models.json",
                                                                                "purifier_adversarial.pt"]
    listed = json.loads((repo / "models" / "purifiers" / "models.json").read_text())["models"]
    assert [m["name"] for m in listed] == ["purifier_adversarial"]
    assert md5(repo / "models" / "purifiers" / "purifier_adversarial.pt") == adversarial
    from robustkd.models import read_info
    student = read_info(repo / "models" / "student.pt")
    assert student["purifier_teachers"] == ["adversarial"] and student["distilled_from"] == "purifier_adversarial"
    assert "adversarial_teacher_weight" not in student["purifier"]
    run(["git", "checkout", "params.yaml"], repo)
    run(["dvc", "checkout"], repo)


def test_exp_run_darht_end_to_end(repo):
    """`dvc exp run -S method=darht`: four teachers of four families, each from its own stage, a student with a
    C*K feature-map head, the full suite on the student, transfer from each teacher, the transferability matrix.
    Changing one teacher retrains that teacher only (then the student and the evaluation)."""
    darht = ["-S", "method=darht", "-S", "attack.n_points=20"]  # 6 models to attack: half the points
    out = run(["dvc", "exp", "run", *darht], repo)
    assert stages_run(out.stdout) == CHECK | {"teacher", "assistant", "student", "predict", "attack", "metrics"} | DARHT_STAGES
    used = ["papernot", "resnet", "mobilenetv2", "vit"]
    # the default pool: the 4 used teachers only, and the selection's marker (darht.select.k is null)
    assert DARHT_STAGES == {f"darht_teacher@{n}" for n in used} | {"darht_select"}
    assert json.loads((repo / "results" / "darht_select.json").read_text())["selected"] is False
    metrics = json.loads((repo / "metrics.json").read_text())
    assert set(metrics) == {"teacher", "student", *(f"darht_{n}" for n in used)}
    assert [metrics[f"darht_{n}"]["arch"] for n in used] == ["papernot_cnn", "resnet_small", "mobilenetv2_small",
                                                             "vit_small"]
    student = metrics["student"]
    assert student["method"] == "darht" and student["autoattack_headline"] is not None
    for n in used:  # black-box transfer from each teacher to the student, at every eps
        assert set(student["robust_acc"][f"transfer_darht_{n}"]) == {"eps_0p1", "eps_0p3"}
        assert metrics[f"darht_{n}"]["autoattack_headline"] is None  # teachers: the reduced suite
        assert student["worst_case"]["eps_0p1"] <= student["robust_acc"][f"transfer_darht_{n}"]["eps_0p1"]
    info = json.loads((repo / "results" / "attack" / "student.json").read_text())["info"]
    assert info["darht_teachers"] == used and info["distilled_from"] == "+".join(f"darht_{n}" for n in used)
    matrix = json.loads((repo / "darht_transferability.json").read_text())
    assert matrix["teachers"] == [f"darht_{n}" for n in used]
    assert all(0 <= v <= 1 for row in matrix["success_rate"].values() for v in row.values() if v is not None)
    assert set(matrix["success_rate_on_student"]) == set(matrix["teachers"])
    cells = json.loads((repo / "plots" / "darht_transferability.json").read_text())
    assert len(cells) == 4 * 5  # K x (K teachers + the student)
    assert (repo / "plots" / "darht" / "transferability.png").read_bytes()[:4] == b"\x89PNG"
    timing = json.loads((repo / "timing.json").read_text())
    assert {f"darht_{n}" for n in used} <= set(timing["train_seconds"])
    # one teacher changes: only its stage retrains, then the student and the evaluation (and darht_select, which
    # reads the pool: without a selection it rewrites its marker, unchanged)
    out = run(["dvc", "exp", "run", *darht, "-S", "darht.pool.vit.depth=2"], repo)
    assert stages_run(out.stdout) == CHECK | {"darht_teacher@vit", "darht_select", "student", "predict", "attack",
                                              "metrics"}
    # student-side settings leave every teacher alone: here, with darht.select.k = 2, the student learns from the 2
    # of the 4 candidates with the lowest mean pairwise transferability on the validation split
    out = run(["dvc", "exp", "run", *darht, "-S", "darht.pool.vit.depth=2", "-S", "darht.adversarial_prob=1.0",
               "-S", "darht.select.k=2"], repo)
    assert stages_run(out.stdout) == CHECK | {"darht_select", "student", "predict", "attack", "metrics"}
    selection = json.loads((repo / "results" / "darht_select.json").read_text())
    assert selection["selected"] is True and selection["split"] == "val" and selection["n_points"] == 60
    assert selection["candidates"] == used and len(selection["chosen"]) == 2
    exact = {s: {t: Fraction(selection["n_fooled"][s][t], n) if n else None
                 for t, n in row.items()} for s, row in selection["n_both_correct"].items()}
    assert choose(used, exact, 2) == (selection["chosen"], subset_score(selection["chosen"], exact))
    assert round(float(subset_score(selection["chosen"], exact)), 4) == selection["score"]
    assert len(json.loads((repo / "plots" / "darht_select.json").read_text())) == 4 * 4
    student = json.loads((repo / "metrics.json").read_text())["student"]
    assert student["darht_selection"]["chosen"] == selection["chosen"]
    assert student["darht_selection"]["success_rate"] == selection["success_rate"]
    info = json.loads((repo / "results" / "attack" / "student.json").read_text())["info"]
    assert info["darht_teachers"] == selection["chosen"]  # distilled from the chosen teachers only
    matrix = json.loads((repo / "darht_transferability.json").read_text())
    assert matrix["teachers"] == [f"darht_{n}" for n in used]  # every candidate is still evaluated (test split)
    assert matrix["chosen"] == [f"darht_{n}" for n in selection["chosen"]]
    assert (repo / "plots" / "darht" / "selection.png").read_bytes()[:4] == b"\x89PNG"
    run(["git", "checkout", "params.yaml"], repo)
    run(["dvc", "checkout"], repo)
