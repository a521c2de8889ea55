"""Stage `prepare`: raw dataset -> compact uint8 tensors (train/val/test) + meta.json with checksums; a streamed
dataset (ImageNet; `data.loader: stream`) -> an index of its image files per split instead (robustkd.splits)."""
from robustkd import splits, stage
from robustkd.paths import PREPARED_DIR


def main(params: dict) -> None:
    meta = splits.prepare(params, PREPARED_DIR)
    print(f"[prepare] {meta['dataset']}: {meta['splits']} shape {meta['shape']} -> {PREPARED_DIR}")


if __name__ == "__main__":
    stage.run(main)
