"""Stage `teacher`: train the first model with `teacher.training` (auto = what the method needs).

Method purification also trains its two purifier teachers here, behind that model (models/purifiers/);
for every other method that folder holds only an empty manifest.
"""
from robustkd import distributed, purification
from robustkd.methods import METHODS, loss_params, teacher_loss, teacher_temperature, teacher_training
from robustkd.pipeline import LIVE_DIR, MODELS_DIR, load_training_data, run_stage, train_role


def main(params: dict) -> None:
    meta, train_data, val_data = load_training_data()
    training = teacher_training(params)
    distributed.on_main(purification.clear_outputs)  # under torchrun, files are written by rank 0 only
    print(f"[teacher] method {params['method']}: teacher trained with {training!r}")
    train_role("teacher", params["teacher"], params["seed"], teacher_loss(params), MODELS_DIR / "teacher.pt",
               LIVE_DIR / "teacher", meta, train_data, val_data,
               extra_info={"method": params["method"], "training": training,
                           "temperature": teacher_temperature(params), "loss_params": loss_params(params)},
               cuda_deterministic=params["cuda_deterministic"], engine=params["engine"])
    names = []
    if METHODS[params["method"]].purifies:
        names = purification.train_teacher_purifiers(params, meta, train_data, val_data)
    distributed.on_main(purification.write_manifest, names)


if __name__ == "__main__":
    run_stage(main)
