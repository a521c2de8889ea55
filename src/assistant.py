"""Stage `assistant`: the teacher-assistant chain; assistant i is distilled from model i-1 at temperature T.

Writes models/assistants/chain.json listing the chain in order: empty when chain_length = 0, and for
methods without a chain (all but defensive_distillation), whatever chain_length says.
"""
import shutil

from robustkd import distributed
from robustkd.io import atomic_write_json
from robustkd.methods import METHODS
from robustkd.pipeline import (ASSISTANTS_DIR, CHAIN_MANIFEST, LIVE_DIR, MODELS_DIR, load_model,
                               load_training_data, run_stage, train_role)


def main(params: dict) -> None:
    meta, train_data, val_data = load_training_data()
    method = METHODS[params["method"]]
    # DVC removes a stage's outputs before running it; clear leftovers of a manual run too (rank 0 under torchrun).
    distributed.on_main(clear_chain)
    previous_path = MODELS_DIR / "teacher.pt"
    names = []
    length = params["chain_length"] if method.uses_chain else 0
    if length != params["chain_length"]:
        print(f"[assistant] method {params['method']} has no teacher-assistant chain: chain_length "
              f"= {params['chain_length']} is not used")
    for i in range(1, length + 1):
        role = f"assistant_{i}"
        previous, _ = load_model(previous_path)
        out_path = ASSISTANTS_DIR / f"{role}.pt"
        train_role(role, params["assistant"], params["seed"] + i, method.student_loss(params, params["assistant"], previous),
                   out_path, LIVE_DIR / "assistants" / role, meta, train_data, val_data,
                   extra_info={"method": params["method"], "temperature": method.loss_temperature(params),
                               "distilled_from": previous_path.stem, "kd_lambda": params["assistant"]["kd_lambda"]},
                   upstream=[previous_path], cuda_deterministic=params["cuda_deterministic"],
                   engine=params["engine"], params_group="assistant")
        names.append(out_path.name)
        previous_path = out_path
    distributed.on_main(write_chain, names)
    if distributed.is_main():
        print(f"[assistant] chain of {len(names)} assistant(s): {names}")


def clear_chain() -> None:
    shutil.rmtree(ASSISTANTS_DIR, ignore_errors=True)
    ASSISTANTS_DIR.mkdir(parents=True)


def write_chain(names: list[str]) -> None:
    atomic_write_json(CHAIN_MANIFEST, {"assistants": names})
    # Also in the live folder: an empty folder is not kept by git, and DVC would then see the output missing.
    atomic_write_json(LIVE_DIR / "assistants" / "chain.json", {"assistants": names})


if __name__ == "__main__":
    run_stage(main)
