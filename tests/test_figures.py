"""The metrics and attack stages' PNGs: what each figure draws (its data, labels, colours), not its pixels."""
import pytest
import torch

from robustkd import plotting


@pytest.fixture
def figures(monkeypatch):
    """Keeps every figure a plotting function would save, instead of writing it."""
    kept = []
    monkeypatch.setattr(plotting, "_save", lambda fig, path: kept.append(fig))
    return kept


ROWS = [{"model": "teacher", "clean_acc": 0.8927, "worst_case_acc": 0.0, "worst_case_acc_ci_low": 0.0,
         "worst_case_acc_ci_high": 0.0095},
        {"model": "assistant_1", "clean_acc": 0.8739, "worst_case_acc": 0.0, "worst_case_acc_ci_low": 0.0,
         "worst_case_acc_ci_high": 0.0095},
        {"model": "student", "clean_acc": 0.8667, "worst_case_acc": 0.0125, "worst_case_acc_ci_low": 0.0054,
         "worst_case_acc_ci_high": 0.0289}]


def test_accuracy_vs_robustness_names_models_in_a_legend_with_their_intervals(figures):
    plotting.accuracy_vs_robustness(ROWS, 0.1, "unused.png")
    ax = figures[0].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["teacher", "assistant_1", "student"]
    assert not [t for t in ax.texts if t.get_text() in {"teacher", "assistant_1", "student"}]  # no labels to overlap
    points = [tuple(c.lines[0].get_xydata()[0]) for c in ax.containers]
    assert points == [(0.8927, 0.0), (0.8739, 0.0), (0.8667, 0.0125)]
    bar = ax.containers[2].lines[2][0].get_segments()[0]  # the student's error bar: its 95% interval
    assert bar[0][1] == pytest.approx(0.0054) and bar[1][1] == pytest.approx(0.0289)
    assert len({c.lines[0].get_marker() for c in ax.containers}) == 3
    assert ax.get_xlim() == (0, 1.02) and ax.get_ylim() == (0, 1.02)


def test_robust_vs_eps_has_a_legend_per_panel_and_a_fixed_style_per_attack(figures):
    rows = [{"model": m, "attack": a, "eps": e, "robust_acc": acc}
            for m in ("teacher", "student")
            for a, acc in (("pgd_softmax_ce", 0.3), ("pgd_margin", 0.0), ("autoattack", 0.0), ("worst_case", 0.0))
            for e in (0.05, 0.1)]
    plotting.robust_vs_eps(rows, "unused.png")
    axes = figures[0].axes
    assert len(axes) == 2
    styles = []
    for ax in axes:
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert sorted(labels) == ["autoattack", "pgd_margin", "pgd_softmax_ce", "worst_case"]
        lines = {line.get_label(): line for line in ax.lines}
        assert all(list(line.get_ydata()) == [r["robust_acc"] for r in rows if r["model"] == ax.get_title()
                                              and r["attack"] == name][:2] for name, line in lines.items())
        styles.append({n: (line.get_color(), line.get_linestyle(), line.get_marker()) for n, line in lines.items()})
    assert styles[0] == styles[1]  # the same colour for an attack in every panel
    xs = {line.get_label(): tuple(line.get_xdata()) for line in axes[0].lines}
    assert xs["worst_case"] == (0.05, 0.1)  # the worst case at its ε; the attacks side by side around it
    assert len({xs[a] for a in ("pgd_softmax_ce", "pgd_margin", "autoattack")}) == 3
    assert all(abs(x - e) < 0.01 for v in xs.values() for x, e in zip(v, (0.05, 0.1)))
    # the three attacks at 0.0 coincide: each still has its own colour, line style and marker
    coinciding = [styles[0][a] for a in ("pgd_margin", "autoattack", "worst_case")]
    for i in range(3):
        assert len({s[i] for s in coinciding}) == 3


def test_caption_colours_mean_something():
    assert plotting.caption_colour(label=3, pred_clean=3, pred_adv=5) == "red"        # the attack fooled it
    assert plotting.caption_colour(label=3, pred_clean=3, pred_adv=3) == "green"      # it held
    assert plotting.caption_colour(label=3, pred_clean=4, pred_adv=5) == "darkorange"  # wrong before the attack
    assert plotting.caption_colour(label=3, pred_clean=4, pred_adv=3) == "darkorange"


def test_adversarial_grid_captions(figures):
    x = torch.zeros(3, 1, 4, 4)
    y = torch.tensor([0, 1, 2])
    pred_clean, pred_adv = torch.tensor([0, 1, 0]), torch.tensor([0, 2, 1])
    plotting.adversarial_grid(x, y, {"student": (x, pred_adv, pred_clean)}, ["a", "b", "c"], 0.1, "unused.png")
    axes = figures[0].axes
    titles = [(ax.get_title(), ax.title.get_color()) for ax in axes[3:6]]
    assert titles == [("a→a", "green"), ("b→c", "red"), ("✗ a→b", "darkorange")]


def test_no_placeholder_heatmap_for_a_run_without_darht_teachers(tmp_path, figures):
    with pytest.raises(ValueError):
        plotting.transferability_heatmap({"teachers": []}, tmp_path / "x.png")
    assert figures == []
