"""Adversarial attacks in pixel space ([0, 1] inputs, models return logits). See ``common`` for the contract."""
from .autoattack import autoattack
from .autoattack import is_per_point as autoattack_is_per_point
from .common import (LOSSES, attack_in_batches, ce_loss, fp32, frozen, margin_loss, point_generators, project_l2,
                     project_linf)
from .cw import cw_l2
from .fgsm import fgsm
from .pgd import pgd
from .square import is_per_point as square_is_per_point
from .square import square
from .transfer import transfer

__all__ = ["LOSSES", "attack_in_batches", "autoattack", "autoattack_is_per_point", "ce_loss", "cw_l2", "fgsm", "fp32",
           "frozen", "margin_loss", "pgd", "point_generators", "project_l2", "project_linf", "square",
           "square_is_per_point", "transfer"]
