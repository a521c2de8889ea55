"""Training objectives. Each is ``loss(model, x, y) -> (scalar loss, logits)``.

A new one-loss method is a new loss here plus an entry in :mod:`robustkd.methods.one_loss`, not a new pipeline.
Temperatures divide logits before the softmax. The returned logits (for the training-accuracy curve) are on
the clean batch when the loss computes them, else on the adversarial batch (PGD-AT, ARD with α = 1).
Teachers are frozen and queried in eval mode on the clean batch. Adversarial examples come from
:func:`robustkd.adversarial.maximise` (model mode while crafting: ``train_attack.mode``).
KL terms are batch means of the per-sample KL (``reduction="batchmean"``), the true KL divergence.
PGD-AT, TRADES and LTD come in two parts (:class:`AdversarialObjective`: ``prepare`` crafts, ``objective`` is the
loss given what was crafted), so adversarial weight perturbation (:mod:`robustkd.awp`) can take the same objective
at other weights; calling one runs the two in a row, the same operations as before the split.
"""
from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn

from .adversarial import InnerAttack, crafting_precision, maximise, unwrap


def kl(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target) ‖ softmax(logits)), batch mean; gradients flow into both arguments."""
    return F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(target_logits, dim=1),
                    reduction="batchmean", log_target=True)


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


def _frozen_logits(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return teacher(x)


class AdversarialObjective(abc.ABC):
    """A loss in two parts, so that adversarial weight perturbation (:mod:`robustkd.awp`) can evaluate the same
    objective at other weights: ``prepare`` crafts what the step keeps fixed (the adversarial batch, a teacher's soft
    labels), ``objective`` is the loss given it. Calling the loss runs the two in a row."""

    @abc.abstractmethod
    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        """What the step keeps fixed: the adversarial batch (and a teacher's soft labels)."""

    @abc.abstractmethod
    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, prepared):
        """(loss, logits) of the model given ``prepared``."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        return self.objective(model, x, y, self.prepare(model, x, y))


class PGDAT(AdversarialObjective):
    """Madry et al. 2018: CE(f(x_adv), y), x_adv = PGD on the CE from a uniform random start."""

    def __init__(self, attack: InnerAttack):
        self.attack = attack

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return maximise(model, x, lambda z: F.cross_entropy(z, y), self.attack)

    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor):
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits


def _trades_adversarial(model: nn.Module, x: torch.Tensor, attack: InnerAttack) -> torch.Tensor:
    """TRADES' inner step: maximise KL(f(x) ‖ f(x')), f(x) fixed and computed in the crafting mode and precision
    (both sides of the KL at the same precision: at x' ≈ x its gradient is then not rounding error between two)."""
    model = unwrap(model)  # no DDP forward without a backward
    mode = model.training
    model.train(attack.mode == "train")
    with crafting_precision(attack, x.device.type):  # part of the crafting, like maximise's forward passes
        clean = _frozen_logits(model, x).float()
    model.train(mode)
    return maximise(model, x, lambda z: kl(clean, z), attack)


class TRADES(AdversarialObjective):
    """Zhang et al. 2019: CE(f(x), y) + β·KL(f(x) ‖ f(x_adv)); β = 0 is plain CE."""

    def __init__(self, attack: InnerAttack, beta: float):
        self.attack, self.beta = attack, float(beta)

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _trades_adversarial(model, x, self.attack)

    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if self.beta:
            loss = loss + self.beta * kl(logits, model(x_adv))
        return loss, logits


class ARD:
    """Goldblum et al. 2020: α·T²·KL(t(x)/T ‖ s(x_adv)/T) + (1 − α)·CE(s(x), y).

    x_adv = PGD on the student's CE (as ARD's code), from a uniform random start.
    """

    def __init__(self, teacher: nn.Module, attack: InnerAttack, temperature: float, alpha: float):
        self.teacher = teacher.eval().requires_grad_(False)
        self.attack, self.temperature, self.alpha = attack, float(temperature), float(alpha)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        teacher_logits = _frozen_logits(self.teacher, x)
        x_adv = maximise(model, x, lambda z: F.cross_entropy(z, y), self.attack)
        adv_logits = model(x_adv)
        loss = self.alpha * kd_kl(adv_logits, teacher_logits, self.temperature)
        if self.alpha < 1.0:
            logits = model(x)
            return loss + (1.0 - self.alpha) * F.cross_entropy(logits, y), logits
        return loss, adv_logits


class RSLAD:
    """Zi et al. 2021: w·KL(t(x) ‖ s(x_adv)) + (1 − w)·KL(t(x) ‖ s(x)), w = 5/6 in the paper.

    x_adv maximises KL(t(x) ‖ s(x')) from x + 0.001·N(0, 1): the teacher's robust soft labels replace
    the hard labels everywhere, in the attack too.
    """

    def __init__(self, teacher: nn.Module, attack: InnerAttack, adv_weight: float):
        self.teacher = teacher.eval().requires_grad_(False)
        self.attack, self.adv_weight = attack, float(adv_weight)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        teacher_logits = _frozen_logits(self.teacher, x)
        x_adv = maximise(model, x, lambda z: kl(teacher_logits, z), self.attack)
        logits = model(x)
        loss = self.adv_weight * kl(teacher_logits, model(x_adv)) + (1.0 - self.adv_weight) * kl(teacher_logits, logits)
        return loss, logits


class LTD(AdversarialObjective):
    """Chen & Lee 2021, combined with TRADES as the paper does:
    KL(softmax(t(x)/τ_t) ‖ softmax(s(x))) + β·KL(s(x) ‖ s(x_adv)).

    The teacher's soft labels come at a low temperature τ_t. The student's own temperature τ_s lives
    inside the student model (its logits are divided by τ_s, in training and at inference), so s(x) here
    is already at τ_s and every attack sees the deployed, tempered model. x_adv is TRADES' inner step.
    """

    def __init__(self, teacher: nn.Module, attack: InnerAttack, teacher_temperature: float, beta: float):
        self.teacher = teacher.eval().requires_grad_(False)
        self.attack, self.teacher_temperature, self.beta = attack, float(teacher_temperature), float(beta)

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        soft_labels = _frozen_logits(self.teacher, x) / self.teacher_temperature
        return soft_labels, _trades_adversarial(model, x, self.attack)

    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, prepared):
        soft_labels, x_adv = prepared
        logits = model(x)
        loss = kl(soft_labels, logits)
        if self.beta:
            loss = loss + self.beta * kl(logits, model(x_adv))
        return loss, logits


class DARHT:
    """Deng et al. 2024 (DARHT): one student learns from K heterogeneous robust teachers through its feature map.

    The student has a :class:`robustkd.models.FeatureMapHead`: pooled features -> C·K -> C. Slice i of the
    C·K map is matched to teacher i, with weight w_i = exp(-CE(t_i(x), y)) (the teacher's mean CE on this
    batch, recomputed every batch; ``normalize_weights``: w_i / Σ_j w_j)::

        KD  = Σ_i w_i · d(slice_i, t_i(x)),   d = T²·KL(softmax(t_i/T) ‖ softmax(slice_i/T)) (``kd_loss="kl"``)
                                                or MSE of the logits (``kd_loss="mse"``)
        loss = CE(s(x), y)          while progress <  ce_kd_from
               CE(s(x), y) + KD     while progress <  kd_only_from
               KD                   afterwards

    ``progress`` (fraction of training done, in [0, 1)) is set by the training loop before every step
    (:meth:`set_progress`). Each batch is replaced, with probability ``adversarial_prob``, by PGD examples on the
    student's CE (``attack``: train_attack); the draw comes from the global CPU RNG (seeded, saved on resume) and
    happens on every batch, so the RNG stream does not depend on the phase. The teachers are frozen, in eval mode,
    and see the same batch as the student (clean or adversarial): our reading, the paper's text does not say.
    """

    PHASES = ("ce", "ce_kd", "kd")

    def __init__(self, teachers: list[nn.Module], attack: InnerAttack, adversarial_prob: float, ce_kd_from: float,
                 kd_only_from: float, kd_loss: str = "kl", kd_temperature: float = 1.0, normalize_weights: bool = False):
        if not teachers:
            raise ValueError("DARHT needs at least one teacher")
        if not 0.0 <= ce_kd_from <= kd_only_from <= 1.0:
            raise ValueError(f"DARHT schedule needs 0 <= ce_kd_from <= kd_only_from <= 1, got {ce_kd_from!r}, "
                             f"{kd_only_from!r}")
        if kd_loss not in ("kl", "mse"):
            raise ValueError(f"DARHT kd_loss must be 'kl' or 'mse', got {kd_loss!r}")
        self.teachers = [t.eval().requires_grad_(False) for t in teachers]
        self.attack, self.adversarial_prob = attack, float(adversarial_prob)
        self.ce_kd_from, self.kd_only_from = float(ce_kd_from), float(kd_only_from)
        self.kd_loss, self.kd_temperature = kd_loss, float(kd_temperature)
        self.normalize_weights = bool(normalize_weights)
        self.progress = 0.0

    def set_progress(self, progress: float) -> None:
        """Called by :func:`robustkd.training.train` before each step: (epoch + step / steps_per_epoch) / epochs."""
        self.progress = float(progress)

    def phase(self) -> str:
        if self.progress < self.ce_kd_from:
            return "ce"
        return "ce_kd" if self.progress < self.kd_only_from else "kd"

    def teacher_weights(self, teacher_logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """w_i = exp(-CE(t_i(x), y)), batch-mean CE: a teacher that is right (and sure) on this batch counts more."""
        w = torch.stack([torch.exp(-F.cross_entropy(t, y)) for t in teacher_logits])
        return w / w.sum() if self.normalize_weights else w

    def distance(self, slice_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if self.kd_loss == "mse":
            return F.mse_loss(slice_logits, teacher_logits)
        return kd_kl(slice_logits, teacher_logits, self.kd_temperature)

    def kd(self, feature_map: torch.Tensor, teacher_logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        if feature_map.shape[1] != len(teacher_logits):
            raise ValueError(f"the student's feature map has {feature_map.shape[1]} slices for {len(teacher_logits)} "
                             f"teachers")
        w = self.teacher_weights(teacher_logits, y)
        return sum(w[i] * self.distance(feature_map[:, i], t) for i, t in enumerate(teacher_logits))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        phase = self.phase()
        adversarial = torch.rand(()).item() < self.adversarial_prob
        if adversarial and self.attack.steps:
            x = maximise(model, x, lambda z: F.cross_entropy(z, y), self.attack)
        logits, feature_map = model.forward_with_map(x)
        loss = F.cross_entropy(logits, y) if phase != "kd" else logits.new_zeros(())
        if phase != "ce":
            loss = loss + self.kd(feature_map, [_frozen_logits(t, x) for t in self.teachers], y)
        return loss, logits


# --- purifier training (method purification) ---------------------------------------------------------------
# The model is a PurifiedClassifier: ``model.purifier`` learns, ``model.classifier`` is fixed. The loss is on
# images; the returned logits are the classifier's on the purified batch (the training-accuracy curve).

def _classify(model: nn.Module, purified: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.classifier(purified)


class PurifierReconstruction:
    """The normal CAE teacher: MSE(p(clip(x + σ·N(0, 1))), x); σ = 0 is a plain autoencoder.

    The noise comes from the global CPU RNG (seeded, saved in the resume file), then moves to x's device.
    """

    def __init__(self, noise_std: float):
        self.noise_std = float(noise_std)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        x_in = x
        if self.noise_std:
            noise = torch.randn(x.shape, dtype=x.dtype).to(x.device)
            x_in = (x + self.noise_std * noise).clamp_(0.0, 1.0)
        purified = model.purifier(x_in)
        return F.mse_loss(purified, x), _classify(model, purified)


def classifier_adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: InnerAttack) -> torch.Tensor:
    """PGD on the CE of the fixed classifier alone: the adversarial inputs purifiers are trained on."""
    return maximise(model.classifier, x, lambda z: F.cross_entropy(z, y), attack)


class AdversarialReconstruction:
    """The adversarial CAE teacher: MSE(p(x_adv), x), x_adv = PGD against the fixed classifier (train_attack)."""

    def __init__(self, attack: InnerAttack):
        self.attack = attack

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        purified = model.purifier(classifier_adversarial(model, x, y, self.attack))
        return F.mse_loss(purified, x), _classify(model, purified)


class PurifierDistillation:
    """Ensemble distillation of two purifier teachers (normal, adversarial) into the student purifier s.

    w_rec·MSE(s(x̃), x) + w_out·Σ_k a_k·MSE(s(x̃), t_k(x̃)) + w_feat·Σ_k a_k·MSE(code_s(x̃), code_k(x̃)),
    with teacher weights a = (1 − a_adv, a_adv); with one teacher (the other None: the paper's single-teacher
    students), a = (1) and a_adv is not used. x̃ is the batch with its first round(f·n) images replaced by
    PGD examples against the classifier (f = ``adversarial_fraction``; batches are already shuffled), so the
    student sees both teachers on clean and on attacked inputs. Koo et al. publish no code; this form is ours.
    """

    def __init__(self, normal: nn.Module | None, adversarial: nn.Module | None, attack: InnerAttack,
                 reconstruction_weight: float, output_weight: float, feature_weight: float,
                 adversarial_teacher_weight: float, adversarial_fraction: float):
        pairs = [(t, w) for t, w in ((normal, 1.0 - float(adversarial_teacher_weight)),
                                     (adversarial, float(adversarial_teacher_weight))) if t is not None]
        if not pairs:
            raise ValueError("PurifierDistillation needs at least one teacher")
        if len(pairs) == 1:
            pairs = [(pairs[0][0], 1.0)]
        self.teachers = [t.eval().requires_grad_(False) for t, _ in pairs]
        self.teacher_weights = tuple(w for _, w in pairs)
        self.attack = attack
        self.w_rec, self.w_out, self.w_feat = float(reconstruction_weight), float(output_weight), float(feature_weight)
        self.adversarial_fraction = float(adversarial_fraction)

    def inputs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        k = round(self.adversarial_fraction * len(x))
        if k == 0:
            return x
        return torch.cat([classifier_adversarial(model, x[:k], y[:k], self.attack), x[k:]])

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        x_in = self.inputs(model, x, y)
        code, sizes = model.purifier.encode(x_in) if self.w_feat else (None, None)
        purified = model.purifier.decode(code, sizes) if self.w_feat else model.purifier(x_in)
        loss = self.w_rec * F.mse_loss(purified, x)
        for teacher, a in zip(self.teachers, self.teacher_weights):
            if not a:
                continue
            with torch.no_grad():
                t_code, t_sizes = teacher.encode(x_in) if self.w_feat else (None, None)
                t_out = teacher.decode(t_code, t_sizes) if self.w_feat else teacher(x_in)
            loss = loss + a * self.w_out * F.mse_loss(purified, t_out)
            if self.w_feat:
                loss = loss + a * self.w_feat * F.mse_loss(code, t_code)
        return loss, _classify(model, purified)
