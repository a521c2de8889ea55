"""Adversarial weight perturbation (Wu, Xia & Wang 2020, "Adversarial Weight Perturbation Helps Robust
Generalization", AWP), for the training loop (:func:`robustkd.training.train`).

Each step, after the loss has crafted its adversarial examples (``loss.prepare``), the weights are moved to a nearby
point where the same objective (``loss.objective``) is higher, the training loss and its gradients are computed
there, the weights are put back exactly, and only then does the optimiser step (with those gradients):

1. a proxy copy of the model gets the model's current weights (and buffers) and, in train mode as in the reference
   code, one gradient-ascent step of the loss's own objective on the crafted batch (PGD-AT: CE(f(x'), y); TRADES:
   CE(f(x), y) + β·KL(f(x) ‖ f(x')); LTD: its KL to the teacher's soft labels + β·KL(f(x) ‖ f(x')));
2. per weight tensor l, the perturbation is v_l = γ·‖w_l‖·g_l/‖g_l‖ (g_l: the proxy's ascent direction, its
   gradient), so ‖v_l‖ = γ·‖w_l‖ (the paper's layer-wise relative budget; the reference code's
   ``diff_in_weights`` rescales the proxy's step to ‖w_l‖ and adds γ times it);
3. w ← w + v, the training loss and backward pass at w + v; w ← w (copied back bit for bit); optimiser step.

Which tensors: as the reference code (``diff_in_weights``), the parameters whose name contains "weight" and that
have more than one dimension: convolution, linear and attention projection weights. Biases, batch-norm and
layer-norm scales (1-D), the ViT's class token and position embedding (no "weight" in their names) are not perturbed.

Differences from the reference code, none of which changes the perturbation: the proxy's step is taken as a
gradient (its SGD step size cancels in the rescaling, so there is no step-size parameter); the weights are restored
by copying, not by subtracting v again, and before the optimiser step, not after it (the paper's Algorithm 1:
w ← (w + v) − η·∇ − v; with weight decay the reference applies it at w + v, here at w).

Under torchrun each process's proxy gradient (on its share of the batch) is averaged over the processes before
the rescaling, as the global batch of a single process would give, so every process applies the same v. Under bf16
autocast the proxy's forward pass runs in the training precision, as the training loss does; v is computed in fp32.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

EPS = 1e-20  # as the reference code: a zero gradient gives a zero perturbation


@runtime_checkable
class PerturbableLoss(Protocol):
    """A loss AWP can wrap: ``prepare`` crafts what the step keeps fixed (the adversarial batch, a teacher's soft
    labels), ``objective`` is the loss given it; ``loss(model, x, y)`` is ``objective(model, x, y, prepare(...))``."""

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any: ...

    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, prepared: Any
                  ) -> tuple[torch.Tensor, torch.Tensor]: ...


def supports(loss: Any) -> bool:
    """Whether AWP can be applied to ``loss`` (PGD-AT, TRADES and LTD can; the others are not AWP's)."""
    return isinstance(loss, PerturbableLoss)


@dataclass(frozen=True)
class AWPConfig:
    """params.yaml `awp`: γ (relative size of each weight tensor's perturbation) and the epochs without it."""
    gamma: float
    warmup_epochs: int = 0

    def __post_init__(self):
        if not (self.gamma >= 0.0 and self.gamma < float("inf")):
            raise ValueError(f"awp.gamma must be a finite number >= 0, got {self.gamma!r}")
        if isinstance(self.warmup_epochs, bool) or not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise ValueError(f"awp.warmup_epochs must be an integer >= 0, got {self.warmup_epochs!r}")

    @classmethod
    def from_params(cls, group: dict | None) -> "AWPConfig | None":
        """The `awp` group; None when it is absent or `enabled: false`."""
        if not group or not group["enabled"]:
            return None
        return cls(gamma=float(group["gamma"]), warmup_epochs=group["warmup_epochs"])

    def active(self, epoch: int) -> bool:
        """On from the 0-based epoch ``warmup_epochs`` (the reference AT-AWP code's ``epoch >= awp_warmup``)."""
        return epoch >= self.warmup_epochs

    def record(self) -> dict:
        """What a checkpoint trained with AWP records (its info's ``awp``)."""
        return {"enabled": True, "gamma": self.gamma, "warmup_epochs": self.warmup_epochs}


def perturbed_names(model: nn.Module) -> list[str]:
    """The trainable parameters AWP perturbs: "weight" in the name and more than one dimension (reference code)."""
    return [name for name, p in model.named_parameters() if p.requires_grad and p.dim() > 1 and "weight" in name]


class WeightPerturbation:
    """AWP for one model: :meth:`perturb` before the training loss, :meth:`restore` after its backward pass."""

    def __init__(self, model: nn.Module, config: AWPConfig, world: int = 1):
        self.model, self.config, self.world = model, config, world
        self.names = perturbed_names(model)
        if not self.names:
            raise ValueError("AWP: the model has no weight tensor to perturb (no trainable parameter with 'weight' "
                             "in its name and more than one dimension)")
        self.proxy = copy.deepcopy(model)
        self.proxy.requires_grad_(False)
        proxy_params = dict(self.proxy.named_parameters())
        self.proxy_weights = [proxy_params[n].requires_grad_(True) for n in self.names]
        params = dict(model.named_parameters())
        self.weights = [params[n] for n in self.names]
        self._saved: list[torch.Tensor] | None = None

    def direction(self, objective, scale: float = 1.0) -> list[torch.Tensor]:
        """The proxy's ascent direction at the model's current weights: d objective / d w for each perturbed tensor
        (under torchrun averaged over the processes; ``scale``: this process's share, as the training loop's)."""
        self.proxy.load_state_dict(self.model.state_dict())
        self.proxy.train()
        loss, _ = objective(self.proxy)
        grads = list(torch.autograd.grad(loss, self.proxy_weights))
        if self.world > 1:
            import torch.distributed as dist

            flat = torch.cat([g.reshape(-1) for g in grads]) * (scale / self.world)
            dist.all_reduce(flat)
            grads = [chunk.view_as(g) for chunk, g in zip(flat.split([g.numel() for g in grads]), grads)]
        return grads

    def perturbation(self, objective, scale: float = 1.0) -> list[torch.Tensor]:
        """v_l = γ·‖w_l‖·g_l/(‖g_l‖ + 1e-20) for each perturbed tensor, in fp32."""
        grads = self.direction(objective, scale)
        with torch.no_grad():
            return [self.config.gamma * w.detach().float().norm() / (g.float().norm() + EPS) * g.float()
                    for w, g in zip(self.weights, grads)]

    def perturb(self, loss: PerturbableLoss, net: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0):
        """Craft (``loss.prepare`` on ``net``), move the model's weights to w + v, and return the training loss and
        logits computed there (``loss.objective`` on ``net``). Call :meth:`restore` after its backward pass."""
        prepared = loss.prepare(net, x, y)
        v = self.perturbation(lambda m: loss.objective(m, x, y, prepared), scale)
        with torch.no_grad():
            self._saved = [w.detach().clone() for w in self.weights]
            for w, d in zip(self.weights, v):
                w.add_(d.to(w.dtype))
        # Autocast keeps its bf16 copy of each weight until the autocast region ends; crafting (under the training
        # step's autocast) already made those copies at w, so without this the loss would see w, not w + v.
        torch.clear_autocast_cache()
        return loss.objective(net, x, y, prepared)

    def restore(self) -> None:
        """Put back, bit for bit, the weights :meth:`perturb` moved (a no-op if nothing is perturbed)."""
        if self._saved is None:
            return
        with torch.no_grad():
            for w, saved in zip(self.weights, self._saved):
                w.copy_(saved)
        torch.clear_autocast_cache()  # no bf16 copy of w + v outlives the perturbation
        self._saved = None
