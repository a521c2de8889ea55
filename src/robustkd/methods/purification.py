"""Method ``purification`` (Koo, Chae & Lee 2023) as a plug-in.

- teacher stage: the classifier (``teacher`` group; natural by default), then two CAE teachers in front of it
  (``purifier_teachers``): "normal" reconstructs x from noisy x, "adversarial" reconstructs x from PGD
  examples against the classifier. Each is saved as classifier∘purifier in models/purifiers/, and listed in that
  stage's manifest with the classifier it purifies for.
- assistant: no chain.
- student: a student CAE (``purifier_student``) distilled from both teachers, saved as classifier∘student.
- attack / metrics: every model is evaluated as deployed (adaptive attacks go through the purifier), plus the
  paper's protocol: examples crafted on the classifier alone (named by the manifest), then purified.

The classifier never trains again: its weights in every checkpoint equal models/teacher.pt.
"""
from __future__ import annotations

import torch

from .. import manifest
from ..adversarial import InnerAttack
from ..errors import ParamsError
from ..losses import AdversarialReconstruction, PurifierDistillation, PurifierReconstruction
from ..models import PURIFIERS, PurifiedClassifier, place, purified_spec, read_spec
from ..params import TRAINING_FIELDS, role_settings
from ..paths import LIVE_DIR, STUDENT_PATH, TEACHER_EXTRAS_DIR, TEACHER_PATH
from ..roles import RoleSpec, TrainingRun, load_model, train_role
from .base import Method, train_attack_record

TEACHER_PURIFIERS = ("purifier_normal", "purifier_adversarial")
CLASSIFIER_PATH = TEACHER_PATH
SINGLE_PROCESS_REASON = "purifier training (method purification) calls the purifier inside the model directly"


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
    return {k: v for k, v in group.items() if k not in TRAINING_FIELDS or k in ("arch", "width", "depth")}


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


class Purification(Method):
    description = ("Koo, Chae & Lee 2023: a normal and an adversarially trained autoencoder purifier, "
                   "ensemble-distilled into a student purifier in front of the fixed (teacher) classifier.")
    teacher_training = "natural"
    single_process_reason = SINGLE_PROCESS_REASON

    def train_teacher_extras(self, params: dict, run: TrainingRun) -> list[dict]:
        """After the classifier: the normal and the adversarial CAE teacher."""
        group = role_settings(params, "purifier_teachers")
        attack = InnerAttack.from_params(params)
        losses = {"purifier_normal": PurifierReconstruction(group["noise_std"]),
                  "purifier_adversarial": AdversarialReconstruction(attack)}
        models = []
        for i, role in enumerate(TEACHER_PURIFIERS, start=1):
            record = {"method": params["method"], "temperature": 1.0, "purifier": _purifier_group(group),
                      "train_attack": train_attack_record(attack) if role == "purifier_adversarial" else None}
            out_path = TEACHER_EXTRAS_DIR / f"{role}.pt"
            train_role(RoleSpec(role, group, params["seed"] + 500 + i, losses[role], out_path,
                                LIVE_DIR / "purifiers" / role, record, upstream=[CLASSIFIER_PATH],
                                params_group="purifier_teachers", build=_builder(group),
                                single_process_reason=SINGLE_PROCESS_REASON), run)
            models.append(manifest.entry(role, out_path, classifier="teacher"))
        return models

    def train_student(self, params: dict, run: TrainingRun) -> None:
        """A student CAE distilled from both purifier teachers, saved as classifier∘student."""
        group = role_settings(params, "purifier_student")
        paths = [TEACHER_EXTRAS_DIR / f"{name}.pt" for name in TEACHER_PURIFIERS]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ParamsError(f"{', '.join(missing)}: not found. The purifier teachers are trained by the teacher "
                              f"stage when method = purification: run `dvc repro teacher`.")
        normal, adversarial = (load_model(p)[0].purifier for p in paths)
        check_feature_matching(group, [normal, adversarial], list(run.meta["shape"]))
        attack = InnerAttack.from_params(params)
        loss = PurifierDistillation(normal, adversarial, attack, group["reconstruction_weight"],
                                    group["output_weight"], group["feature_weight"],
                                    group["adversarial_teacher_weight"], group["adversarial_fraction"])
        record = {"method": params["method"], "temperature": 1.0, "output_temperature": 1.0,
                  "distilled_from": "+".join(TEACHER_PURIFIERS), "purifier": _purifier_group(group),
                  "train_attack": train_attack_record(attack)}
        train_role(RoleSpec("student", group, params["seed"] + 1000, loss, STUDENT_PATH, LIVE_DIR / "student",
                            record, upstream=[CLASSIFIER_PATH, *paths], params_group="purifier_student",
                            build=_builder(group), single_process_reason=SINGLE_PROCESS_REASON), run)
