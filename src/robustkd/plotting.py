"""Matplotlib figures (PNG), written atomically. DVC's own plots use the JSON rows from the metrics stage."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display on CI or servers
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_path  # noqa: E402

if TYPE_CHECKING:  # the image grids take tensors; the metrics stage's charts run without torch
    import torch


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def _show(ax, img: torch.Tensor) -> None:
    img = img.permute(1, 2, 0).numpy()
    ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def adversarial_grid(x: torch.Tensor, y: torch.Tensor, adversarial: dict, class_names: list[str], eps: float,
                     path: Path) -> None:
    """Row 0: clean images with labels; one row per model: its margin-PGD example and predictions."""
    rows, cols = 1 + len(adversarial), len(x)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for j in range(cols):
        _show(axes[0, j], x[j])
        axes[0, j].set_title(f"true: {class_names[y[j]]}", fontsize=7)
    for i, (name, (x_adv, pred_adv, pred_clean)) in enumerate(adversarial.items(), start=1):
        for j in range(cols):
            _show(axes[i, j], x_adv[j])
            colour = "green" if pred_adv[j] == y[j] else "red"
            axes[i, j].set_title(f"{class_names[pred_clean[j]]}→{class_names[pred_adv[j]]}", fontsize=7, color=colour)
        axes[i, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(f"Margin-PGD at ε={eps:g}: clean prediction → adversarial prediction (red = fooled)", fontsize=9)
    _save(fig, path)


def accuracy_vs_robustness(rows: list[dict], eps: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 4))
    for row in rows:
        ax.scatter(row["clean_acc"], row["worst_case_acc"], s=40)
        ax.annotate(row["model"], (row["clean_acc"], row["worst_case_acc"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel(f"worst-case robust accuracy (ε={eps:g})")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    _save(fig, path)


def robust_vs_eps(rows: list[dict], path: Path) -> None:
    """One panel per model, one line per attack (and the per-point worst case)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.6), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        attacks = list(dict.fromkeys(r["attack"] for r in rows if r["model"] == model))
        for attack in attacks:
            pts = sorted((r["eps"], r["robust_acc"]) for r in rows if r["model"] == model and r["attack"] == attack)
            style = {"color": "black", "linewidth": 2.5} if attack == "worst_case" else {}
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=attack, **style)
        ax.set_title(model)
        ax.set_xlabel("ε (L∞)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("robust accuracy")
    axes[0, -1].legend(fontsize=7, loc="upper right")
    _save(fig, path)


def purification_grid(x: torch.Tensor, y: torch.Tensor, rows: dict[str, tuple[torch.Tensor, torch.Tensor]],
                      class_names: list[str], title: str, path: Path) -> None:
    """One row per stage (clean, adversarial, each purifier's output), each cell titled with the prediction.

    ``rows`` maps a row label to (images (N, C, H, W), predictions (N,)) in display order; a title is
    green when the prediction equals ``y`` (the labels of the clean images ``x``) and red otherwise. The first
    row also names the true class where the prediction is wrong.
    """
    n_rows, cols = len(rows), len(x)
    fig, axes = plt.subplots(n_rows, cols, figsize=(1.6 * cols, 1.9 * n_rows), squeeze=False)
    for i, (name, (images, pred)) in enumerate(rows.items()):
        for j in range(cols):
            _show(axes[i, j], images[j])
            right = pred[j] == y[j]
            label = class_names[pred[j]] if right or i else f"{class_names[pred[j]]} (true: {class_names[y[j]]})"
            axes[i, j].set_title(label, fontsize=7, color="green" if right else "red")
        axes[i, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def transferability_heatmap(matrix: dict, path: Path) -> None:
    """Rows: the teacher the PGD examples were crafted on; columns: the model they are evaluated on (the K
    teachers, then the student). Cell: attack success rate over the target's clean-correct points."""
    teachers = matrix.get("teachers") or []
    if not teachers:
        fig, ax = plt.subplots(figsize=(4, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no DARHT teachers in this run", ha="center", va="center")
        _save(fig, path)
        return
    targets = teachers + (["student"] if "success_rate_on_student" in matrix else [])
    grid = [[(matrix["success_rate"][s].get(t) if t != "student" else matrix["success_rate_on_student"][s])
             for t in targets] for s in teachers]
    values = [[float("nan") if v is None else v for v in row] for row in grid]
    fig, ax = plt.subplots(figsize=(1.3 * len(targets) + 2, 1.1 * len(teachers) + 1.5))
    im = ax.imshow(values, vmin=0, vmax=1, cmap="viridis")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, "n/a" if v is None else f"{100 * v:.0f}%", ha="center", va="center",
                    color="white" if v is not None and v < 0.6 else "black", fontsize=9)
    short = lambda n: n.removeprefix("darht_")  # noqa: E731
    ax.set_xticks(range(len(targets)), [short(t) for t in targets], rotation=30, ha="right")
    ax.set_yticks(range(len(teachers)), [short(t) for t in teachers])
    ax.set_xlabel("evaluated on (target)")
    ax.set_ylabel("crafted on (source)")
    ax.set_title(f"Adversarial transferability, PGD at ε={matrix['eps']:g}\n(success rate over the target's "
                 f"clean-correct points)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)
