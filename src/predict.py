"""Stage `predict`: every evaluated model's label for every test image -> results/predict/<model>.json.

Clean accuracy depends on the models and the test set only; computed here, once per model, an attack-only change
(`dvc exp run -S attack.seed=1`) reruns attack and metrics without it. The attack stage checks that each file was
made from the checkpoint it attacks.
"""
import shutil
from pathlib import Path

from robustkd import data, manifest, splits, stage
from robustkd.inference import predict_split, save_predictions
from robustkd.io import atomic_write_json
from robustkd.paths import PREDICTIONS_DIR, PREPARED_DIR
from robustkd.roles import load_model
from robustkd.training import pick_device


def main(params: dict) -> None:
    batch_size = params["attack"]["batch_size"]
    meta = data.load_meta(PREPARED_DIR)
    models = manifest.evaluated_models()
    device = pick_device()
    test = splits.open_split(PREPARED_DIR, "test", params["data"]["workers"]).to(device)
    y_test = test.labels
    shutil.rmtree(PREDICTIONS_DIR, ignore_errors=True)
    for name, evaluated in models.items():
        path = Path(evaluated["checkpoint"])
        model, _ = load_model(path)
        correct = save_predictions(name, path, splits.split_digest(meta, "test"),
                                   predict_split(model, test, batch_size), y_test)
        print(f"[predict] {name}: clean {correct / len(y_test):.4f}")
    atomic_write_json(PREDICTIONS_DIR / "index.json", {"models": list(models)})


if __name__ == "__main__":
    stage.run(main, torchrun=True)
