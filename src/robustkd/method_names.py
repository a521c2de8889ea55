"""The methods, by name, with the params groups their student loss reads: the one list of method names.

Torch-free: the params schema (robustkd.params) reads it, and tests check the schema and dvc.yaml's student params
against it. A method's code is registered under the same name in robustkd.methods.
"""

# name -> the params keys (groups, or dotted keys) the method's student training reads beyond the shared ones
STUDENT_PARAMS: dict[str, tuple[str, ...]] = {
    "natural": (),
    "defensive_distillation": (),
    "pgd_at": (),
    "trades": ("trades",),
    "ard": ("ard",),
    "rslad": ("rslad",),
    "ltd": ("ltd",),
    "purification": ("purifier_student",),
    "darht": ("darht.pool", "darht.kd_loss", "darht.kd_temperature", "darht.adversarial_prob", "darht.ce_kd_from",
              "darht.kd_only_from", "darht.normalize_weights", "darht.select.k"),
}
METHOD_NAMES = tuple(STUDENT_PARAMS)

# name -> what `teacher.training: auto` means for the method (robustkd.teacher_config resolves it). ARD, RSLAD and
# LTD share one robust teacher: the teacher stage depends on its resolved configuration, not on `method`.
TEACHER_TRAINING: dict[str, str] = {
    "natural": "natural",
    "defensive_distillation": "temperature_ce",
    "pgd_at": "natural",
    "trades": "natural",
    "ard": "pgd_at",
    "rslad": "pgd_at",
    "ltd": "pgd_at",
    "purification": "natural",
    "darht": "natural",
}
# The methods whose plug-in trains models beside the teacher in the teacher stage (Method.train_teacher_extras).
TEACHER_EXTRAS = ("purification",)
