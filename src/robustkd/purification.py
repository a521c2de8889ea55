"""Method ``purification`` (Koo, Chae & Lee 2023) on the six stages.

- teacher: the classifier (``teacher`` group; natural by default), then two CAE teachers in front of it
  (``purifier_teachers``): "normal" reconstructs x from noisy x, "adversarial" reconstructs x from PGD
  examples against the classifier. Each is saved as classifier∘purifier in models/purifiers/.
- assistant: no chain.
- student: a student CAE (``purifier_student``) distilled from both teachers, saved as classifier∘student.
- attack / metrics: every model is evaluated as deployed (adaptive attacks go through the purifier), plus the
  paper's protocol: examples crafted on the classifier alone, then purified (``robustkd.evaluation``).

The classifier never trains again: its weights in every checkpoint equal models/teacher.pt.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .adversarial import InnerAttack
from .errors import ParamsError
from .io import atomic_write_json
from .losses import AdversarialReconstruction, PurifierDistillation, PurifierReconstruction
from .models import PURIFIERS, PurifiedClassifier, place, purified_spec, read_spec
from .pipeline import LIVE_DIR, MODELS_DIR, load_model, train_role

PURIFIERS_DIR = MODELS_DIR / "purifiers"
PURIFIERS_MANIFEST = PURIFIERS_DIR / "purifiers.json"
TEACHER_PURIFIERS = ("purifier_normal", "purifier_adversarial")
CLASSIFIER_PATH = MODELS_DIR / "teacher.pt"


def purifier_paths() -> list[Path]:
    """The teacher stage's purifiers (empty unless method = purification)."""
    if not PURIFIERS_MANIFEST.is_file():
        raise ParamsError(f"{PURIFIERS_MANIFEST}: not found. Run `dvc repro teacher` first.")
    return [PURIFIERS_DIR / name for name in json.loads(PURIFIERS_MANIFEST.read_text())["purifiers"]]


def write_manifest(names: list[str]) -> None:
    atomic_write_json(PURIFIERS_MANIFEST, {"purifiers": names})
    # Also in the live folder: git drops empty folders, and DVC would then see that output missing.
    atomic_write_json(LIVE_DIR / "purifiers" / "purifiers.json", {"purifiers": names})


def clear_outputs() -> None:
    """DVC removes a stage's outputs before running it; clear leftovers of a manual run too."""
    shutil.rmtree(PURIFIERS_DIR, ignore_errors=True)
    shutil.rmtree(LIVE_DIR / "purifiers", ignore_errors=True)
    PURIFIERS_DIR.mkdir(parents=True)


def _builder(group: dict):
    """build(device) for train_role: a fresh purifier (seeded by train_role) before the saved classifier."""
    def build(device: torch.device):
        spec = purified_spec(group["arch"], group["width"], group["depth"], read_spec(CLASSIFIER_PATH))
        classifier, _ = load_model(CLASSIFIER_PATH)
        p = spec["purifier"]
        purifier = PURIFIERS[p["arch"]](p["channels"], p["width"], p["depth"])
        return place(PurifiedClassifier(purifier, classifier), device), spec
    return build


def _purifier_group(group: dict) -> dict:
    """The group's own settings (not the training ones, which TrainConfig already fingerprints)."""
    training = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "augment")
    return {k: v for k, v in group.items() if k not in training}


def train_teacher_purifiers(params: dict, meta: dict, train_data, val_data) -> list[str]:
    """After the classifier: the normal and the adversarial CAE teacher, in models/purifiers/."""
    group = params["purifier_teachers"]
    attack = InnerAttack.from_params(params)
    losses = {"purifier_normal": PurifierReconstruction(group["noise_std"]),
              "purifier_adversarial": AdversarialReconstruction(attack)}
    names = []
    for i, role in enumerate(TEACHER_PURIFIERS, start=1):
        extra = {"method": params["method"], "temperature": 1.0, "purifier": _purifier_group(group),
                 "train_attack": {"eps": attack.eps, "steps": attack.steps, "step_size": attack.step_size,
                                  "mode": attack.mode} if role == "purifier_adversarial" else None}
        train_role(role, group, params["seed"] + 500 + i, losses[role], PURIFIERS_DIR / f"{role}.pt",
                   LIVE_DIR / "purifiers" / role, meta, train_data, val_data, extra_info=extra,
                   upstream=[CLASSIFIER_PATH], cuda_deterministic=params["cuda_deterministic"],
                   engine=params["engine"],
                   params_group="purifier_teachers", build=_builder(group))
        names.append(f"{role}.pt")
    return names


def check_feature_matching(student_group: dict, teachers: list[torch.nn.Module], shape: list[int]) -> None:
    """Feature distillation compares codes element-wise: the student's code must have the teachers' shape."""
    if not student_group["feature_weight"]:
        return
    p = student_group
    student = PURIFIERS[p["arch"]](shape[0], p["width"], p["depth"])
    probe = torch.zeros(1, *shape)
    if not all(hasattr(m, "encode") for m in (student, *teachers)):
        raise ParamsError("`purifier_student.feature_weight` > 0 needs autoencoders (arch: cae) for the student and "
                          "both teachers; set it to 0 or use arch cae")
    with torch.no_grad():
        want = [tuple(t.cpu().encode(probe)[0].shape) for t in teachers]
        got = tuple(student.encode(probe)[0].shape)
    if any(w != got for w in want):
        raise ParamsError(f"`purifier_student.feature_weight` > 0 matches codes, but the student's code has shape {got} "
                          f"and the teachers' {want}: give `purifier_student` the same width and depth as "
                          f"`purifier_teachers`, or set feature_weight to 0")


def train_student_purifier(params: dict, meta: dict, train_data, val_data) -> None:
    group = params["purifier_student"]
    paths = [PURIFIERS_DIR / f"{name}.pt" for name in TEACHER_PURIFIERS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ParamsError(f"{', '.join(missing)}: not found. The purifier teachers are trained by the teacher stage "
                          f"when method = purification: run `dvc repro teacher`.")
    normal, adversarial = (load_model(p)[0].purifier for p in paths)
    check_feature_matching(group, [normal, adversarial], list(meta["shape"]))
    attack = InnerAttack.from_params(params)
    loss = PurifierDistillation(normal, adversarial, attack, group["reconstruction_weight"], group["output_weight"],
                                group["feature_weight"], group["adversarial_teacher_weight"],
                                group["adversarial_fraction"])
    train_role("student", group, params["seed"] + 1000, loss, MODELS_DIR / "student.pt", LIVE_DIR / "student", meta,
               train_data, val_data,
               extra_info={"method": params["method"], "temperature": 1.0, "output_temperature": 1.0,
                           "distilled_from": "+".join(TEACHER_PURIFIERS), "purifier": _purifier_group(group),
                           "train_attack": {"eps": attack.eps, "steps": attack.steps, "step_size": attack.step_size,
                                            "mode": attack.mode}},
               upstream=[CLASSIFIER_PATH, *paths], cuda_deterministic=params["cuda_deterministic"],
               engine=params["engine"],
               params_group="purifier_student", build=_builder(group))
