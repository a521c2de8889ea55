"""Stage `teacher`: train the first model with `teacher.training` (auto = what the method needs), then whatever
else the method trains beside it (method purification: its two purifier teachers), listed in the stage's manifest
models/purifiers/models.json (empty for the other methods)."""
import shutil

from robustkd import distributed, manifest, stage
from robustkd.methods.base import TEACHER_TRAININGS, loss_params, recorded_training
from robustkd.params import role_settings
from robustkd.methods.registry import method_for
from robustkd.paths import LIVE_DIR, TEACHER_EXTRAS_DIR, TEACHER_PATH
from robustkd.roles import RoleSpec, load_training_run, train_role

LIVE_EXTRAS_DIR = LIVE_DIR / "purifiers"
LIVE_NOTE = "purifiers.json"  # git drops empty folders, and DVC would then see that output missing


def main(params: dict) -> None:
    run = load_training_run(params, awp=True)  # a PGD-AT / TRADES teacher gets AWP when `awp.enabled`
    method = method_for(params)
    training = method.teacher_training_for(params)
    distributed.on_main(clear_extras)  # under torchrun, files are written by rank 0 only
    print(f"[teacher] method {params['method']}: teacher trained with {training!r}")
    record = {"method": params["method"], "training": recorded_training(training),
              "temperature": method.teacher_temperature(params),
              "loss_params": loss_params(params)}
    train_role(RoleSpec("teacher", role_settings(params, "teacher"), params["seed"], TEACHER_TRAININGS[training](params),
                        TEACHER_PATH, LIVE_DIR / "teacher", record), run)
    distributed.on_main(write_extras, method.train_teacher_extras(params, run))


def clear_extras() -> None:
    """DVC removes a stage's outputs before running it; clear leftovers of a manual run too."""
    shutil.rmtree(TEACHER_EXTRAS_DIR, ignore_errors=True)
    shutil.rmtree(LIVE_EXTRAS_DIR, ignore_errors=True)
    TEACHER_EXTRAS_DIR.mkdir(parents=True)


def write_extras(models: list[dict]) -> None:
    manifest.write(TEACHER_EXTRAS_DIR, "teacher", models)
    manifest.write_live_note(LIVE_EXTRAS_DIR / LIVE_NOTE, "purifiers", models)


if __name__ == "__main__":
    stage.run(main, torchrun=True)
