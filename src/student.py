"""Stage `student`: distil the deployed model from the last assistant (or the teacher if the chain is empty)."""
from robustkd.methods import METHODS
from robustkd.pipeline import LIVE_DIR, MODELS_DIR, chain_paths, load_model, load_training_data, run_stage, train_role


def main(params: dict) -> None:
    meta, train_data, val_data = load_training_data()
    chain = chain_paths()
    previous_path = chain[-1] if chain else MODELS_DIR / "teacher.pt"
    previous, _ = load_model(previous_path)
    method = METHODS[params["method"]]
    group = params["student"]
    train_role("student", group, params["seed"] + 1000, method.distill_loss(params, group, previous),
               MODELS_DIR / "student.pt", LIVE_DIR / "student", meta, train_data, val_data,
               extra_info={"method": params["method"], "temperature": params["temperature"],
                           "distilled_from": previous_path.stem, "kd_lambda": group["kd_lambda"]},
               upstream=[previous_path], cuda_deterministic=params["cuda_deterministic"])


if __name__ == "__main__":
    run_stage(main)
