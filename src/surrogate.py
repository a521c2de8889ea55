"""Stage `surrogate`: an independently trained model (own seed and architecture) for transfer attacks.

It depends on neither the method nor the temperature, so sweeps over those never retrain it.
"""
from robustkd.losses import TemperatureCE
from robustkd.pipeline import LIVE_DIR, MODELS_DIR, load_training_data, run_stage, train_role


def main(params: dict) -> None:
    meta, train_data, val_data = load_training_data()
    group = params["surrogate"]
    train_role("surrogate", group, group["seed"], TemperatureCE(1.0), MODELS_DIR / "surrogate.pt",
               LIVE_DIR / "surrogate", meta, train_data, val_data, extra_info={"method": "natural", "temperature": 1.0},
               cuda_deterministic=params["cuda_deterministic"], engine=params["engine"])


if __name__ == "__main__":
    run_stage(main)
