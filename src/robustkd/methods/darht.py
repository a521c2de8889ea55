"""Method ``darht`` (Deng et al. 2024) as a plug-in: the student, with a feature-map head (C·K, then C), learns from
the K teachers of the ``darht_teacher@<name>`` stages (robustkd.methods.darht_pool), in pool order, with
:class:`robustkd.losses.DARHT`: every ``use: true`` entry, or, with ``darht.select.k`` set, the K that the stage
``darht_select`` chose by transferability (robustkd.methods.darht_select). The teacher stage's model is a natural reference, evaluated beside the student."""
from __future__ import annotations

from torch import nn

from ..adversarial import InnerAttack
from ..losses import DARHT
from ..models import build_model, model_spec, place
from ..params import role_settings
from ..paths import LIVE_DIR, STUDENT_PATH
from ..roles import RoleSpec, TrainingRun, load_model, train_role
from .base import Method, loss_params
from .darht_pool import role, teacher_checkpoints
from .darht_select import student_record, student_teachers


def student_loss(params: dict, teachers: list[nn.Module]) -> DARHT:
    d = params["darht"]
    return DARHT(list(teachers), InnerAttack.from_params(params), d["adversarial_prob"], d["ce_kd_from"],
                 d["kd_only_from"], d["kd_loss"], d["kd_temperature"], d["normalize_weights"])


def student_settings(params: dict) -> dict:
    """darht's own settings, as recorded with the student (the pool is recorded as the teachers' names; a selection,
    as its result: robustkd.methods.darht_select.student_record)."""
    return {k: v for k, v in params["darht"].items()
            if k not in ("pool", "teacher_training", "teacher_evaluation", "select")}


class Darht(Method):
    description = ("Deng et al. 2024: K robust teachers of different families (darht.pool), each matched to a "
                   "slice of the student's C*K feature map, weighted by exp(-CE) per batch; CE -> CE+KD -> KD; "
                   "clean or PGD batches at random. The teacher stage's model is a natural reference.")
    single_process_reason = "the DARHT student's loss calls `forward_with_map` on the model directly"

    def train_student(self, params: dict, run: TrainingRun) -> None:
        teachers = teacher_checkpoints(params, student_teachers(params))
        names = [name for name, _ in teachers]
        models = [load_model(path)[0] for _, path in teachers]
        group = role_settings(params, "student")
        chosen = " (chosen by darht_select, results/darht_select.json)" if student_record(params) else ""
        print(f"[student] darht: {len(names)} teacher(s){chosen}: {', '.join(names)}")

        def build(device):
            spec = model_spec(group["arch"], run.meta, group["width"], head_teachers=len(names))
            return place(build_model(**spec), device), spec

        record = {"method": "darht", "temperature": 1.0, "output_temperature": 1.0,
                  "distilled_from": "+".join(role(n) for n in names), "darht_teachers": names,
                  "darht": student_settings(params), "loss_params": loss_params(params),
                  **student_record(params)}
        train_role(RoleSpec("student", group, params["seed"] + 1000, student_loss(params, models), STUDENT_PATH,
                            LIVE_DIR / "student", record, upstream=[path for _, path in teachers], build=build,
                            single_process_reason=self.single_process_reason), run)
