"""The suite's names: attack names as they appear in results and metrics, and ε keys.

Torch-free, so that the metrics stage, which only aggregates JSON, starts without importing torch.
"""
from __future__ import annotations

# Attack names, as they appear in results and metrics.
FGSM_CE = "fgsm_softmax_ce"        # the seed papers' protocol: CE of the deployed softmax (T = 1)
PGD_CE = "pgd_softmax_ce"          # idem, iterative
PGD_MARGIN = "pgd_margin"          # CW margin loss on the logits: immune to softmax saturation
AUTOATTACK = "autoattack"          # official pyautoattack
SQUARE = "square"                  # score-based black-box
TRANSFER = "transfer_surrogate"    # PGD crafted on an independent surrogate
PGD_L2 = "pgd_l2_margin"
CW_L2 = "cw_l2"                     # minimal L2 perturbation (Carlini-Wagner)
# Purification's paper protocol: crafted on the classifier alone (FGSM; PGD keeping the last iterate, as
# transfer), then given to the deployed model, i.e. purified. Gradient-free for the purifier.
CLASSIFIER_FGSM = "classifier_fgsm"
CLASSIFIER_PGD_CE = "classifier_pgd_ce"
CLASSIFIER_PGD_MARGIN = "classifier_pgd_margin"
PAPER_PROTOCOL = (CLASSIFIER_FGSM, CLASSIFIER_PGD_CE, CLASSIFIER_PGD_MARGIN)
WHITE_BOX = (FGSM_CE, PGD_CE, PGD_MARGIN, AUTOATTACK)   # on the deployed model: adaptive for a purified one
BLACK_BOX = (SQUARE, TRANSFER, *PAPER_PROTOCOL)


def is_black_box(attack: str, model: str) -> bool:
    """Crafted without this model's gradients: Square, the surrogate's and the classifier's examples, and the
    examples crafted on another model (``transfer_<other>``); ``transfer_<model>`` was crafted on the model itself."""
    return attack in BLACK_BOX or (attack.startswith("transfer_") and attack != f"transfer_{model}")


def eps_key(eps: float) -> str:
    """0.03 -> 'eps_0p03': metric keys carry no dots, so `dvc metrics diff` reads cleanly."""
    return "eps_" + f"{eps:g}".replace(".", "p").replace("-", "m")


def autoattack_label(versions) -> str:
    """How tables title AutoAttack numbers, from the models' ``autoattack_version``: "AutoAttack" for the standard
    version; the quick custom subset is always labelled so, as is a metrics file from before the field."""
    versions = set(versions)
    if versions == {"standard"}:
        return "AutoAttack"
    if versions == {"custom"}:
        return "AutoAttack (custom subset)"
    if None in versions:
        return "AutoAttack (version not recorded)"
    return "AutoAttack (standard or custom subset: see each model's autoattack_version)"
