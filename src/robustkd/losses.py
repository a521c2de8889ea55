"""Training objectives. Each is ``loss(model, x, y) -> (scalar loss, logits on x)``.

A new method is a new loss here plus an entry in :mod:`robustkd.methods`, not a new pipeline.
Temperatures divide logits before the softmax; deployed models always predict at T = 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), batch mean. The T² keeps gradient scale independent of T (Hinton)."""
    t = float(temperature)
    log_student = F.log_softmax(student_logits / t, dim=1)
    log_teacher = F.log_softmax(teacher_logits / t, dim=1)
    return t * t * F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)


class TemperatureCE:
    """Cross-entropy of softmax(z / T): how defensive distillation trains its first model."""

    def __init__(self, temperature: float = 1.0):
        self.temperature = float(temperature)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        logits = model(x)
        return F.cross_entropy(logits / self.temperature, y), logits


class Distillation:
    """TAKD / defensive distillation: (1 − λ)·CE(s, y) + λ·T²·KL(softmax(t/T) ‖ softmax(s/T)).

    λ = 1 is pure soft labels (Papernot et al.); the teacher is frozen and queried in eval mode.
    """

    def __init__(self, teacher: nn.Module, temperature: float, kd_lambda: float = 1.0):
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature = float(temperature)
        self.kd_lambda = float(kd_lambda)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        logits = model(x)
        loss = self.kd_lambda * kd_kl(logits, teacher_logits, self.temperature)
        if self.kd_lambda < 1.0:
            loss = loss + (1.0 - self.kd_lambda) * F.cross_entropy(logits, y)
        return loss, logits
