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


FOOLED, HELD, CLEAN_ERROR = "red", "green", "darkorange"


def caption_colour(label: int, pred_clean: int, pred_adv: int) -> str:
    """Red only where the attack did it: the clean prediction was right and the adversarial one is wrong. Green:
    the adversarial prediction is right. Orange: the model was already wrong on the clean image (not the attack's)."""
    if pred_clean != label:
        return CLEAN_ERROR
    return HELD if pred_adv == label else FOOLED


def adversarial_grid(x: torch.Tensor, y: torch.Tensor, adversarial: dict, class_names: list[str], eps: float,
                     path: Path) -> None:
    """Row 0: clean images with labels; one row per model: its margin-PGD example and predictions (captions
    coloured by :func:`caption_colour`; a clean error is also marked with a leading ✗)."""
    rows, cols = 1 + len(adversarial), len(x)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for j in range(cols):
        _show(axes[0, j], x[j])
        axes[0, j].set_title(f"true: {class_names[y[j]]}", fontsize=7)
    for i, (name, (x_adv, pred_adv, pred_clean)) in enumerate(adversarial.items(), start=1):
        for j in range(cols):
            _show(axes[i, j], x_adv[j])
            colour = caption_colour(int(y[j]), int(pred_clean[j]), int(pred_adv[j]))
            mark = "✗ " if colour == CLEAN_ERROR else ""
            axes[i, j].set_title(f"{mark}{class_names[pred_clean[j]]}→{class_names[pred_adv[j]]}", fontsize=7,
                                 color=colour)
        axes[i, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(f"Margin-PGD at ε={eps:g}: clean prediction → adversarial prediction\n(red = fooled by the attack, "
                 f"green = still right, orange ✗ = already wrong on the clean image)", fontsize=9)
    _save(fig, path)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def accuracy_vs_robustness(rows: list[dict], eps: float, path: Path) -> None:
    """One point per model, its worst case's 95% interval as an error bar where the row has one. Models are named
    in a legend (own colour and marker), not by labels next to the points, which overlap when models are close."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, row in enumerate(rows):
        low, high = row.get("worst_case_acc_ci_low"), row.get("worst_case_acc_ci_high")
        yerr = None if low is None or high is None else [[row["worst_case_acc"] - low], [high - row["worst_case_acc"]]]
        ax.errorbar(row["clean_acc"], row["worst_case_acc"], yerr=yerr, fmt=MARKERS[i % len(MARKERS)],
                    color=f"C{i % 10}", markersize=7, capsize=3, label=row["model"], linestyle="none")
    ax.legend(fontsize=8, loc="upper left", title="model (bar: 95% interval)", title_fontsize=7)
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel(f"worst-case robust accuracy (ε={eps:g})")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    _save(fig, path)


LINE_STYLES = ("-", "--", "-.", ":")


def attack_styles(attacks: list[str]) -> dict[str, dict]:
    """A fixed style per attack, the same in every panel: its own colour, line style and marker, so series that
    coincide stay visible (the worst case: thick black, drawn first, under the attacks)."""
    styles, others = {}, [a for a in attacks if a != "worst_case"]
    for i, attack in enumerate(others):
        styles[attack] = {"color": f"C{i % 10}", "linestyle": LINE_STYLES[i % len(LINE_STYLES)],
                          "marker": MARKERS[i % len(MARKERS)], "markersize": 5, "linewidth": 1.5, "zorder": 3}
    if "worst_case" in attacks:
        styles["worst_case"] = {"color": "black", "linestyle": "-", "marker": "o", "markersize": 9, "linewidth": 4,
                                "alpha": 0.35, "zorder": 2}
    return styles


def robust_vs_eps(rows: list[dict], path: Path) -> None:
    """One panel per model, one line per attack (and the per-point worst case), a legend in every panel."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    styles = attack_styles(list(dict.fromkeys(r["attack"] for r in rows)))
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 4), squeeze=False, sharey=True)
    all_eps = sorted({r["eps"] for r in rows})
    step = 0.006 * ((all_eps[-1] - all_eps[0]) or 1)  # coinciding attacks side by side: a small offset along ε
    order = [a for a in styles if a != "worst_case"]
    for ax, model in zip(axes[0], models):
        attacks = list(dict.fromkeys(r["attack"] for r in rows if r["model"] == model))
        for attack in sorted(attacks, key=lambda a: a != "worst_case"):
            pts = sorted((r["eps"], r["robust_acc"]) for r in rows if r["model"] == model and r["attack"] == attack)
            shift = 0.0 if attack == "worst_case" else (order.index(attack) - (len(order) - 1) / 2) * step
            ax.plot([p[0] + shift for p in pts], [p[1] for p in pts], label=attack, **styles[attack])
        ax.set_title(model)
        ax.set_xlabel("ε (L∞); attacks offset a little")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper right")
    axes[0, 0].set_ylabel("robust accuracy")
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


def _heatmap(grid: list[list[float | None]], rows: list[str], cols: list[str], chosen: set[str], title: str,
             path: Path) -> None:
    """A success-rate heatmap; the labels of the ``chosen`` teachers are bold and starred, their cells outlined."""
    values = [[float("nan") if v is None else v for v in row] for row in grid]
    fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 2, 1.1 * len(rows) + 1.5))
    im = ax.imshow(values, vmin=0, vmax=1, cmap="viridis")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, "n/a" if v is None else f"{100 * v:.0f}%", ha="center", va="center",
                    color="white" if v is not None and v < 0.6 else "black", fontsize=9)
            if rows[i] in chosen and cols[j] in chosen:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    label = lambda n: ("★ " if n in chosen else "") + n.removeprefix("darht_")  # noqa: E731
    ax.set_xticks(range(len(cols)), [label(t) for t in cols], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [label(t) for t in rows])
    for names, ticks in ((cols, ax.get_xticklabels()), (rows, ax.get_yticklabels())):
        for name, tick in zip(names, ticks):
            if name in chosen:
                tick.set_fontweight("bold")
    ax.set_xlabel("evaluated on (target)")
    ax.set_ylabel("crafted on (source)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)


def transferability_heatmap(matrix: dict, path: Path) -> None:
    """Rows: the teacher the PGD examples were crafted on; columns: the model they are evaluated on (the K
    teachers, then the student). Cell: attack success rate over the target's clean-correct points. With a
    selection (``matrix["chosen"]``), the teachers the student learnt from are starred."""
    teachers = matrix.get("teachers") or []
    if not teachers:  # the metrics stage draws it for method darht only
        raise ValueError("transferability_heatmap: no DARHT teachers in this matrix")
    targets = teachers + (["student"] if "success_rate_on_student" in matrix else [])
    grid = [[(matrix["success_rate"][s].get(t) if t != "student" else matrix["success_rate_on_student"][s])
             for t in targets] for s in teachers]
    chosen = set(matrix.get("chosen") or [])
    note = "; ★ = chosen on the validation split (darht_select)" if chosen else ""
    _heatmap(grid, teachers, targets, chosen, f"Adversarial transferability, PGD at ε={matrix['eps']:g}, test split\n"
             f"(success rate over the target's clean-correct points{note})", path)


def selection_heatmap(selection: dict, path: Path) -> None:
    """The matrix darht_select chose from (validation split; cell: success rate among the points both classify
    correctly), the chosen teachers starred and their pairs outlined."""
    candidates = selection["candidates"]
    grid = [[selection["success_rate"][s][t] for t in candidates] for s in candidates]
    _heatmap(grid, candidates, candidates, set(selection["chosen"]),
             f"DARHT teacher selection: K={selection['k']} of {len(candidates)} (★), mean pairwise transferability "
             f"{selection['score']}\nPGD at ε={selection['attack']['eps']:g} on {selection['n_points']} validation "
             f"points (success rate among the points both classify correctly)", path)
