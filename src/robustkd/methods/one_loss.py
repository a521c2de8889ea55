"""The one-loss methods: the student (and each assistant of a chain) is a classifier trained with one loss, from
scratch or distilled from the model before it (the last assistant, else the teacher).

Adding such a method = its loss (robustkd.losses) + one entry in ``ONE_LOSS_METHODS`` + its params group
(robustkd.method_names, robustkd.params, params.yaml, dvc.yaml's student params).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from .. import manifest
from ..adversarial import InnerAttack
from ..losses import ARD, LTD, PGDAT, RSLAD, TRADES, Distillation, TemperatureCE
from ..params import role_settings
from ..paths import ASSISTANTS_DIR, LIVE_DIR, STUDENT_PATH, TEACHER_PATH
from ..roles import RoleSpec, TrainingRun, load_model, train_role
from ..training import LossFn
from .base import Method, loss_params


@dataclass(frozen=True)
class OneLossMethod(Method):
    description: str
    # (params, the role's params group, the previous model in the chain or None) -> loss
    student_loss: Callable[[dict, dict, Optional[nn.Module]], LossFn]
    distills: bool            # the student learns from the previous model
    uses_chain: bool = False  # teacher assistants (chain_length) apply
    # temperature of the student's training loss, and the one it keeps at inference (inside the model)
    loss_temperature: Callable[[dict], float] = lambda p: 1.0
    output_temperature: Callable[[dict], float] = lambda p: 1.0

    def chain_length(self, params: dict) -> int:
        return params["chain_length"] if self.uses_chain else 0

    def train_assistants(self, params: dict, run: TrainingRun) -> list[dict]:
        """Assistant i is distilled from model i-1 (the teacher for i = 1)."""
        group, previous_path, models = role_settings(params, "assistant"), TEACHER_PATH, []
        for i in range(1, self.chain_length(params) + 1):
            role = f"assistant_{i}"
            previous, _ = load_model(previous_path)
            out_path = ASSISTANTS_DIR / f"{role}.pt"
            record = {"method": params["method"], "temperature": self.loss_temperature(params),
                      "distilled_from": previous_path.stem, "kd_lambda": group["kd_lambda"]}
            train_role(RoleSpec(role, group, params["seed"] + i, self.student_loss(params, group, previous), out_path,
                                LIVE_DIR / "assistants" / role, record, upstream=[previous_path],
                                params_group="assistant"), run)
            models.append(manifest.entry(role, out_path))
            previous_path = out_path
        return models

    def train_student(self, params: dict, run: TrainingRun) -> None:
        group = role_settings(params, "student")
        previous, previous_path, upstream = None, None, []
        if self.distills:
            chain = manifest.checkpoints(ASSISTANTS_DIR, "assistant")
            previous_path = chain[-1] if chain else TEACHER_PATH
            previous, _ = load_model(previous_path)
            upstream = [previous_path]
        record = {"method": params["method"], "temperature": self.loss_temperature(params),
                  "output_temperature": self.output_temperature(params),
                  "distilled_from": previous_path.stem if previous_path else None,
                  "kd_lambda": group["kd_lambda"], "loss_params": loss_params(params)}
        train_role(RoleSpec("student", group, params["seed"] + 1000, self.student_loss(params, group, previous),
                            STUDENT_PATH, LIVE_DIR / "student", record, upstream=upstream,
                            output_temperature=self.output_temperature(params)), run)


def _attack(p: dict, random_start: str = "uniform") -> InnerAttack:
    return InnerAttack.from_params(p, random_start=random_start)


ONE_LOSS_METHODS: dict[str, OneLossMethod] = {
    "natural": OneLossMethod(
        description="Plain cross-entropy: the undefended baseline.",
        student_loss=lambda p, group, previous: TemperatureCE(1.0),
        distills=False,
    ),
    "defensive_distillation": OneLossMethod(
        description="Papernot et al. 2016 with teacher assistants (Mandal & Gao 2023): teacher trained at "
                    "temperature T, each later model distilled from the one before at T, all deployed at T=1.",
        student_loss=lambda p, group, previous: Distillation(previous, p["temperature"], group["kd_lambda"]),
        distills=True,
        uses_chain=True,
        loss_temperature=lambda p: p["temperature"],
    ),
    "pgd_at": OneLossMethod(
        description="Madry et al. 2018: cross-entropy on PGD examples (train_attack).",
        student_loss=lambda p, group, previous: PGDAT(_attack(p)),
        distills=False,
    ),
    "trades": OneLossMethod(
        description="Zhang et al. 2019: CE(clean) + beta * KL(clean || adversarial).",
        student_loss=lambda p, group, previous: TRADES(_attack(p, "normal"), p["trades"]["beta"]),
        distills=False,
    ),
    "ard": OneLossMethod(
        description="Goldblum et al. 2020: the student's PGD examples matched to a robust teacher's clean "
                    "soft labels at temperature T.",
        student_loss=lambda p, group, previous: ARD(previous, _attack(p), p["ard"]["kd_temperature"], p["ard"]["alpha"]),
        distills=True,
        loss_temperature=lambda p: p["ard"]["kd_temperature"],
    ),
    "rslad": OneLossMethod(
        description="Zi et al. 2021: robust soft labels of a robust teacher replace hard labels in the "
                    "attack and in both loss terms.",
        student_loss=lambda p, group, previous: RSLAD(previous, _attack(p, "normal"), p["rslad"]["adv_weight"]),
        distills=True,
    ),
    "ltd": OneLossMethod(
        description="Chen & Lee 2021: TRADES with the natural term's labels replaced by a robust teacher's "
                    "soft labels at a low temperature; the student keeps its own temperature at inference.",
        student_loss=lambda p, group, previous: LTD(previous, _attack(p, "normal"), p["ltd"]["soft_label_temperature"],
                                                    p["ltd"]["beta"]),
        distills=True,
        loss_temperature=lambda p: p["ltd"]["output_temperature"],
        output_temperature=lambda p: p["ltd"]["output_temperature"],
    ),
}
