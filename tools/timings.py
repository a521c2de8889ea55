"""Measure how long a project command takes, and keep the measurement in git (results/timings.json).

    python tools/timings.py run repro -- dvc repro                    # in a fresh clone: the default pipeline
    python tools/timings.py run ci -- bash .ci/run                     # in a fresh clone: CI (with CI=true set)
    python tools/timings.py run --out ../main/results/timings.json ci -- bash .ci/run   # into another checkout
    python tools/timings.py show                                        # the README's lines, from the file

Each entry records the command, its wall-clock seconds, its exit status, pytest's summary line when the command ran
pytest, the commit, the processor, the thread count and the machine's load before and after. The README's
sentences about them are a generated block (tools/docs_tables.py), so they always say what the file says.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # `python tools/timings.py` imports robustkd from src/
from robustkd.io import atomic_write_json  # noqa: E402

DEFAULT_OUT = ROOT / "results" / "timings.json"
DESCRIPTIONS = {"repro": "the default `dvc repro` in a fresh clone (every stage)",
                "ci": "`bash .ci/run` in a fresh clone (packages already installed)"}
SUMMARY = re.compile(r"^=*\s*(\d+ passed.*?)\s*=*$")


def cpu_name() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    family = re.search(r"^cpu family\s*:\s*(\d+)$", info, re.M)
    number = re.search(r"^model\s*:\s*(\d+)$", info, re.M)
    name = model.group(1).strip() if model else "unknown"
    return f"{name} (family {family.group(1)}, model {number.group(1)})" if family and number else name


def commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def run(name: str, cmd: list[str], out: Path) -> int:
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    summaries = []
    for line in proc.stdout:  # streamed, so a long command shows its progress
        sys.stdout.write(line)
        if (m := SUMMARY.match(line.strip())) and "passed" in m.group(1):
            summaries.append(m.group(1))
    status = proc.wait()
    seconds = time.perf_counter() - start
    entry = {"command": " ".join(cmd), "seconds": round(seconds, 1), "exit_status": status,
             "pytest": summaries, "commit": commit(), "cpu": cpu_name(), "cores": os.cpu_count(),
             "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    data = json.loads(out.read_text()) if out.is_file() else {}
    data[name] = entry
    atomic_write_json(out, data)
    print(f"[timings] {name}: {seconds:.0f} s, exit status {status} -> {out}")
    return status


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(round(seconds % 60))} s"


def show(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = []
    for name, e in data.items():
        tests = f"; pytest: {' / '.join(e['pytest'])}" if e.get("pytest") else ""
        outcome = "" if e["exit_status"] == 0 else f" (**exit status {e['exit_status']}**)"
        lines.append(f"* {DESCRIPTIONS.get(name, name)}: **{minutes(e['seconds'])}**{outcome} at commit `{e['commit']}` "
                     f"on {e['cpu']}, {e['cores']} cores, load {e['load_average_1min'][0]} before{tests}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    r = sub.add_parser("run", help="run a command and record its time")
    r.add_argument("name")
    r.add_argument("--out", type=Path, default=DEFAULT_OUT)
    r.add_argument("cmd", nargs=argparse.REMAINDER)
    s = sub.add_parser("show", help="the recorded times, as markdown lines")
    s.add_argument("--file", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.action == "show":
        print(show(args.file))
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("run NAME -- COMMAND...: give the command to time after --")
    return run(args.name, cmd, args.out)


if __name__ == "__main__":
    sys.exit(main())
