"""Stage `assistant`: the method's teacher-assistant chain (defensive_distillation: assistant i is distilled from
model i-1 at temperature T), listed in order in models/assistants/models.json: empty when chain_length = 0, and for
methods without a chain, whatever chain_length says.
"""
import shutil

from robustkd import distributed, manifest, stage
from robustkd.methods.registry import method_for
from robustkd.paths import ASSISTANTS_DIR, LIVE_DIR
from robustkd.roles import load_training_run

LIVE_NOTE = LIVE_DIR / "assistants" / "chain.json"  # git drops empty folders, and DVC would then see that output missing


def main(params: dict) -> None:
    run = load_training_run(params)
    method = method_for(params)
    # DVC removes a stage's outputs before running it; clear leftovers of a manual run too (rank 0 under torchrun).
    distributed.on_main(clear_chain)
    if method.chain_length(params) != params["chain_length"]:
        print(f"[assistant] method {params['method']} has no teacher-assistant chain: chain_length "
              f"= {params['chain_length']} is not used")
    models = method.train_assistants(params, run)
    distributed.on_main(write_chain, models)
    if distributed.is_main():
        print(f"[assistant] chain of {len(models)} assistant(s): {[m['name'] for m in models]}")


def clear_chain() -> None:
    shutil.rmtree(ASSISTANTS_DIR, ignore_errors=True)
    ASSISTANTS_DIR.mkdir(parents=True)


def write_chain(models: list[dict]) -> None:
    manifest.write(ASSISTANTS_DIR, "assistant", models)
    manifest.write_live_note(LIVE_NOTE, "assistants", models)


if __name__ == "__main__":
    stage.run(main, torchrun=True)
