"""Method registry: which loss each trained role uses under the top-level ``method`` param.

Roles: the teacher, then ``chain_length`` assistants (chain methods only), then the student, the deployed
model (for purification: the teacher is the fixed classifier, the student a purifier in front of it). A distilling student learns from the model before it (the last assistant, else the teacher); a
non-distilling student (natural, PGD-AT, TRADES) is trained from scratch, and the teacher is then a
natural reference model, evaluated beside it. Adding a method = one entry here plus its loss and
params group.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from .adversarial import InnerAttack
from .losses import ARD, DARHT, LTD, PGDAT, RSLAD, TRADES, Distillation, TemperatureCE
from .training import LossFn

# How the teacher stage can train the teacher (`teacher.training`); "auto" = the method's choice.
TEACHER_TRAININGS: dict[str, Callable[[dict], LossFn]] = {
    "natural": lambda p: TemperatureCE(1.0),
    "temperature": lambda p: TemperatureCE(p["temperature"]),
    "pgd_at": lambda p: PGDAT(InnerAttack.from_params(p)),
    "trades": lambda p: TRADES(InnerAttack.from_params(p, random_start="normal"), p["trades"]["beta"]),
}


@dataclass(frozen=True)
class Method:
    description: str
    teacher_training: str   # what `teacher.training: auto` means for this method
    # (params, the role's params group, the previous model in the chain or None) -> loss
    student_loss: Callable[[dict, dict, Optional[nn.Module]], LossFn]
    distills: bool          # the student learns from the previous model
    uses_chain: bool = False  # teacher assistants (chain_length) apply
    # temperature of the student's training loss, and the one it keeps at inference (inside the model)
    loss_temperature: Callable[[dict], float] = lambda p: 1.0
    output_temperature: Callable[[dict], float] = lambda p: 1.0
    # purification: the teacher stage adds purifier teachers and the student is a purifier
    # (robustkd.purification); student_loss is then unused
    purifies: bool = False
    # darht: K teachers from the `darht_teacher@<name>` stages (robustkd.darht); student_loss then gets the list
    # of teachers as ``previous``, and the student has a feature-map head (C·K, then C)
    pool_teachers: bool = False


def _not_a_classifier_loss():
    raise TypeError("method purification trains purifiers, not classifiers: see robustkd.purification")


def _attack(p: dict, random_start: str = "uniform") -> InnerAttack:
    return InnerAttack.from_params(p, random_start=random_start)


def _darht(p: dict, teachers: list[nn.Module]) -> DARHT:
    d = p["darht"]
    return DARHT(list(teachers), _attack(p), d["adversarial_prob"], d["ce_kd_from"], d["kd_only_from"], d["kd_loss"],
                 d["kd_temperature"], d["normalize_weights"])


METHODS: dict[str, Method] = {
    "natural": Method(
        description="Plain cross-entropy: the undefended baseline.",
        teacher_training="natural",
        student_loss=lambda p, group, previous: TemperatureCE(1.0),
        distills=False,
    ),
    "defensive_distillation": Method(
        description="Papernot et al. 2016 with teacher assistants (Mandal & Gao 2023): teacher trained at "
                    "temperature T, each later model distilled from the one before at T, all deployed at T=1.",
        teacher_training="temperature",
        student_loss=lambda p, group, previous: Distillation(previous, p["temperature"], group["kd_lambda"]),
        distills=True,
        uses_chain=True,
        loss_temperature=lambda p: p["temperature"],
    ),
    "pgd_at": Method(
        description="Madry et al. 2018: cross-entropy on PGD examples (train_attack).",
        teacher_training="natural",
        student_loss=lambda p, group, previous: PGDAT(_attack(p)),
        distills=False,
    ),
    "trades": Method(
        description="Zhang et al. 2019: CE(clean) + beta * KL(clean || adversarial).",
        teacher_training="natural",
        student_loss=lambda p, group, previous: TRADES(_attack(p, "normal"), p["trades"]["beta"]),
        distills=False,
    ),
    "ard": Method(
        description="Goldblum et al. 2020: the student's PGD examples matched to a robust teacher's clean "
                    "soft labels at temperature T.",
        teacher_training="pgd_at",
        student_loss=lambda p, group, previous: ARD(previous, _attack(p), p["ard"]["temperature"], p["ard"]["alpha"]),
        distills=True,
        loss_temperature=lambda p: p["ard"]["temperature"],
    ),
    "rslad": Method(
        description="Zi et al. 2021: robust soft labels of a robust teacher replace hard labels in the "
                    "attack and in both loss terms.",
        teacher_training="pgd_at",
        student_loss=lambda p, group, previous: RSLAD(previous, _attack(p, "normal"), p["rslad"]["adv_weight"]),
        distills=True,
    ),
    "ltd": Method(
        description="Chen & Lee 2021: TRADES with the natural term's labels replaced by a robust teacher's "
                    "soft labels at a low temperature; the student keeps its own temperature at inference.",
        teacher_training="pgd_at",
        student_loss=lambda p, group, previous: LTD(previous, _attack(p, "normal"), p["ltd"]["teacher_temperature"],
                                                    p["ltd"]["beta"]),
        distills=True,
        loss_temperature=lambda p: p["ltd"]["student_temperature"],
        output_temperature=lambda p: p["ltd"]["student_temperature"],
    ),
    "purification": Method(
        description="Koo, Chae & Lee 2023: a normal and an adversarially trained autoencoder purifier, "
                    "ensemble-distilled into a student purifier in front of the fixed (teacher) classifier.",
        teacher_training="natural",
        student_loss=lambda p, group, previous: _not_a_classifier_loss(),
        distills=True,
        purifies=True,
    ),
    "darht": Method(
        description="Deng et al. 2024: K robust teachers of different families (darht.pool), each matched to a "
                    "slice of the student's C*K feature map, weighted by exp(-CE) per batch; CE -> CE+KD -> KD; "
                    "clean or PGD batches at random. The teacher stage's model is a natural reference.",
        teacher_training="natural",
        student_loss=lambda p, group, teachers: _darht(p, teachers),
        distills=True,
        pool_teachers=True,
    ),
}


def teacher_training(params: dict) -> str:
    """`teacher.training`, with "auto" resolved to what the method needs."""
    chosen = params["teacher"]["training"]
    return METHODS[params["method"]].teacher_training if chosen == "auto" else chosen


def teacher_loss(params: dict) -> LossFn:
    return TEACHER_TRAININGS[teacher_training(params)](params)


def teacher_temperature(params: dict) -> float:
    return float(params["temperature"]) if teacher_training(params) == "temperature" else 1.0


def loss_params(params: dict) -> dict:
    """The params the adversarial and distillation losses read: stored with each checkpoint, and part of
    its training run's identity (a resume file written under other values is never picked up)."""
    attack = InnerAttack.from_params(params)
    return {"train_attack": {"eps": attack.eps, "steps": attack.steps, "step_size": attack.step_size,
                             "mode": attack.mode},
            **{name: params[name] for name in ("trades", "ard", "rslad", "ltd")}}
