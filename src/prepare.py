"""Stage `prepare`: raw dataset -> compact uint8 tensors (train/val/test) + meta.json with checksums."""
from pathlib import Path

from robustkd import data, stage
from robustkd.paths import PREPARED_DIR


def main(params: dict) -> None:
    cfg = params["data"]
    meta = data.prepare(params["dataset"], Path(cfg["raw_dir"]), PREPARED_DIR, val_size=cfg["val_size"],
                        seed=params["seed"], download=cfg["download"], train_subset=cfg["train_subset"],
                        test_subset=cfg["test_subset"])
    print(f"[prepare] {meta['dataset']}: {meta['splits']} shape {meta['shape']} -> {PREPARED_DIR}")


if __name__ == "__main__":
    stage.run(main)
