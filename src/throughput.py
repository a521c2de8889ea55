"""Training throughput (images/s) of the DARHT teachers as params.yaml sizes them, natural and PGD adversarial.

    OMP_NUM_THREADS=2 python src/throughput.py            # every entry of darht.pool, and the student
    python src/throughput.py --steps 10 --threads 1

One Adam step of the real model on a random batch of `darht.teacher_training.batch_size` images of the prepared
shape (1x28x28 unless data/prepared says otherwise), and the same with the real training attack in front
(robustkd.adversarial, `train_attack` settings). Not a pipeline stage: a tool for sizing the CPU defaults.
"""
import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from robustkd import params as params_mod
from robustkd.adversarial import InnerAttack, maximise
from robustkd.models import build_model, place


def measure(model, x, y, attack, steps: int) -> tuple[float, float]:
    opt = torch.optim.Adam(model.parameters(), 3e-3)

    def step(adversarial: bool) -> None:
        xb = maximise(model, x, lambda z: F.cross_entropy(z, y), attack) if adversarial else x
        loss = F.cross_entropy(model(xb), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    out = []
    for adversarial in (False, True):
        step(adversarial)  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            step(adversarial)
        out.append(len(x) * steps / (time.perf_counter() - t0))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    p = params_mod.load("params.yaml")
    meta_path = Path("data/prepared/meta.json")
    shape = json.loads(meta_path.read_text())["shape"] if meta_path.is_file() else [1, 28, 28]
    c, s, _ = shape
    bs = p["darht"]["teacher_training"]["batch_size"]
    torch.manual_seed(0)
    x = torch.rand(bs, c, s, s).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,))
    attack = InnerAttack.from_params(p)
    models = {f"darht.pool.{n}": (t["arch"], t["width"], t["depth"]) for n, t in p["darht"]["pool"].items()}
    models["student"] = (p["student"]["arch"], p["student"]["width"], None)
    print(f"{torch.get_num_threads()} thread(s), batch {bs}, {c}x{s}x{s}, PGD-{attack.steps}")
    print("| model | arch | width | depth | params | natural img/s | PGD-AT img/s |\n|---|---|---|---|---|---|---|")
    seen = {}
    for name, (arch, width, depth) in models.items():
        if (arch, width, depth) not in seen:
            model = place(build_model(arch, c, s, 10, [0.5] * c, [0.25] * c, width=width, depth=depth), "cpu")
            n = sum(q.numel() for q in model.parameters())
            seen[(arch, width, depth)] = (n, *measure(model, x, y, attack, args.steps))
        n, nat, adv = seen[(arch, width, depth)]
        print(f"| {name} | {arch} | {width} | {depth} | {n} | {nat:.0f} | {adv:.0f} |", flush=True)


if __name__ == "__main__":
    main()
