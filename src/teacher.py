"""Stage `teacher`: train the first model of the chain with the method's teacher loss."""
from robustkd.methods import METHODS
from robustkd.pipeline import LIVE_DIR, MODELS_DIR, load_training_data, run_stage, train_role


def main(params: dict) -> None:
    meta, train_data, val_data = load_training_data()
    method = METHODS[params["method"]]
    train_role("teacher", params["teacher"], params["seed"], method.teacher_loss(params), MODELS_DIR / "teacher.pt",
               LIVE_DIR / "teacher", meta, train_data, val_data,
               extra_info={"method": params["method"], "temperature": params["temperature"]},
               cuda_deterministic=params["cuda_deterministic"])


if __name__ == "__main__":
    run_stage(main)
