"""Clean predictions (stage predict, robustkd.inference): what the attack stage reads instead of recomputing clean
accuracy must equal what it would compute, and a file made from another checkpoint or test set is refused."""
import json

import pytest
import torch

from attack_fixtures import FMNIST_DIR, fashion_mnist, fashion_mnist_available, seeded_model, trained_fmnist_model
from robustkd import attacks, evaluation, inference
from robustkd.bitsets import decode_bits
from robustkd.errors import CheckpointError
from robustkd.models import save_checkpoint

CFG = {
    "batch_size": 32, "seed": 0, "eps": [0.05], "headline_eps": 0.05, "cascade": True,
    "pgd": {"steps": 3, "step_size_ratio": 0.25, "restarts": 1}, "pgd_l2": {"eps": [1.0], "steps": 3, "restarts": 1},
    "cw_l2": {"n_points": 8, "steps": 5, "binary_search_steps": 1, "c_init": 0.1, "lr": 0.01},
    "autoattack": {"version": "custom", "attacks": ["apgd-ce"], "eps": [0.05], "apgd_restarts": 1},
    "square": {"n_queries": 10}, "transfer": {"steps": 2}, "sensitivity_points": 4,
}

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: 1 thread for small convs


@pytest.fixture(scope="module")
def setting():
    if not fashion_mnist_available():
        pytest.skip(f"real Fashion-MNIST IDX files not found in {FMNIST_DIR}")
    model = trained_fmnist_model(n_train=1000, epochs=1).eval()
    x, y = fashion_mnist("test", 48)
    idx = torch.arange(8, 40)
    transfer_adv = {evaluation.eps_key(0.05): x[idx].clone()}  # the clean images: a transfer that changes nothing
    return model, x, y, idx, transfer_adv


def test_recorded_clean_predictions_give_the_same_evaluation(setting):
    model, x, y, idx, transfer_adv = setting
    recorded = inference.predict(model, x, 7) == y  # another batch size than the attacks'
    with attacks.frozen(model):
        computed = evaluation.evaluate(model, "m", x, y, idx, CFG, transfer_adv)
        from_file = evaluation.evaluate(model, "m", x, y, idx, CFG, transfer_adv, clean_correct=recorded)
    assert from_file == computed
    assert 0 < computed["clean_correct"] < len(y)


def test_evaluation_uses_the_recorded_predictions(setting):
    """Not recomputed: a record saying every point is wrong makes every point count as broken, and the cascade
    then gives AutoAttack and Square nothing to attack."""
    model, x, y, idx, transfer_adv = setting
    with attacks.frozen(model):
        result = evaluation.evaluate(model, "m", x, y, idx, CFG, transfer_adv,
                                     clean_correct=torch.zeros(len(y), dtype=torch.bool))
    assert result["clean_correct"] == 0 and result["attacked_clean_correct"] == [0] * len(idx)
    assert result["n_evaluated"][evaluation.AUTOATTACK] == {"eps_0p05": 0}
    assert result["n_evaluated"][evaluation.SQUARE] == {"eps_0p05": 0}


@pytest.fixture
def saved(tmp_path, monkeypatch):
    """A checkpoint and its predictions file, written in a temporary working directory."""
    monkeypatch.chdir(tmp_path)
    checkpoint = tmp_path / "models" / "m.pt"
    checkpoint.parent.mkdir()
    save_checkpoint(checkpoint, seeded_model(0), {"arch": "test"}, {})
    labels = torch.tensor([0, 1, 2, 3, 4])
    correct = inference.save_predictions("m", checkpoint, "test-sha", torch.tensor([0, 1, 9, 3, 9]), labels)
    return checkpoint, labels, correct


def test_predictions_round_trip(saved):
    checkpoint, labels, correct = saved
    assert correct == 3
    record = json.loads(inference.predictions_path("m").read_text())
    assert record["clean_correct"] == 3 and record["n_test"] == 5 and record["predictions"] == [0, 1, 9, 3, 9]
    assert decode_bits(record["correct"], 5).tolist() == [True, True, False, True, False]  # for results/outcomes.json
    assert inference.load_clean_correct("m", checkpoint, "test-sha", labels).tolist() == [True, True, False, True,
                                                                                           False]


def test_predictions_of_another_checkpoint_are_refused(saved):
    checkpoint, labels, _ = saved
    save_checkpoint(checkpoint, seeded_model(1), {"arch": "test"}, {})  # retrained since the predict stage ran
    with pytest.raises(CheckpointError, match=r"m\.json: computed from another checkpoint .*dvc repro predict"):
        inference.load_clean_correct("m", checkpoint, "test-sha", labels)


@pytest.mark.parametrize("test_sha, labels", [("other-sha", [0, 1, 2, 3, 4]), ("test-sha", [0, 1, 2, 3])])
def test_predictions_of_another_test_set_are_refused(saved, test_sha, labels):
    checkpoint, _, _ = saved
    with pytest.raises(CheckpointError, match=r"m\.json: computed on another test split .*dvc repro predict"):
        inference.load_clean_correct("m", checkpoint, test_sha, torch.tensor(labels))


def test_missing_or_broken_predictions_name_the_file_and_the_fix(saved):
    checkpoint, labels, _ = saved
    with pytest.raises(CheckpointError, match=r"other\.json: not found; rerun the predict stage"):
        inference.load_clean_correct("other", checkpoint, "test-sha", labels)
    inference.predictions_path("m").write_text("{")
    with pytest.raises(CheckpointError, match=r"m\.json: unreadable .*rerun the predict stage"):
        inference.load_clean_correct("m", checkpoint, "test-sha", labels)
