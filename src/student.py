"""Stage `student`: the deployed model.

A distilling method learns from the last assistant (or the teacher if the chain is empty); the others
(natural, pgd_at, trades) train it from scratch with their own loss. For purification the student is a
purifier distilled from the two purifier teachers, deployed in front of the teacher classifier. For darht it
learns from the K teachers of the `darht_teacher@<name>` stages, through a feature-map head (robustkd/darht.py).
"""
from robustkd import darht, purification
from robustkd.methods import METHODS, loss_params
from robustkd.pipeline import (LIVE_DIR, MODELS_DIR, chain_paths, load_model, load_training_data,
                               run_stage, train_role)


def main(params: dict) -> None:
    meta, train_data, val_data = load_training_data()
    method = METHODS[params["method"]]
    if method.purifies:
        purification.train_student_purifier(params, meta, train_data, val_data)
    elif method.pool_teachers:
        darht.train_student(params, meta, train_data, val_data)
    else:
        train_classifier_student(params, method, meta, train_data, val_data)


def train_classifier_student(params: dict, method, meta: dict, train_data, val_data) -> None:
    group = params["student"]
    previous, previous_path, upstream = None, None, []
    if method.distills:
        chain = chain_paths()
        previous_path = chain[-1] if chain else MODELS_DIR / "teacher.pt"
        previous, _ = load_model(previous_path)
        upstream = [previous_path]
    train_role("student", group, params["seed"] + 1000, method.student_loss(params, group, previous),
               MODELS_DIR / "student.pt", LIVE_DIR / "student", meta, train_data, val_data,
               extra_info={"method": params["method"], "temperature": method.loss_temperature(params),
                           "output_temperature": method.output_temperature(params),
                           "distilled_from": previous_path.stem if previous_path else None,
                           "kd_lambda": group["kd_lambda"], "loss_params": loss_params(params)},
               upstream=upstream, cuda_deterministic=params["cuda_deterministic"],
               engine=params["engine"],
               output_temperature=method.output_temperature(params))


if __name__ == "__main__":
    run_stage(main)
