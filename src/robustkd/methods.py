"""Method registry: which loss each trained role uses under the top-level ``method`` param.

Roles: the teacher, then ``chain_length`` assistants, then the student; each model after the teacher
learns from the one before it. Adding a method = one entry here (plus its loss and params group).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .losses import Distillation, TemperatureCE
from .training import LossFn


@dataclass(frozen=True)
class Method:
    description: str
    teacher_loss: Callable[[dict], LossFn]
    # (params, the role's params group, the previous model in the chain) -> loss
    distill_loss: Callable[[dict, dict, nn.Module], LossFn]


METHODS: dict[str, Method] = {
    "defensive_distillation": Method(
        description="Papernot et al. 2016 with teacher assistants (Mandal & Gao 2023): teacher trained at "
                    "temperature T, each later model distilled from the one before at T, all deployed at T=1.",
        teacher_loss=lambda p: TemperatureCE(p["temperature"]),
        distill_loss=lambda p, group, previous: Distillation(previous, p["temperature"], group["kd_lambda"]),
    ),
}
