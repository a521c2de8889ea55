"""tools/cw_budget.py: CW-L2 at several budgets on the points a model classifies correctly, and the logit margin."""
import sys

import pytest
import torch

from attack_fixtures import FMNIST_DIR, fashion_mnist, fashion_mnist_available, trained_fmnist_model
from conftest import ROOT
from robustkd import attacks

sys.path.insert(0, str(ROOT / "tools"))
import cw_budget  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_logit_margin_is_the_true_logit_minus_the_best_other():
    model = torch.nn.Identity()
    logits = torch.tensor([[3.0, 1.0, 2.5], [0.0, 4.0, 1.0]])
    assert cw_budget.logit_margins(model, logits, torch.tensor([0, 2])) == [0.5, -3.0]


def test_budgets_are_parsed_and_bad_ones_refused():
    assert cw_budget.parse_budget("200x4") == (200, 4)
    for bad in ("200", "0x4", "x4", "200x-1"):
        with pytest.raises(SystemExit, match="STEPSxBINARY_SEARCH_STEPS"):
            cw_budget.parse_budget(bad)


@pytest.mark.skipif(not fashion_mnist_available(), reason=f"real Fashion-MNIST not found in {FMNIST_DIR}")
def test_each_budget_is_cw_l2_on_the_correctly_classified_points():
    model = trained_fmnist_model(n_train=1000).eval()
    x, y = fashion_mnist("test", 16)
    result = cw_budget.measure(model, x, y, [(5, 1), (10, 2)], c_init=0.1, lr=0.01)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert 0 < result["points"] == int(correct.sum()) < 16  # the misclassified points are left out
    assert result["logit_margin_median"] > 0
    with attacks.frozen(model):
        _, dist = attacks.cw_l2(model, x[correct], y[correct], steps=10, binary_search_steps=2, c_init=0.1, lr=0.01)
    found = dist[dist != float("inf")]
    assert result["budgets"]["10x2"]["success_rate"] == round(len(found) / int(correct.sum()), 4)
    assert set(result["budgets"]) == {"5x1", "10x2"} and all(b["seconds"] >= 0 for b in result["budgets"].values())
