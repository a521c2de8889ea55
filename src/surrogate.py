"""Stage `surrogate`: an independently trained model (own seed and architecture) for transfer attacks.

It depends on neither the method nor the temperature, so sweeps over those never retrain it.
"""
from robustkd import stage
from robustkd.losses import TemperatureCE
from robustkd.params import role_settings
from robustkd.paths import LIVE_DIR, SURROGATE_PATH
from robustkd.roles import RoleSpec, load_training_run, train_role


def main(params: dict) -> None:
    group = role_settings(params, "surrogate")
    train_role(RoleSpec("surrogate", group, group["seed"], TemperatureCE(1.0), SURROGATE_PATH, LIVE_DIR / "surrogate",
                        record={"method": "natural", "temperature": 1.0}), load_training_run(params))


if __name__ == "__main__":
    stage.run(main, torchrun=True)
