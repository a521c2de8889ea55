"""Run the real training loop on toy data, as one process (`python`) or under `torchrun`; used by tests/test_ddp.py.

    python tests/ddp_worker.py OUT LOSS [BATCH_SIZE [BF16]]   # LOSS: ce | trades | ce_awp (PGD-AT at ε = 0, with AWP, γ 0.01);
                                                              # BF16: 1 (engine default) | 0
                                                              # writes OUT/weights.pt (rank 0)
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

from robustkd import distributed  # noqa: E402
from robustkd.awp import AWPConfig  # noqa: E402
from robustkd.adversarial import InnerAttack  # noqa: E402
from robustkd.io import atomic_torch_save, atomic_write_json  # noqa: E402
from robustkd.losses import PGDAT, TRADES, TemperatureCE  # noqa: E402
from robustkd.models import build_model, place  # noqa: E402
from robustkd.training import Engine, TrainConfig, pick_device, train  # noqa: E402
from test_training import toy_data  # noqa: E402


def main(out: Path, loss_name: str, batch_size: int, bf16: bool) -> None:
    torch.set_num_threads(1)
    device = pick_device()
    torch.manual_seed(0)
    model = place(build_model("lenet", 1, 28, 10, [0.2], [0.3]), device)
    trades = TRADES(InnerAttack(eps=0.1, steps=2, step_size=0.05, random_start="normal"), 1.0)
    # PGD-AT at ε = 0: CE on the clean batch, with no random draw (the processes' random starts differ from a single
    # process's), through the AWP path
    at_zero = PGDAT(InnerAttack(eps=0.0, steps=1, step_size=0.05))
    loss = {"ce": TemperatureCE(1.0), "trades": trades, "ce_awp": at_zero}[loss_name]
    awp = AWPConfig(0.01) if loss_name == "ce_awp" else None
    # 200 samples, batch 32: six full batches and a last one of 8 per epoch (split 4 + 4 over two processes)
    cfg = TrainConfig(epochs=2, batch_size=batch_size, optimizer="adam", lr=2e-3, momentum=0.9, weight_decay=0.0,
                      schedule="cosine", augment=True, seed=0)
    result = train(model, loss, toy_data(200, 0), toy_data(60, 1), cfg, "ddp", live_dir=out / "live",
                   resume_path=out / "resume.pt", run_id="ddp-test", engine=Engine(bf16=bf16), awp=awp)
    # every process must end with the same weights: compare each one's to rank 0's
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    gathered = distributed.all_gather_object(state)
    same = all(torch.equal(g[k], state[k]) for g in gathered for k in state)
    if distributed.is_main():
        atomic_torch_save(state, out / "weights.pt")
        atomic_write_json(out / "result.json", {"history": result.history, "best_epoch": result.best_epoch,
                                                "world_size": len(gathered), "ranks_agree": same,
                                                "precision": result.precision})
    distributed.barrier()
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 32,
         sys.argv[4] != "0" if len(sys.argv) > 4 else True)
