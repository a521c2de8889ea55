"""Under `torchrun --nproc_per_node 2` (gloo, CPU): a streamed split's shares and the training loop on it; used by
tests/test_imagenet.py.

    torchrun --standalone --nproc_per_node 2 tests/stream_ddp_worker.py PREPARED OUT   # rank 0 writes OUT/report.json
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from robustkd import distributed, splits  # noqa: E402
from robustkd.io import atomic_write_json  # noqa: E402
from robustkd.losses import TemperatureCE  # noqa: E402
from robustkd.models import build_model, place  # noqa: E402
from robustkd.training import TrainConfig, train  # noqa: E402

BATCH = 6  # 9 training images: global batches of 6 and 3, split 3 + 3 and 2 + 1


def main(prepared: Path, out: Path) -> None:
    torch.set_num_threads(1)
    device = torch.device("cpu")
    distributed.setup(device)
    world, rank = distributed.world_size(), distributed.rank()
    split = splits.open_split(prepared, "train", workers=0)
    keys, _ = split.train_keys(0, BATCH, 0, True, world, rank)
    indices = [[i for i, _ in batch] for batch in keys]
    mine = [xb for xb, _, _ in split.train_batches(0, BATCH, 0, True, world, rank)]
    single = [xb for xb, _, _ in split.train_batches(0, BATCH, 0, True)]  # what one process would see
    match = all(torch.equal(m, s[splits.shard(len(s), world, rank)]) for m, s in zip(mine, single))

    meta = __import__("robustkd.data", fromlist=["load_meta"]).load_meta(prepared)
    torch.manual_seed(0)
    # lenet: no batch norm, whose running statistics each CPU process keeps for its own share (docs/scale-out.md)
    model = place(build_model("lenet", 3, meta["shape"][1], meta["num_classes"], meta["mean"], meta["std"]), device)
    cfg = TrainConfig(epochs=1, batch_size=BATCH, optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0,
                      schedule="cosine", augment=True, seed=0)
    result = train(model, TemperatureCE(1.0), split, splits.open_split(prepared, "val"), cfg, "stream-ddp",
                   run_id="stream-ddp")
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    states = distributed.all_gather_object(state)
    agree = all(torch.equal(s[k], state[k]) for s in states for k in state)
    gathered = distributed.all_gather_object({"indices": indices, "match": match})
    if distributed.is_main():
        atomic_write_json(out / "report.json", {
            "world_size": world, "indices": [g["indices"] for g in gathered],
            "batch_shapes": [[len(b) for b in g["indices"]] for g in gathered],
            "pixels_match_single_process": all(g["match"] for g in gathered), "ranks_agree": agree,
            "val_acc": result.history[0]["val_acc"]})
    distributed.barrier()
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
