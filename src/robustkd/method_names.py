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
