"""The interface every method implements, and the teacher trainings the methods share.

A method says:
- what the teacher stage trains beside the teacher (:meth:`Method.train_teacher_extras`, listed in that stage's
  manifest). The teacher itself is the method's only through `teacher.training: auto`, resolved torch-free by
  robustkd.teacher_config from robustkd.method_names.TEACHER_TRAINING: the teacher stage trains from that resolved
  configuration, never from the method, so methods that need the same teacher share it;
- how the assistants and the student are trained (:meth:`Method.train_assistants`, :meth:`Method.train_student`);
- which models the attack stage evaluates: the manifests its stages write (:mod:`robustkd.manifest`);
- what it records: each role's ``record`` (:class:`robustkd.roles.RoleSpec`);
- whether it supports DDP: ``single_process_reason`` (None: it does).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

from ..adversarial import InnerAttack
from ..losses import PGDAT, TRADES, TemperatureCE
from ..roles import TrainingRun
from ..training import LossFn

# How a teacher can be trained (`teacher.training`, and each DARHT pool entry's `training`).
TEACHER_TRAININGS: dict[str, Callable[[dict], LossFn]] = {
    "natural": lambda p: TemperatureCE(1.0),
    "temperature_ce": lambda p: TemperatureCE(p["temperature"]),
    "pgd_at": lambda p: PGDAT(InnerAttack.from_params(p)),
    "trades": lambda p: TRADES(InnerAttack.from_params(p, random_start="normal"), p["trades"]["beta"]),
}


class Method(ABC):
    description: str
    single_process_reason: str | None = None  # why its student cannot train under torchrun; None: it can

    def train_teacher_extras(self, config: dict, run: TrainingRun) -> list[dict]:
        """Models the teacher stage trains after the teacher; their manifest entries (robustkd.manifest).
        ``config``: the teacher stage's resolved configuration (robustkd.teacher_config), never the whole params;
        a method with extras is listed in robustkd.method_names.TEACHER_EXTRAS and says there what they read."""
        return []

    def chain_length(self, params: dict) -> int:
        """How many teacher assistants the assistant stage trains (0: the method has no chain)."""
        return 0

    def train_assistants(self, params: dict, run: TrainingRun) -> list[dict]:
        """The teacher-assistant chain, in order; their manifest entries (none: the method has no chain)."""
        return []

    @abstractmethod
    def train_student(self, params: dict, run: TrainingRun) -> None:
        """Train and save the deployed model (robustkd.paths.STUDENT_PATH)."""


# Checkpoints record a teacher's training and the loss params under the names they had before params.yaml's
# renames (`temperature` -> `temperature_ce`; ard.temperature, ltd.teacher_temperature / student_temperature), so a
# model trained with the same values is byte-identical and resume files stay valid.
RECORDED_TRAINING = {"temperature_ce": "temperature"}
RECORDED_LOSS_KEYS = {"ard": {"kd_temperature": "temperature"},
                      "ltd": {"soft_label_temperature": "teacher_temperature", "output_temperature": "student_temperature"}}


def recorded_training(training: str) -> str:
    """A teacher training's name as checkpoints record it."""
    return RECORDED_TRAINING.get(training, training)


def train_attack_record(attack: InnerAttack) -> dict:
    """The training attack as recorded with a checkpoint."""
    return {"eps": attack.eps, "steps": attack.steps, "step_size": attack.step_size, "mode": attack.mode,
            "bf16": attack.bf16}


def teacher_record(config: dict) -> dict:
    """What the teacher's checkpoint records about its training, from the teacher stage's resolved configuration
    (robustkd.teacher_config): the training, its temperature, the params of its own loss only, the init file."""
    training = config["teacher"]["training"]
    own = {}
    if training in ("pgd_at", "trades"):
        own["train_attack"] = train_attack_record(InnerAttack.from_params(config))
    if training == "trades":
        own["trades"] = dict(config["trades"])
    return {"method": None, "training": recorded_training(training),
            "temperature": float(config["temperature"]) if training == "temperature_ce" else 1.0,
            "loss_params": own, "init_from": config["init_from"]}


def loss_params(params: dict) -> dict:
    """The params the adversarial and distillation losses read: stored with each checkpoint, and part of
    its training run's identity (a resume file written under other values is never picked up)."""
    return {"train_attack": train_attack_record(InnerAttack.from_params(params)),
            **{name: {_recorded_key(name, k): v for k, v in params[name].items()} for name in ("trades", "ard", "rslad", "ltd")}}


def _recorded_key(group: str, key: str) -> str:
    """``key``'s recorded name, as a new string object like the YAML loader's (pickle shares repeated objects, so an
    interned literal equal to another key of the record would change the checkpoint's bytes)."""
    recorded = RECORDED_LOSS_KEYS.get(group, {}).get(key)
    return key if recorded is None else recorded.encode().decode()
