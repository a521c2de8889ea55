"""Benchmark: this project's engine against the code a researcher would otherwise write, on the same model,
data, batch size and steps, in one process, alternating runs (engine, reference, engine, reference, ...).

    python tools/bench.py                 # training, PGD and evaluation (about 12 min on 2 CPU cores)
    python tools/bench.py --pipeline      # also: the default `dvc repro` in a fresh clone of HEAD, stage by stage
                                          # (time, peak memory), then `dvc repro` and `dvc exp run` after an
                                          # attack-only change, and the attack stage with and without the cascade
    python tools/bench.py --quick         # small sizes, a smoke test of this script (numbers not meaningful)
    python tools/bench.py --only robust_train --json results/bench.json   # robust_train_speedup alone (about 5 min),
                                          # merged into the file's other measurements (docs/performance.md's run)
    python tools/bench.py --pipeline --clone-dir /tmp/bench-clone --json results/bench.json   # docs/performance.md's run

Compared:
  * training: `robustkd.training.train` as params.yaml's `engine` runs it (uint8 tensors on the device, batches cast
    there, channels_last, bf16 autocast where the device has native bf16) vs a torchvision `FashionMNIST` dataset +
    `ToTensor` + `DataLoader` loop in fp32 (the PyTorch tutorial's way); also timed, for reference: the engine with
    `engine.bf16: false` (fp32, the reference's precision), the reference's data loading alone, and a bare loop
    over pre-cast tensors in fp32 and under bf16 autocast (the floors under any data path);
  * PGD-L∞: `robustkd.attacks.pgd` (model frozen: no weight gradients; channels_last; a point leaves the batch at
    its first adversarial iterate) vs `torchattacks.PGD` (install: `pip install --no-deps torchattacks==3.5.1
    scipy`), on a natural and a defensively distilled model (T = `temperature`), both trained with the default
    pipeline's teacher / student schedules, and a briefly trained PGD-AT model;
  * robust training (`robust_train_speedup`): one PGD-AT epoch of 12,800 Fashion-MNIST images
    (`robustkd.training.train` with the PGDAT loss, the default model, the default pipeline's student settings,
    params.yaml's `engine` and `train_attack`) with the inner attack as params.yaml runs it (`train_attack.bf16:
    true`: crafted under the training step's bf16 autocast where the device has native bf16) vs the same epoch with
    the inner attack in fp32 (`train_attack.bf16: false`); the training forward and loss run as `engine` sets them on
    both sides. Alternating, after an untimed warm-up; wall and CPU seconds;
  * evaluation: the whole attack suite (`robustkd.evaluation.evaluate`, params.yaml's `attack` group) with and
    without the cascade (`attack.cascade`: AutoAttack and Square only on the points still robust), which must give
    the same per-point worst case; with the seconds of each part of the suite. With --pipeline, also the default
    run's attack stage (`python src/attack.py` on the models `dvc repro` trained) both ways.
The last line of output is one JSON object (ratios: higher is better for the engine).
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # `python tools/bench.py` imports robustkd from src/
from robustkd import attacks, data, evaluation  # noqa: E402
from robustkd.diagnostics import worst_case_points  # noqa: E402
from robustkd.errors import ProjectError  # noqa: E402
from robustkd.params import read_yaml, role_settings  # noqa: E402
from robustkd.io import atomic_write_json  # noqa: E402
from robustkd.losses import PGDAT, Distillation, TemperatureCE  # noqa: E402
from robustkd.adversarial import InnerAttack  # noqa: E402
from robustkd.models import build_model, place  # noqa: E402
from robustkd.training import Engine, TrainConfig, pick_device, precision_name, to_float, train  # noqa: E402

PARTS = ("robust_train",)  # measurements `--only` can run alone (the others need each other's models)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("natural", "distilled", "robust")  # the attacked models, in the order measured


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# Instruction-set extensions that decide how fast oneDNN's fp32 and bf16 kernels are (train_speedup varies by CPU).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_description(cpuinfo: str | None = None) -> dict:
    """The processor's model name and which of ``CPU_FLAGS`` it has, read from /proc/cpuinfo (Linux; elsewhere the
    platform's name and no flags): speedups measured on different CPUs are then told apart."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:  # virtual machines often show a bare "AMD EPYC"
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return {"cpu": name,
            "cpu_flags": [f for f in CPU_FLAGS if f in flags]}


def load_fashion_mnist(raw_dir: Path) -> data.RawData:
    return data.load_raw("fashion_mnist", raw_dir)


def torchvision_root(raw: data.RawData, tmp: Path) -> Path:
    """The layout torchvision's FashionMNIST(download=False) reads: <root>/FashionMNIST/raw/<unzipped IDX files>."""
    out = tmp / "FashionMNIST" / "raw"
    out.mkdir(parents=True)
    for src in raw.sources:
        src = Path(src)
        name = src.name.removesuffix(".gz")
        opener = gzip.open if src.suffix == ".gz" else open
        with opener(src, "rb") as f_in, open(out / name, "wb") as f_out:
            shutil.copyfileobj(f_in, f_out)
    return tmp


def new_model(seed: int, channels_last: bool, device: torch.device):
    """The default pipeline's classifier (Papernot CNN, MNIST widths), the same initial weights for both sides."""
    torch.manual_seed(seed)
    model = build_model("papernot_cnn", 1, 28, 10, [0.2860], [0.3530])
    return place(model, device) if channels_last else model.to(device)


# ------------------------------------------------------------------------------------------- training
def engine_train(x_u8, y, val, cfg: TrainConfig, device, engine: Engine) -> float:
    model = new_model(0, True, device)
    t0 = time.perf_counter()
    train(model, TemperatureCE(1.0), (x_u8, y), val, cfg, "bench", engine=engine)
    return time.perf_counter() - t0


def plain_loop(model, batches, cfg: TrainConfig, device, bf16: bool = False) -> float:
    """The loop a researcher writes: Adam, CE, ``batches()`` once per epoch; seconds from the first batch to the
    last step. ``bf16``: forward and loss under bf16 autocast."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        model.train()
        for xb, yb in batches():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(xb.to(device)), yb.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def bare_train(x_u8, y, cfg: TrainConfig, device, bf16: bool) -> float:
    """The floor under any data path: the same model and loop over float channels_last tensors made before the
    clock starts; no shuffling, validation or logging. ``bf16``: under bf16 autocast, as the engine trains where the
    device has native bf16."""
    x = to_float(x_u8.to(device)).contiguous(memory_format=torch.channels_last)
    y = y.to(device)
    bs = cfg.batch_size
    return plain_loop(new_model(0, True, device), lambda: ((x[i:i + bs], y[i:i + bs]) for i in range(0, len(y), bs)),
                      cfg, device, bf16)


def reference_loader(root: Path, n: int, cfg: TrainConfig, workers: int):
    """What the PyTorch tutorials teach: a torchvision dataset, per-sample ToTensor, a DataLoader."""
    from torchvision import datasets, transforms

    dataset = torch.utils.data.Subset(
        datasets.FashionMNIST(str(root), train=True, download=False, transform=transforms.ToTensor()), range(n))
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=workers,
                                       generator=torch.Generator().manual_seed(cfg.seed))


def reference_train(root: Path, n: int, cfg: TrainConfig, workers: int, device) -> float:
    loader = reference_loader(root, n, cfg, workers)
    return plain_loop(new_model(0, False, device), lambda: loader, cfg, device)


def reference_loading_only(root: Path, n: int, cfg: TrainConfig) -> float:
    """The reference loop's data cost alone (0 workers, no model): the most any data path could save."""
    loader = reference_loader(root, n, cfg, 0)
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        for _batch in loader:
            pass
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------- robust training
def pgd_at_epoch(x_u8, y, val, cfg: TrainConfig, device, engine: Engine, attack: InnerAttack) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of ``cfg.epochs`` PGD-AT epochs through the engine's loop
    (validation on ``val`` included). On a CPU other processes share, the CPU seconds are what the work itself cost:
    time spent waiting for a core is not in them (with one thread; more threads also count OpenMP's spinning)."""
    model = new_model(0, True, device)
    t0, c0 = time.perf_counter(), time.process_time()
    train(model, PGDAT(attack), (x_u8, y), val, cfg, "bench_pgd_at", engine=engine)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, time.process_time() - c0


def git_commit(repo: Path) -> str | None:
    """HEAD's short hash, with ``-dirty`` when tracked files differ from it (None outside a git checkout)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, check=True, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, check=True,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def bench_robust_train(params: dict, raw: data.RawData, images: int, repeats: int, device) -> dict:
    """One PGD-AT epoch with the inner attack as params.yaml runs it against the same epoch with it in fp32.

    Same model and initial weights, data, batches and training precision (params.yaml's `engine`) on both sides; the
    only difference is ``InnerAttack.bf16``. Alternating runs after an untimed warm-up; medians of wall seconds
    (``speedup``, the ``robust_train_speedup``) and of this process's CPU seconds (``cpu_speedup``: on a machine other
    processes share, the wall seconds also hold the waits for a core, which differ from run to run).
    """
    engine = Engine.from_params(params["engine"])
    attack = InnerAttack.from_params(params)
    fp32_attack = dataclasses.replace(attack, bf16=False)
    cfg = TrainConfig.from_params({**role_settings(params, "student"), "epochs": 1}, seed=0)
    precision = precision_name(device, engine)
    x_u8, y = raw.train_x[:images], raw.train_y[:images]
    val = (raw.test_x[:128], raw.test_y[:128])
    for a in (attack, fp32_attack):  # warm-up: oneDNN builds its kernels per layout, shape and dtype on first use
        pgd_at_epoch(x_u8[:2 * cfg.batch_size], y[:2 * cfg.batch_size], val, cfg, device, engine, a)
    seconds: dict[str, list[float]] = {"params": [], "fp32": []}
    cpu_seconds: dict[str, list[float]] = {"params": [], "fp32": []}
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for r in range(repeats):
        for side, a in (("params", attack), ("fp32", fp32_attack)):
            wall, cpu = pgd_at_epoch(x_u8, y, val, cfg, device, engine, a)
            seconds[side].append(wall)
            cpu_seconds[side].append(cpu)
        log(f"robust train run {r + 1}: inner attack as params.yaml runs it {seconds['params'][-1]:.1f} s "
            f"(CPU {cpu_seconds['params'][-1]:.1f} s), fp32 inner attack {seconds['fp32'][-1]:.1f} s "
            f"(CPU {cpu_seconds['fp32'][-1]:.1f} s)")
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    median = {k: statistics.median(v) for k, v in seconds.items()}
    cpu_median = {k: statistics.median(v) for k, v in cpu_seconds.items()}
    return {"images": len(y), "batch_size": cfg.batch_size, "epochs": cfg.epochs, "optimizer": cfg.optimizer,
            "lr": cfg.lr, "schedule": cfg.schedule, "repeats": repeats,
            "train_attack": {"eps": attack.eps, "steps": attack.steps, "step_size": attack.step_size,
                             "mode": attack.mode, "bf16": attack.bf16},
            "train_precision": precision,
            # what the inner attack's model forward/backward ran in on each side
            "attack_precision": precision if attack.bf16 else "fp32", "fp32_attack_precision": "fp32",
            "seconds": round(median["params"], 2), "fp32_attack_seconds": round(median["fp32"], 2),
            "runs_seconds": [round(t, 2) for t in seconds["params"]],
            "fp32_attack_runs_seconds": [round(t, 2) for t in seconds["fp32"]],
            "speedup": round(median["fp32"] / median["params"], 3),
            "cpu_seconds": round(cpu_median["params"], 2), "fp32_attack_cpu_seconds": round(cpu_median["fp32"], 2),
            "cpu_runs_seconds": [round(t, 2) for t in cpu_seconds["params"]],
            "fp32_attack_cpu_runs_seconds": [round(t, 2) for t in cpu_seconds["fp32"]],
            "cpu_speedup": round(cpu_median["fp32"] / cpu_median["params"], 3),
            "load_average_1min": [load_before, load_after], "commit": git_commit(ROOT),
            "device": str(device), "cpu": cpu_description()["cpu"], "threads": torch.get_num_threads(),
            "torch": torch.__version__}


# ------------------------------------------------------------------------------------------------ PGD
def engine_pgd(model, x, y, eps, steps, batch_size) -> tuple[float, float]:
    t0 = time.perf_counter()
    with attacks.frozen(model):
        x_adv = attacks.attack_in_batches(attacks.pgd, model, x, y, batch_size,
                                          generator=torch.Generator().manual_seed(0), eps=eps, steps=steps,
                                          step_size=eps / 4, norm="linf", loss="ce")
        seconds = time.perf_counter() - t0
        acc = (evaluation.predict(model, x_adv, batch_size) == y).float().mean().item()
    return seconds, acc


def reference_pgd(model, x, y, eps, steps, batch_size) -> tuple[float, float]:
    import torchattacks

    model.eval()
    attack = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=True)
    t0 = time.perf_counter()
    x_adv = torch.cat([attack(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        acc = (evaluation.predict(model, x_adv, batch_size) == y).float().mean().item()
    return seconds, acc


# ----------------------------------------------------------------------------------------- evaluation
def run_suite(model, x_test, y_test, idx, cfg, transfer_adv, cascade: bool) -> tuple[float, dict, dict]:
    """Seconds, the per-point result, and the seconds of each part (clean accuracy, each attack, sensitivity)."""
    watch = evaluation.Stopwatch()
    t0 = time.perf_counter()
    with attacks.frozen(model):
        result = evaluation.evaluate(model, "bench", x_test, y_test, idx, {**cfg, "cascade": cascade}, transfer_adv,
                                     stopwatch=watch)
    return time.perf_counter() - t0, result, {k: round(v, 2) for k, v in sorted(watch.seconds.items())}


def worst_cases(result: dict, eps_list) -> dict:
    return {evaluation.eps_key(e): worst_case_points(result["linf"], evaluation.eps_key(e)) for e in eps_list}


# ------------------------------------------------------------------------------------------- pipeline
# Runs a command and writes the peak RSS (KiB) of the largest process under it. A process forked from this one
# would report at least this process's own size (Linux carries the parent's high-water mark through fork and exec),
# so the command is started from this small launcher instead.
_RSS_LAUNCHER = ("import resource, subprocess, sys\n"
                 "rc = subprocess.call(sys.argv[2:])\n"
                 "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
                 "sys.exit(rc)")


def run_measured(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, peak resident MiB of the largest process the command ran, its stdout)."""
    with tempfile.TemporaryDirectory() as tmp:  # files, not pipes: a full pipe would block the command
        out_path, err_path, rss_path = (Path(tmp) / name for name in ("out", "err", "rss"))
        with open(out_path, "w") as out, open(err_path, "w") as err:
            t0 = time.perf_counter()
            returncode = subprocess.call([sys.executable, "-c", _RSS_LAUNCHER, str(rss_path), *cmd], cwd=cwd,
                                         stdout=out, stderr=err)
            seconds = time.perf_counter() - t0
        if returncode:
            raise ProjectError(f"`{' '.join(cmd)}` failed in {cwd} (exit {returncode}): {err_path.read_text()[-2000:]}")
        return seconds, int(rss_path.read_text()) / 1024, out_path.read_text()  # ru_maxrss is in KiB on Linux


def bench_pipeline(repo: Path, clone: Path) -> dict:
    """The default `dvc repro` in a fresh clone of ``repo``'s HEAD (empty DVC cache), stage by stage (time and peak
    memory of each); then an attack-only change (another `attack.seed`) measured two ways, each as a fraction of the
    full run:
      * `dvc repro` after editing params.yaml, like the full run (then the default run's files are checked out again);
      * `dvc exp run --temp -S attack.seed=...`, the experiment workflow, which adds DVC's experiment bookkeeping
        (a temporary workspace, git refs). The two use different seeds, so neither is served from DVC's run cache.
    Then the attack stage alone with and without the cascade (:func:`attack_stage_with_and_without_cascade`).
    The clone is left holding the default run's outputs."""
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    names = subprocess.run(["dvc", "stage", "list", "--names-only"], cwd=clone, check=True, capture_output=True,
                           text=True).stdout.split()  # dvc.yaml's order, which is a topological one here
    stages = []  # a list: the JSON is written with sorted keys, and the pipeline's order matters here
    for stage in names:
        seconds, rss, _ = run_measured(["dvc", "repro", "--single-item", stage], clone)
        stages.append({"stage": stage, "seconds": round(seconds, 1), "peak_rss_mib": round(rss)})
        log(f"pipeline: {stage} {seconds:.1f} s, peak RSS {rss:.0f} MiB")
    full = sum(s["seconds"] for s in stages)
    # Committed, as a researcher would before an experiment: `dvc exp run` starts from the commit's dvc.lock.
    subprocess.run(["git", "add", "-A"], cwd=clone, check=True)
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@robustkd.invalid", "commit", "-qm",
                    "bench: default run"], cwd=clone, check=True)
    seed = read_yaml((clone / "params.yaml").read_text())["attack"]["seed"]
    set_param(clone / "params.yaml", "attack", "seed", seed + 1)
    rerun, rss, stdout = run_measured(["dvc", "repro"], clone)
    log(f"pipeline: dvc repro after an attack-only change {rerun:.1f} s (full {full:.1f} s)")
    restore_default_run(clone)
    exp_s, exp_rss, exp_stdout = run_measured(["dvc", "exp", "run", "--temp", "-S", f"attack.seed={seed + 2}"], clone)
    log(f"pipeline: dvc exp run --temp after an attack-only change {exp_s:.1f} s")

    attack_stage = attack_stage_with_and_without_cascade(clone)

    def reran(text: str) -> list[str]:
        return sorted(set(re.findall(r"Running stage '([^']+)'", text)))

    return {"full_repro_seconds": round(full, 1), "stages": stages,
            "attack_only_rerun_command": "dvc repro", "attack_only_rerun_seconds": round(rerun, 1),
            "attack_only_fraction": round(rerun / full, 3), "attack_only_rerun_stages": reran(stdout),
            "attack_only_rerun_peak_rss_mib": round(rss),
            "exp_run": {"command": "dvc exp run --temp", "seconds": round(exp_s, 1), "fraction": round(exp_s / full, 3),
                        "stages": reran(exp_stdout), "peak_rss_mib": round(exp_rss)},
            "attack_stage": attack_stage}


def restore_default_run(clone: Path) -> None:
    """Back to the committed default run: params.yaml and the git-tracked outputs, then the DVC-cached ones."""
    subprocess.run(["git", "checkout", "-q", "--", "."], cwd=clone, check=True)
    subprocess.run(["dvc", "checkout", "-q", "--force"], cwd=clone, check=True)


def set_param(params_path: Path, group: str, key: str, value) -> None:
    params = read_yaml(params_path.read_text())
    params[group][key] = value
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))


def stage_worst_cases(results_dir: Path) -> dict:
    """{model: {eps key: per-point worst case}} of an attack stage's results/attack/."""
    out = {}
    for name in json.loads((results_dir / "index.json").read_text())["models"]:
        result = json.loads((results_dir / f"{name}.json").read_text())
        out[name] = worst_cases(result, result["eps"])
    return out


def attack_stage_with_and_without_cascade(clone: Path) -> dict:
    """The default run's attack stage itself (`python src/attack.py` in the clone, on the models the default
    pipeline trained), with `attack.cascade` true and then false: seconds of each and whether every model's
    per-point worst case is the same. The clone's files are checked out again afterwards."""
    seconds, worst = {}, {}
    try:
        for cascade in (True, False):
            set_param(clone / "params.yaml", "attack", "cascade", cascade)
            seconds[cascade], _, _ = run_measured([sys.executable, "src/attack.py"], clone)
            worst[cascade] = stage_worst_cases(clone / "results" / "attack")
            log(f"pipeline: attack stage, cascade {cascade}: {seconds[cascade]:.1f} s")
    finally:
        restore_default_run(clone)
    return {"command": "python src/attack.py", "models": list(worst[True]),
            "cascade_seconds": round(seconds[True], 1), "full_seconds": round(seconds[False], 1),
            "speedup": round(seconds[False] / seconds[True], 3), "identical_worst_case": worst[True] == worst[False]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per side (training and PGD)")
    parser.add_argument("--train-images", type=int, default=12_800)
    parser.add_argument("--attack-images", type=int, default=1_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="DataLoader workers of the reference loops (0; 2 as in PyTorch's CIFAR-10 tutorial); "
                             "train_speedup is against the fastest of them")
    parser.add_argument("--model-images", type=int, help="training images of the attacked natural and distilled "
                        "models (default: as many as the default pipeline's training split)")
    parser.add_argument("--raw-dir", type=Path, default=ROOT / "data" / "raw")
    parser.add_argument("--pipeline", action="store_true", help="also time the default dvc repro and a rerun")
    parser.add_argument("--repo", type=Path, default=ROOT, help="--pipeline: the git repository whose HEAD is cloned")
    parser.add_argument("--clone-dir", type=Path, help="--pipeline: clone here and keep it (default: a temporary "
                        "folder); it then holds the default run's outputs")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--robust-train-images", type=int, help="images of the PGD-AT epoch of robust_train_speedup "
                        "(default: --train-images, as the training comparison; every batch costs the same, so a "
                        "longer epoch changes the seconds, not the ratio)")
    parser.add_argument("--only", choices=PARTS, help="run only this measurement; with --json, an existing file keeps "
                        "its other measurements and gets this one's keys replaced")
    parser.add_argument("--json", type=Path, help="also write the JSON result here (e.g. results/bench.json; "
                        "`python tools/report.py --bench results/bench.json` renders it)")
    args = parser.parse_args()
    if args.repeats < 1 or args.train_images < 256 or args.attack_images < 10 or min(args.workers) < 0:
        parser.error("--repeats >= 1, --train-images >= 256, --attack-images >= 10, --workers >= 0")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json {args.json}: folder {args.json.parent} does not exist; create it or give another path")
    if args.clone_dir is not None and args.clone_dir.exists():
        parser.error(f"--clone-dir {args.clone_dir}: already exists; give a new path")
    if args.model_images is not None and args.model_images < 256:
        parser.error("--model-images >= 256")
    if args.robust_train_images is not None and args.robust_train_images < 256:
        parser.error("--robust-train-images >= 256")
    if args.only and args.pipeline:
        parser.error("--only and --pipeline: the pipeline timing is part of the whole run; give one of them")
    if args.quick:
        args.repeats, args.train_images, args.attack_images, args.model_images = 1, 512, 40, 512
    if args.robust_train_images is None:
        args.robust_train_images = args.train_images
    if args.only is None:
        try:
            import torchattacks  # noqa: F401
        except ImportError:
            parser.error("torchattacks is needed for the reference PGD: pip install --no-deps torchattacks==3.5.1 scipy")

    device = pick_device()
    params = read_yaml((ROOT / "params.yaml").read_text())
    attack_cfg = params["attack"]
    if args.quick:
        attack_cfg = {**attack_cfg, "n_points": 40, "cw_l2": {**attack_cfg["cw_l2"], "n_points": 10},
                      "square": {"n_queries": 20}, "sensitivity_points": 20}
    raw = load_fashion_mnist(args.raw_dir)
    if args.model_images is None:  # what `prepare` leaves for training after carving out the validation split
        args.model_images = len(raw.train_y) - params["data"]["val_size"]
    x_train, y_train = raw.train_x, raw.train_y
    x_test, y_test = to_float(raw.test_x).to(device), raw.test_y.to(device)
    log(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    out: dict = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                 **cpu_description(), "cores": os.cpu_count()}
    if device.type == "cuda":  # the accelerator decides these timings, not the host CPU
        out["gpu"] = torch.cuda.get_device_name(device)

    if args.only == "robust_train":
        robust_train = bench_robust_train(params, raw, args.robust_train_images, args.repeats, device)
        if args.json is not None and args.json.is_file():
            earlier = json.loads(args.json.read_text())
            if any(earlier.get(k) != out[k] for k in ("device", "cpu", "threads")):
                log(f"note: {args.json}'s other measurements ran on {earlier.get('cpu')} ({earlier.get('device')}, "
                    f"{earlier.get('threads')} threads); this one on {out['cpu']} ({out['device']}, {out['threads']})")
            out = earlier
        omp = os.environ.get("OMP_NUM_THREADS")
        out["robust_train"] = {**robust_train, "command": (f"OMP_NUM_THREADS={omp} " if omp else "")
                               + " ".join(["python", "tools/bench.py", *sys.argv[1:]])}
        out["robust_train_speedup"] = robust_train["speedup"]
        if args.json is not None:
            atomic_write_json(args.json, out)
        print(json.dumps(out, sort_keys=True))
        return

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = torchvision_root(raw, tmp / "torchvision")
        n = args.train_images
        cfg = TrainConfig(epochs=1, batch_size=128, optimizer="adam", lr=3e-3, momentum=0.0, weight_decay=0.0,
                          schedule="constant", augment=False, seed=0)
        val = (raw.test_x[:128], raw.test_y[:128])  # the engine's loop also validates; kept tiny
        engine = Engine.from_params(params["engine"])  # as the pipeline's training stages run
        engine_precision = precision_name(device, engine)
        # The engine in fp32 as well, unless it already is (then its timings are the engine's own).
        fp32_engine = Engine(bf16=False, compile=engine.compile) if engine_precision != "fp32" else None
        engine_s, engine_fp32_s, reference_s, loading_s = [], [], {w: [] for w in args.workers}, []
        bare_s: dict[str, list[float]] = {"fp32": [], "bf16": []}
        # Untimed warm-up of both sides: oneDNN builds its kernels for each layout and shape on first use.
        for e in filter(None, (engine, fp32_engine)):
            engine_train(x_train[:256], y_train[:256], val, cfg, device, e)
        reference_train(root, 256, cfg, 0, device)
        for bf16 in (False, True):
            bare_train(x_train[:256], y_train[:256], cfg, device, bf16)
        for r in range(args.repeats):
            engine_s.append(engine_train(x_train[:n], y_train[:n], val, cfg, device, engine))
            engine_fp32_s.append(engine_train(x_train[:n], y_train[:n], val, cfg, device, fp32_engine)
                                 if fp32_engine else engine_s[-1])
            for w in args.workers:
                reference_s[w].append(reference_train(root, n, cfg, w, device))
            loading_s.append(reference_loading_only(root, n, cfg))
            for precision in bare_s:
                bare_s[precision].append(bare_train(x_train[:n], y_train[:n], cfg, device, precision == "bf16"))
            log(f"train run {r + 1}: engine {n / engine_s[-1]:.0f} img/s ({engine_precision}), "
                f"fp32 engine {n / engine_fp32_s[-1]:.0f} img/s, reference "
                + ", ".join(f"{n / reference_s[w][-1]:.0f} img/s ({w} workers)" for w in args.workers))
        engine_t, engine_fp32_t = statistics.median(engine_s), statistics.median(engine_fp32_s)
        reference_t = {w: statistics.median(v) for w, v in reference_s.items()}
        fastest = min(reference_t, key=reference_t.get)
        out["train"] = {"images": n, "batch_size": cfg.batch_size, "epochs": cfg.epochs,
                        "engine_precision": engine_precision,
                        "engine_images_per_s": round(n / engine_t, 1),
                        "engine_fp32_images_per_s": round(n / engine_fp32_t, 1),
                        "speedup_fp32_engine": round(reference_t[fastest] / engine_fp32_t, 3),
                        "reference_images_per_s": {f"workers_{w}": round(n / t, 1) for w, t in reference_t.items()},
                        "speedup_per_reference": {f"workers_{w}": round(t / engine_t, 3) for w, t in reference_t.items()},
                        "fastest_reference_workers": fastest,
                        "reference_loading_only_images_per_s": round(n / statistics.median(loading_s), 1),
                        "bare_loop_images_per_s": round(n / statistics.median(bare_s["fp32"]), 1),
                        "bare_loop_bf16_images_per_s": round(n / statistics.median(bare_s["bf16"]), 1)}
        out["train_speedup"] = round(reference_t[fastest] / engine_t, 3)

        # Models to attack. Natural CE and defensive distillation (teacher at `temperature`, then a student
        # distilled from it: softmax-CE PGD stalls on it, margin PGD breaks it) are trained as the default pipeline
        # trains its teacher and student (params.yaml's schedules, on as many images as its training split), so the
        # cascade is measured on models like the ones the attack stage gets. PGD-AT, on which most points survive
        # every attack so the cascade has little to skip, trains briefly (2 epochs of 12,800 images): a longer run
        # would only make it more robust.
        m_train = args.model_images
        pipeline_data = (x_train[:m_train], y_train[:m_train])
        teacher_cfg = TrainConfig.from_params(role_settings(params, "teacher"), seed=0)
        student_cfg = TrainConfig.from_params(role_settings(params, "student"), seed=0)
        temperature = params["temperature"]
        natural = new_model(1, True, device)
        train(natural, TemperatureCE(1.0), pipeline_data, val, teacher_cfg, "natural")
        distill_teacher = new_model(4, True, device)
        train(distill_teacher, TemperatureCE(temperature), pipeline_data, val, teacher_cfg, f"teacher_t{temperature}")
        distilled = new_model(5, True, device)
        train(distilled, Distillation(distill_teacher, temperature), pipeline_data, val, student_cfg,
              f"distilled_t{temperature}")
        out["attacked_models"] = {
            "natural": {"images": len(pipeline_data[1]), "epochs": teacher_cfg.epochs, "schedule": "params.yaml teacher"},
            "distilled": {"images": len(pipeline_data[1]), "temperature": temperature,
                          "epochs": [teacher_cfg.epochs, student_cfg.epochs],
                          "schedule": "params.yaml teacher, then student (no assistant)"}}
        robust = new_model(2, True, device)
        inner = InnerAttack(eps=attack_cfg["headline_eps"], steps=3, step_size=attack_cfg["headline_eps"] / 2)
        robust_cfg = TrainConfig(**{**cfg.__dict__, "epochs": 2})
        train(robust, PGDAT(inner), (x_train[:n], y_train[:n]), val, robust_cfg, "pgd_at")
        out["attacked_models"]["robust"] = {
            "images": n, "epochs": robust_cfg.epochs,
            "schedule": f"PGD-AT, PGD-{inner.steps}, {robust_cfg.optimizer} {robust_cfg.lr:g} {robust_cfg.schedule}"}

        # PGD, same points, batch and steps. The engine drops a point from the batch at its first adversarial
        # iterate (torchattacks attacks every point for every step), so the gain depends on how fast points fall:
        # measured on each model.
        m = args.attack_images
        eps, steps, bs = attack_cfg["headline_eps"], attack_cfg["pgd"]["steps"], attack_cfg["batch_size"]
        x_ref = x_test[:m].contiguous()  # what a DataLoader hands over: NCHW-contiguous
        out["attack"] = {"images": m, "eps": eps, "steps": steps, "batch_size": bs}
        for label, model in zip(MODELS, (natural, distilled, robust)):
            reference_model = new_model(1, False, device)
            reference_model.load_state_dict(model.state_dict())
            engine_s, reference_s = [], []
            for r in range(args.repeats):
                (s, engine_acc) = engine_pgd(model, x_test[:m], y_test[:m], eps, steps, bs)
                engine_s.append(s)
                (s, reference_acc) = reference_pgd(reference_model, x_ref, y_test[:m], eps, steps, bs)
                reference_s.append(s)
                log(f"PGD {label} run {r + 1}: engine {m / engine_s[-1]:.0f} img/s (robust acc {engine_acc:.3f}), "
                    f"torchattacks {m / reference_s[-1]:.0f} img/s (robust acc {reference_acc:.3f})")
            out["attack"][label] = {
                "engine_images_per_s": round(m / statistics.median(engine_s), 1),
                "reference_images_per_s": round(m / statistics.median(reference_s), 1),
                "speedup": round(statistics.median(reference_s) / statistics.median(engine_s), 3),
                "engine_robust_acc": round(engine_acc, 4), "reference_robust_acc": round(reference_acc, 4)}
        out["attack_speedup"] = out["attack"]["natural"]["speedup"]
        out["attack_speedup_distilled"] = out["attack"]["distilled"]["speedup"]
        out["attack_speedup_robust"] = out["attack"]["robust"]["speedup"]

        surrogate = new_model(3, True, device)
        train(surrogate, TemperatureCE(1.0), (x_train[n:2 * n], y_train[n:2 * n]), val, cfg, "surrogate")
        n_points = attack_cfg["n_points"] or len(y_test)
        idx = torch.randperm(len(y_test), generator=torch.Generator().manual_seed(attack_cfg["seed"]))[:n_points]
        idx = idx.sort().values.to(device)
        with attacks.frozen(surrogate):
            transfer_adv = evaluation.craft_transfer(surrogate, x_test[idx], y_test[idx], attack_cfg)
        out["eval"] = {"points": n_points}
        for label, model in zip(MODELS, (natural, distilled, robust)):
            full_s, full, full_parts = run_suite(model, x_test, y_test, idx, attack_cfg, transfer_adv, cascade=False)
            cascade_s, cascaded, cascade_parts = run_suite(model, x_test, y_test, idx, attack_cfg, transfer_adv,
                                                           cascade=True)
            identical = worst_cases(full, attack_cfg["eps"]) == worst_cases(cascaded, attack_cfg["eps"])
            head = evaluation.eps_key(eps)
            worst = {k: round(sum(v) / len(v), 4) for k, v in worst_cases(cascaded, [eps]).items()}
            out["eval"][label] = {
                "full_seconds": round(full_s, 1), "cascade_seconds": round(cascade_s, 1),
                "full_images_per_s": round(n_points / full_s, 2), "cascade_images_per_s": round(n_points / cascade_s, 2),
                "speedup": round(full_s / cascade_s, 3), "identical_worst_case": identical,
                "worst_case_headline": worst[head],
                "autoattack_points": cascaded["n_evaluated"].get(evaluation.AUTOATTACK, {}).get(head),
                "square_points": cascaded["n_evaluated"].get(evaluation.SQUARE, {}).get(head),
                "full_parts_seconds": full_parts, "cascade_parts_seconds": cascade_parts}
            log(f"eval {label}: full suite {full_s:.1f} s, cascade {cascade_s:.1f} s, identical worst case: {identical}")
        out["eval_speedup"] = out["eval"]["natural"]["speedup"]
        out["eval_speedup_distilled"] = out["eval"]["distilled"]["speedup"]
        out["eval_speedup_robust"] = out["eval"]["robust"]["speedup"]
        out["eval_identical_worst_case"] = all(out["eval"][k]["identical_worst_case"] for k in MODELS)
        out["robust_train"] = bench_robust_train(params, raw, args.robust_train_images, args.repeats, device)
        out["robust_train_speedup"] = out["robust_train"]["speedup"]
        if args.pipeline:
            clone = args.clone_dir or tmp / "clone"
            out["pipeline"] = bench_pipeline(args.repo, clone)
            out["eval_speedup_pipeline"] = out["pipeline"]["attack_stage"]["speedup"]
    if args.json is not None:
        atomic_write_json(args.json, out)
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
