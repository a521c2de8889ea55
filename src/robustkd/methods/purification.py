"""Method ``purification`` (Koo, Chae & Lee 2023) as a plug-in.

- teacher stage: the classifier (``teacher`` group; natural by default), then the CAE teachers in front of it
  that ``purifier_student.teachers`` lists (``purifier_teachers``): "normal" reconstructs x from noisy x,
  "adversarial" reconstructs x from PGD examples against the classifier. Each is saved as classifier∘purifier in
  models/purifiers/, and listed in that stage's manifest with the classifier it purifies for. Each teacher's seed
  and record are its own, so a teacher trained alone is the same model as in the ensemble.
- assistant: no chain.
- student: a student CAE (``purifier_student``) distilled from the listed teachers (both: the ensemble, weighted by
  ``adversarial_teacher_weight``; one: that teacher alone, the weight unused), saved as classifier∘student.
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
from ..params import PURIFIER_TEACHERS, TRAINING_FIELDS, role_settings
from ..paths import LIVE_DIR, STUDENT_PATH, TEACHER_EXTRAS_DIR, TEACHER_PATH
from ..roles import RoleSpec, TrainingRun, load_model, train_role
from .base import Method, train_attack_record

TEACHER_PURIFIERS = ("purifier_normal", "purifier_adversarial")  # robustkd.params.PURIFIER_TEACHERS, as roles
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


def _purifier_group(group: dict, drop: tuple[str, ...] = ()) -> dict:
    """The group's own settings (not the training ones, which TrainConfig already fingerprints)."""
    return {k: v for k, v in group.items() if (k not in TRAINING_FIELDS or k in ("arch", "width", "depth")) and k not in drop}


def role(name: str) -> str:
    """A purifier teacher's model name: `normal` -> purifier_normal."""
    return f"purifier_{name}"


def listed_teachers(params: dict) -> list[str]:
    """`purifier_student.teachers`, in the fixed order normal, adversarial."""
    return [name for name in PURIFIER_TEACHERS if name in params["purifier_student"]["teachers"]]


def check_feature_matching(student_group: dict, teachers: list[torch.nn.Module], shape: list[int]) -> None:
    """Feature distillation compares codes element-wise: the student's code must have the teachers' shape."""
    if not student_group["feature_weight"]:
        return
    p = student_group
    student = PURIFIERS[p["arch"]](shape[0], p["width"], p["depth"])
    probe = torch.zeros(1, *shape)
    if not all(hasattr(m, "encode") for m in (student, *teachers)):
        raise ParamsError("`purifier_student.feature_weight` > 0 needs autoencoders (arch: cae) for the student and "
                          "the teachers; set it to 0 or use arch cae")
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
    single_process_reason = SINGLE_PROCESS_REASON

    def train_teacher_extras(self, config: dict, run: TrainingRun) -> list[dict]:
        """After the classifier: the listed CAE teachers (robustkd.teacher_config resolved which, and their settings)."""
        group = role_settings(config, "purifier_teachers")
        models = []
        for i, name in enumerate(PURIFIER_TEACHERS, start=1):  # a teacher's seed does not depend on the others
            if name not in listed_teachers(config):
                continue
            adversarial = name == "adversarial"
            attack = InnerAttack.from_params(config) if adversarial else None
            loss = AdversarialReconstruction(attack) if adversarial else PurifierReconstruction(group["noise_std"])
            record = {"method": "purification", "temperature": 1.0,
                      "purifier": _purifier_group(group, drop=("noise_std",) if adversarial else ()),
                      "train_attack": train_attack_record(attack) if adversarial else None}
            out_path = TEACHER_EXTRAS_DIR / f"{role(name)}.pt"
            train_role(RoleSpec(role(name), group, config["seed"] + 500 + i, loss, out_path,
                                LIVE_DIR / "purifiers" / role(name), record, upstream=[CLASSIFIER_PATH],
                                params_group="purifier_teachers", build=_builder(group),
                                single_process_reason=SINGLE_PROCESS_REASON), run)
            models.append(manifest.entry(role(name), out_path, classifier="teacher"))
        return models

    def train_student(self, params: dict, run: TrainingRun) -> None:
        """A student CAE distilled from the listed purifier teachers, saved as classifier∘student."""
        group = role_settings(params, "purifier_student")
        names = listed_teachers(params)
        paths = [TEACHER_EXTRAS_DIR / f"{role(name)}.pt" for name in names]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ParamsError(f"{', '.join(missing)}: not found. The purifier teachers listed in "
                              f"`purifier_student.teachers` are trained by the teacher stage when method = "
                              f"purification: run `dvc repro teacher`.")
        teachers = {name: load_model(p)[0].purifier for name, p in zip(names, paths)}
        check_feature_matching(group, list(teachers.values()), list(run.meta["shape"]))
        attack = InnerAttack.from_params(params)
        loss = PurifierDistillation(teachers.get("normal"), teachers.get("adversarial"), attack,
                                    group["reconstruction_weight"], group["output_weight"], group["feature_weight"],
                                    group["adversarial_teacher_weight"], group["adversarial_fraction"])
        # one teacher: adversarial_teacher_weight is not used, so it is not recorded
        settings = _purifier_group(group, drop=("teachers",) + (() if len(names) == 2 else ("adversarial_teacher_weight",)))
        record = {"method": params["method"], "temperature": 1.0, "output_temperature": 1.0,
                  "distilled_from": "+".join(role(n) for n in names), "purifier_teachers": names,
                  "purifier": settings, "train_attack": train_attack_record(attack)}
        train_role(RoleSpec("student", group, params["seed"] + 1000, loss, STUDENT_PATH, LIVE_DIR / "student",
                            record, upstream=[CLASSIFIER_PATH, *paths], params_group="purifier_student",
                            build=_builder(group), single_process_reason=SINGLE_PROCESS_REASON), run)
