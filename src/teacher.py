"""Stage `teacher`: train the first model, then whatever else the method's plug-in trains beside it (method
purification: the purifier teachers listed in `purifier_student.teachers`), listed in the stage's manifest
models/purifiers/models.json (empty for the other methods).

Everything comes from the stage's resolved configuration, results/config/teacher.json (robustkd.teacher_config,
written by the validate stage, the stage's only params-derived dep): `teacher.training: auto` resolved, the loss's
own params only, the `teacher.init_from` file's sha256. So methods that need the same teacher (ard, rslad, ltd) share
one: DVC keeps it instead of training it again.
"""
import shutil

from robustkd import distributed, manifest, stage, teacher_config
from robustkd.methods.base import TEACHER_TRAININGS, teacher_record
from robustkd.methods.registry import METHODS
from robustkd.models import model_spec
from robustkd.params import role_settings
from robustkd.paths import LIVE_DIR, PREPARED_DIR, TEACHER_EXTRAS_DIR, TEACHER_PATH
from robustkd.pretrained import load_state
from robustkd.roles import RoleSpec, load_training_run, train_role
from robustkd.data import load_meta

LIVE_EXTRAS_DIR = LIVE_DIR / "purifiers"
LIVE_NOTE = "purifiers.json"  # git drops empty folders, and DVC would then see that output missing


def main(params: dict) -> None:
    config = teacher_config.read(params)  # from here on, only the resolved configuration
    group = role_settings(config, "teacher")
    training = group["training"]
    init = config["init_from"]
    # the init file is loaded and checked before anything is written (errors name `teacher.init_from`)
    init_state = (load_state(init["path"], model_spec(group["arch"], load_meta(PREPARED_DIR), group["width"]))
                  if init else None)
    run = load_training_run(config, awp="awp" in config)  # a PGD-AT / TRADES teacher gets AWP when `awp.enabled`
    distributed.on_main(clear_extras)  # under torchrun, files are written by rank 0 only
    started = f", from {init['path']}" if init else ""
    print(f"[teacher] trained with {training!r}, {group['epochs']} epoch(s){started}")
    train_role(RoleSpec("teacher", group, config["seed"], TEACHER_TRAININGS[training](config), TEACHER_PATH,
                        LIVE_DIR / "teacher", teacher_record(config), init_state=init_state), run)
    extras = config["teacher_extras"]
    distributed.on_main(write_extras, METHODS[extras].train_teacher_extras(config, run) if extras else [])


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
