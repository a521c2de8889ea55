"""Studies as code: declare arms × training seeds in studies/<name>.yaml, run them through DVC's queue, collect every
finished run into results/studies/<name>/ (kept in git), and write the study's table into docs/results.md.

    python tools/study.py run chain -j 2 --threads 1   # queue every (arm, seed) not yet collected, run, collect
    python tools/study.py run chain --no-wait          # queue and start the workers only; `run` again collects
    python tools/study.py status chain                 # collected / stale / queued / running / failed / missing
    python tools/study.py report chain                 # its section of docs/results.md, from results/studies/chain/
    python tools/study.py report --check               # CI: every study's section is current and no result is stale
    python tools/study.py summary                      # the README's one-row-per-claim table (a generated block)
    python tools/study.py costs                        # minutes per method and per study, spent and left

The study file format, the verdict rule and the resume rules: docs/studies.md.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import difflib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # `python tools/study.py` imports robustkd from src/
from robustkd import params as schema  # noqa: E402
from robustkd.errors import ParamsError, ProjectError  # noqa: E402
from robustkd.io import atomic_write_json, atomic_write_text  # noqa: E402

STUDIES_DIR = "studies"
RESULTS_DIR = Path("results") / "studies"
RESULTS_PAGE = Path("docs") / "results.md"
STATE_DIR = Path(".dvc") / "tmp" / "studies"  # per-machine bookkeeping (start times, worker threads); not in git
STALL_S = 180.0  # runs queued, no executor alive this long: a worker died mid-task; restart the queue
MAX_RECOVERIES = 2
RESTART_GRACE_S = 60.0
NOT_YET = "not decided: no paired seeds yet"
MIN_PAIRED_SEEDS = 3  # a claim rests on at least 3 training seeds: fewer paired seeds give no verdict word
LOCK_WAIT_S, LOCK_RETRY_S = 600.0, 5.0  # another DVC command holds the repository lock: wait this long at most
ROLES = ("compared", "baseline", "context")
DIRECTIONS = ("better", "at_least")
STUDY_KEYS = ("claim", "model", "seeds", "base", "baseline", "direction", "margin", "report_metrics", "arms")
ARM_KEYS = ("role", "overrides", "preset", "seeds", "baseline")
NAME_RE = r"[a-z][a-z0-9_]{0,39}"
# The files a collected run keeps: in the experiment's commit -> in results/studies/<study>/<arm>/seed-<k>/.
COLLECTED_FILES = {"metrics.json": "metrics.json", "headline.json": "headline.json", "timing.json": "timing.json",
                   "results/outcomes.json": "outcomes.json", "params.yaml": "params.yaml"}
SECTION_START = "<!-- study:{name} -->"
SECTION_END = "<!-- /study:{name} -->"
VERDICTS = ("held", "did not hold", "undecided at this budget")


class StudyError(ProjectError):
    """A study file is invalid, or a study cannot run, be collected or be reported; the message says the fix."""


# --- small helpers -----------------------------------------------------------------------------------------------
def git(*args: str, cwd: Path | None = None, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd or Path.cwd(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise StudyError(f"`git {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def did_you_mean(word: str, options) -> str:
    hint = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f"; did you mean `{hint[0]}`?" if hint else ""


def dotted_get(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def merge(base: dict, patch: dict) -> dict:
    """``patch`` merged into a copy of ``base``, dict by dict (as tools/apply_preset.py merges a preset)."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def hydra_value(value) -> str:
    """``value`` in Hydra's override grammar, which `dvc exp run -S` parses."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise StudyError(f"{value!r}: not a finite number")
        return repr(value)
    if isinstance(value, str):
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-./]*", value) and value.lower() not in ("true", "false", "null",
                                                                                      "inf", "nan"):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise StudyError(f"{value!r}: a params value must be a number, string, boolean, null, list or mapping")


def flatten_patch(patch: dict, base: dict, prefix: str = "") -> list[tuple[str, object]]:
    """A nested patch (a preset) as dotted (key, value) pairs: down to the leaves where ``base`` has the same
    groups, whole values (e.g. a new pool entry) where it does not."""
    pairs = []
    for key, value in patch.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            pairs.extend(flatten_patch(value, base[key], dotted + "."))
        else:
            pairs.append((dotted, value))
    return pairs


def apply_dotted(tree: dict, dotted: str, value) -> str | None:
    """Set ``dotted`` in ``tree`` (creating missing groups, as `-S ++key=value` does); return a problem or None."""
    node, parts = tree, dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None and part not in node:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            return f"`{'.'.join(parts[:i + 1])}` is a value, not a group, so `{dotted}` cannot be set"
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)
    return None


def read_yaml_file(path: Path, what: str):
    if not path.is_file():
        raise StudyError(f"{path}: not found ({what})")
    try:
        return schema.read_yaml(path.read_text())
    except Exception as err:  # yaml.YAMLError and friends
        raise StudyError(f"{path}: not valid YAML: {err}") from None


# --- the study file ----------------------------------------------------------------------------------------------
@dataclass
class Arm:
    name: str
    role: str
    seeds: list[int]
    overrides: list[tuple[str, object]]       # dotted key -> value: base, then preset, then the arm's own
    params: dict                               # HEAD's params.yaml with the overrides (seed: the study's first)
    baseline: str | dict | None = None         # compared arms: an arm name or {"best_of": [...]}
    preset: str | None = None
    own_overrides: list = field(default_factory=list)  # the arm's own `overrides:`, as the study file gives them

    def expected_params(self, seed: int) -> dict:
        p = copy.deepcopy(self.params)
        p["seed"] = seed
        return p


@dataclass
class Study:
    name: str
    path: Path
    claim: str
    model: str
    seeds: list[int]
    direction: str
    margin: float
    report_metrics: list[str]
    arms: dict[str, Arm]
    base_params: dict = field(repr=False, default_factory=dict)
    base_overrides: dict = field(default_factory=dict)  # the study file's `base:`

    def pairs(self) -> list[tuple[Arm, int]]:
        return [(arm, seed) for arm in self.arms.values() for seed in arm.seeds]

    def experiment_name(self, arm: str, seed: int) -> str:
        return f"{self.name}-{arm}-s{seed}"


def _seeds(value, where: str, file: Path) -> tuple[list[int], list[str]]:
    if value is None:
        return [], [f"{file}: `{where}`: missing; add e.g. `{where}: [0, 1, 2]` (values of params `seed`)"]
    if (not isinstance(value, list) or not value
            or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**31 for s in value)):
        return [], [f"{file}: `{where}` = {value!r}: must be a non-empty list of integers in [0, 2^31) (values of "
                    f"params `seed`), e.g. `{where}: [0, 1, 2]`"]
    if len(set(value)) != len(value):
        return [], [f"{file}: `{where}` = {value!r}: a seed is listed twice; list each once"]
    return list(value), []


def _baseline_spec(value, where: str, file: Path, arms: dict) -> list[str]:
    if isinstance(value, str):
        names = [value]
    elif isinstance(value, dict) and list(value) == ["best_of"] and isinstance(value["best_of"], list) \
            and value["best_of"] and all(isinstance(n, str) for n in value["best_of"]):
        names = value["best_of"]
    else:
        return [f"{file}: `{where}` = {value!r}: must be an arm name or `{{best_of: [arm, arm, ...]}}`"]
    return [f"{file}: `{where}`: unknown arm `{n}`{did_you_mean(n, arms)} Arms: {', '.join(arms)}"
            for n in names if n not in arms]


def load_study(name_or_path: str, root: Path | None = None, check_params: bool = True) -> Study:
    """Read and validate a study file: every problem at once, each naming the file, the key and the fix. The arms'
    params are HEAD's params.yaml (the workspace file) with the study's overrides, checked against the params schema
    (``check_params``: `run` and `validate` check them; `report` and `status`, which read collected results only,
    do not, so a study may name keys that another branch adds)."""
    root = root or Path.cwd()
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = root / STUDIES_DIR / f"{name_or_path}.yaml"
    elif not path.is_absolute():
        path = root / path
    if not path.is_file():
        known = sorted(p.stem for p in (root / STUDIES_DIR).glob("*.yaml"))
        raise StudyError(f"{path.relative_to(root) if path.is_relative_to(root) else path}: no such study file"
                         f"{did_you_mean(path.stem, known)} Studies: {', '.join(known) or 'none'}")
    file = path.relative_to(root) if path.is_relative_to(root) else path
    name = path.stem
    data = read_yaml_file(path, "the study file")
    errors: list[str] = []
    if not re.fullmatch(NAME_RE, name):
        errors.append(f"{file}: the study's name `{name}` (the file name) must be 1-40 lowercase letters, digits or "
                      f"`_`, starting with a letter (it names experiments and folders)")
    if not isinstance(data, dict):
        raise StudyError(f"{file}: must be a mapping with keys {', '.join(STUDY_KEYS)}")
    for key in data:
        if key not in STUDY_KEYS:
            errors.append(f"{file}: `{key}`: unknown key{did_you_mean(key, STUDY_KEYS)} Allowed: {', '.join(STUDY_KEYS)}")
    claim = data.get("claim")
    if not isinstance(claim, str) or not claim.strip():
        errors.append(f"{file}: `claim`: missing; add the claim in one sentence, as the paper makes it")
    model = data.get("model", "student")
    if not isinstance(model, str) or not model:
        errors.append(f"{file}: `model` = {model!r}: must be a model name of metrics.json (default: student)")
    seeds, errs = _seeds(data.get("seeds"), "seeds", file)
    errors += errs
    direction = data.get("direction", "better")
    if direction not in DIRECTIONS:
        errors.append(f"{file}: `direction` = {direction!r}: unknown{did_you_mean(direction, DIRECTIONS)} Allowed: "
                      f"better (compared arm > baseline) | at_least (compared arm >= baseline - margin)")
    margin = data.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        errors.append(f"{file}: `margin` = {margin!r}: must be a number in [0, 1) (accuracy, not percent)")
        margin = 0.0
    elif margin and direction != "at_least":
        errors.append(f"{file}: `margin` is for `direction: at_least` only; remove it or set the direction")
    report_metrics = data.get("report_metrics", [])
    if not isinstance(report_metrics, list) or not all(isinstance(k, str) for k in report_metrics):
        errors.append(f"{file}: `report_metrics` = {report_metrics!r}: must be a list of metrics.json keys of the "
                      f"model (e.g. [sensitivity_softmax, cw_l2_median])")
        report_metrics = []
    base = data.get("base", {}) or {}
    if not isinstance(base, dict):
        errors.append(f"{file}: `base` = {base!r}: must be a mapping of params keys (dotted, as `dvc exp run -S` "
                      f"takes them) to values")
        base = {}
    arms_data = data.get("arms")
    if not isinstance(arms_data, dict) or not arms_data:
        errors.append(f"{file}: `arms`: missing or empty; add at least two arms, each with `overrides:`")
        arms_data = {}

    params_path = root / "params.yaml"
    head_params = read_yaml_file(params_path, "the repository's params; run from the repository root")
    arms: dict[str, Arm] = {}
    for arm_name, arm in arms_data.items():
        where = f"arms.{arm_name}"
        if not isinstance(arm_name, str) or not re.fullmatch(NAME_RE, arm_name):
            errors.append(f"{file}: `{where}`: bad arm name; use 1-40 lowercase letters, digits or `_`, starting "
                          f"with a letter (it names an experiment and a folder)")
            continue
        if not isinstance(arm, dict):
            errors.append(f"{file}: `{where}`: must be a mapping with `overrides:` (and optionally role, seeds, "
                          f"preset, baseline)")
            continue
        for key in arm:
            if key not in ARM_KEYS:
                errors.append(f"{file}: `{where}.{key}`: unknown key{did_you_mean(key, ARM_KEYS)} Allowed: "
                              f"{', '.join(ARM_KEYS)}")
        role = arm.get("role", "compared")
        if role not in ROLES:
            errors.append(f"{file}: `{where}.role` = {role!r}: unknown{did_you_mean(role, ROLES)} Allowed: "
                          f"compared (tested against its baseline) | baseline (a reference the compared arms are "
                          f"tested against) | context (reported, not tested)")
        overrides = arm.get("overrides")
        preset = arm.get("preset")
        if not overrides and not preset:
            errors.append(f"{file}: `{where}`: no overrides; add `overrides: {{key: value}}` (params keys in "
                          f"`dvc exp run -S` dotted form) that make this arm differ, or a `preset:` file")
            continue
        if overrides is not None and not isinstance(overrides, dict):
            errors.append(f"{file}: `{where}.overrides` = {overrides!r}: must be a mapping of params keys to values")
            continue
        arm_seeds = seeds
        if "seeds" in arm:
            arm_seeds, errs = _seeds(arm["seeds"], f"{where}.seeds", file)
            errors += errs
        pairs: list[tuple[str, object]] = list(base.items())
        if preset:
            preset_path = root / str(preset)
            if not preset_path.is_file():
                errors.append(f"{file}: `{where}.preset` = {preset!r}: no such file (a path from the repository "
                              f"root, e.g. src/presets/darht_homogeneous.yaml)")
                continue
            patch = read_yaml_file(preset_path, f"preset of {where}")
            if not isinstance(patch, dict):
                errors.append(f"{file}: `{where}.preset`: {preset} is not a mapping of params")
                continue
            pairs += flatten_patch(patch, merge(head_params, dict_from_pairs(base.items())))
        pairs += list((overrides or {}).items())
        arm_errors = []
        params = copy.deepcopy(head_params)
        for key, value in pairs:
            if not isinstance(key, str) or not key:
                arm_errors.append(f"`{key!r}`: not a params key")
                continue
            if key == "seed":
                arm_errors.append("`seed`: set by the study's `seeds` (or the arm's own `seeds`), not by overrides; "
                                  "remove it")
                continue
            problem = apply_dotted(params, key, value)
            if problem:
                arm_errors.append(problem)
        if not arm_errors and check_params:
            params["seed"] = arm_seeds[0] if arm_seeds else 0
            try:
                schema.validate(params)
            except ParamsError as err:
                arm_errors += [line.strip()[2:] for line in str(err).splitlines()[1:]]
        for problem in arm_errors:
            errors.append(f"{file}: `{where}` (base + {'preset + ' if preset else ''}overrides) gives invalid params: "
                          f"{problem} Fix the key or value in {file} (keys: src/robustkd/params.py, params.yaml)")
        baseline = arm.get("baseline")
        if baseline is not None:
            errors += _baseline_spec(baseline, f"{where}.baseline", file, arms_data)
            if role != "compared":
                errors.append(f"{file}: `{where}.baseline`: only a compared arm has a baseline; remove it or set "
                              f"`role: compared`")
        arms[arm_name] = Arm(arm_name, role, arm_seeds, dedupe(pairs), params, baseline, preset,
                             list((overrides or {}).items()))

    top_baseline = data.get("baseline")
    if top_baseline is not None:
        errors += _baseline_spec(top_baseline, "baseline", file, arms_data)
    for arm in arms.values():
        if arm.role != "compared":
            continue
        arm.baseline = arm.baseline if arm.baseline is not None else top_baseline
        if arm.baseline is None:
            errors.append(f"{file}: `arms.{arm.name}` is a compared arm without a baseline; add `baseline: <arm>` "
                          f"(top level, or in the arm)")
        elif arm.baseline == arm.name or (isinstance(arm.baseline, dict) and arm.name in arm.baseline["best_of"]):
            errors.append(f"{file}: `arms.{arm.name}` is compared with itself; give it `role: baseline` or another "
                          f"baseline")
    if errors:
        raise StudyError("study file is not valid:\n  - " + "\n  - ".join(errors))
    return Study(name, file, claim.strip(), model, seeds, direction, float(margin), report_metrics, arms, head_params,
                 dict(base))


def dict_from_pairs(pairs) -> dict:
    tree: dict = {}
    for key, value in pairs:
        if isinstance(key, str) and key != "seed":
            apply_dotted(tree, key, value)
    return tree


def dedupe(pairs: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """The last value of each key, in first-seen order (an arm's override replaces the base's)."""
    out: dict[str, object] = {}
    for key, value in pairs:
        out[key] = value
    return list(out.items())


def set_params_args(arm: Arm, seed: int, head_params: dict) -> list[str]:
    """`-S` arguments for `dvc exp run`: `key=value` where params.yaml has the key, `++key=value` (add) where not."""
    args = [f"seed={seed}"]
    tree = copy.deepcopy(head_params)
    for key, value in arm.overrides:
        try:
            dotted_get(tree, key)
            op = ""
        except KeyError:
            op = "++"
        args.append(f"{op}{key}={hydra_value(value)}")
        apply_dotted(tree, key, value)
    return args


# --- dvc.lock: the code and params each run depended on ------------------------------------------------------------
def lock_deps(lock: dict) -> dict:
    """From a dvc.lock: {"files": {path: md5} of the code deps (deps that no stage writes; params.yaml excluded,
    its values are compared key by key), "params": {key: value} the stages read}."""
    stages = (lock or {}).get("stages") or {}
    outs = {o["path"] for s in stages.values() for o in s.get("outs") or []}
    files, params = {}, {}
    for stage in stages.values():
        for dep in stage.get("deps") or []:
            path = dep["path"]
            if path == "params.yaml" or any(path == o or path.startswith(o.rstrip("/") + "/") or
                                            o.startswith(path.rstrip("/") + "/") for o in outs):  # another stage's output
                continue
            files[path] = dep.get("md5") or dep.get("hash") or dep.get("etag")
        for values in (stage.get("params") or {}).values():
            params.update(values)
    return {"files": dict(sorted(files.items())), "params": dict(sorted(params.items()))}


def head_lock_deps(root: Path) -> dict:
    path = root / "dvc.lock"
    if not path.is_file():
        raise StudyError("dvc.lock: not found. A study's results are checked against the code hashes in dvc.lock; "
                         "run `dvc repro` and commit dvc.lock first")
    return lock_deps(schema.read_yaml(path.read_text()))


def stale_reasons(deps: dict, head: dict, expected_params: dict) -> list[str]:
    """Why a run's recorded deps are not the current ones: changed code files (against HEAD's dvc.lock) and params
    whose value differs from what the study now asks for (HEAD's params.yaml with the study's overrides)."""
    reasons = []
    files, head_files = deps.get("files", {}), head["files"]
    changed = sorted(p for p in set(files) | set(head_files) if files.get(p) != head_files.get(p))
    if changed:
        reasons.append("code changed: " + ", ".join(changed))
    changed_params = []
    for key, value in deps.get("params", {}).items():
        try:
            now = dotted_get(expected_params, key)
        except KeyError:
            changed_params.append(f"{key} (gone)")
            continue
        if now != value:
            changed_params.append(key)
    new_keys = sorted(set(head["params"]) - set(deps.get("params", {})))
    changed_params += [f"{k} (now read)" for k in new_keys]
    if changed_params:
        reasons.append("params changed: " + ", ".join(sorted(changed_params)))
    return reasons


# --- collected results ---------------------------------------------------------------------------------------------
@dataclass
class Collected:
    arm: str
    seed: int
    folder: Path
    run: dict
    deps: dict
    metrics: dict
    headline: dict
    timing: dict
    outcomes: dict
    stale: list[str]


def run_folder(root: Path, study: str, arm: str, seed: int) -> Path:
    return root / RESULTS_DIR / study / arm / f"seed-{seed}"


def load_collected(study: Study, root: Path, head: dict) -> dict[tuple[str, int], Collected]:
    """Every collected run of the study (a folder with run.json) that belongs to one of its current pairs."""
    found = {}
    for arm, seed in study.pairs():
        folder = run_folder(root, study.name, arm.name, seed)
        if not (folder / "run.json").is_file():
            continue
        def read(name):
            try:
                return json.loads((folder / name).read_text())
            except FileNotFoundError:
                raise StudyError(f"{folder / name}: missing from a collected run; rerun "
                                 f"`python tools/study.py run {study.name}` (delete the folder first)") from None
        deps = read("deps.json")
        found[(arm.name, seed)] = Collected(arm.name, seed, folder, read("run.json"), deps, read("metrics.json"),
                                            read("headline.json"), read("timing.json"), read("outcomes.json"),
                                            stale_reasons(deps, head, arm.expected_params(seed)))
    return found


def extra_folders(study: Study, root: Path) -> list[Path]:
    """Collected folders no current pair has (an arm or seed removed from the study file): reported, not used."""
    base = root / RESULTS_DIR / study.name
    wanted = {run_folder(root, study.name, a.name, s) for a, s in study.pairs()}
    return sorted(p.parent for p in base.glob("*/seed-*/run.json") if p.parent not in wanted) if base.is_dir() else []


# --- the queue ---------------------------------------------------------------------------------------------------
def exp_refs(root: Path) -> dict[str, list[dict]]:
    """Finished experiments: name -> [{"ref", "rev", "baseline", "time"}], newest first."""
    out: dict[str, list[dict]] = {}
    text = git("for-each-ref", "--sort=-committerdate", "--format=%(refname) %(objectname) %(committerdate:unix)",
               "refs/exps", cwd=root)
    for line in text.splitlines():
        ref, rev, when = line.split()
        parts = ref.split("/")
        if len(parts) != 5 or parts[2] in ("celery", "temp", "exec", "stash") or len(parts[2]) != 2:
            continue
        out.setdefault(parts[4], []).append({"ref": ref, "rev": rev, "baseline": parts[2] + parts[3],
                                             "time": int(when)})
    return out


def queue_snapshot(root: Path) -> dict[str, list[dict]]:
    """DVC's queue: {"running"|"queued"|"failed": [{"name", "rev" (stash rev), "baseline"}]}."""
    from dvc.repo import Repo  # DVC's own API: the entries' names, stash revs and baselines, without parsing text

    snap = {"running": [], "queued": [], "failed": []}
    with Repo(str(root)) as repo:
        q = repo.experiments.celery_queue
        for state, entries in (("running", q.iter_active()), ("queued", q.iter_queued()),
                               ("failed", (e for e, _ in q.iter_failed()))):
            for e in entries:
                snap[state].append({"name": e.name, "rev": e.stash_rev, "baseline": e.baseline_rev})
    return snap


def log_path(root: Path, stash_rev: str) -> Path:
    return root / ".dvc" / "tmp" / "exps" / "run" / stash_rev / f"{stash_rev}.out"


def executor_stat(root: Path, stash_rev: str) -> tuple[int, list[str]]:
    """The pid of the process running a queued experiment (DVC's pid file) and its /proc/<pid>/stat fields after the
    command name (state first). OSError / ValueError when there is none."""
    pid = int((root / ".dvc" / "tmp" / "exps" / "run" / stash_rev / f"{stash_rev}.pid").read_text().strip())
    return pid, Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_info(root: Path, stash_rev: str) -> tuple[float | None, int | None]:
    """A running experiment's start time (epoch s) and OMP_NUM_THREADS, from its executor process (Linux /proc)."""
    try:
        pid, fields = executor_stat(root, stash_rev)
        ticks = int(fields[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        threads = next((int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"OMP_NUM_THREADS=")), None)
        return started, threads
    except (OSError, ValueError, IndexError, StopIteration):
        return None, None


class State:
    """study.py's bookkeeping on this machine (.dvc/tmp/studies/): when each run was seen starting, with how many
    threads, and the thread count of the workers it started. Lost with .dvc/tmp; never needed for correctness."""

    def __init__(self, root: Path):
        self.path = root / STATE_DIR / "runs.json"
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}
        self.data.setdefault("runs", {})

    def save(self):
        atomic_write_json(self.path, self.data)


def code_paths(head: dict) -> list[str]:
    return sorted(head["files"])


def run_dvc(args: list[str], root: Path, wait_s: float = LOCK_WAIT_S) -> subprocess.CompletedProcess:
    """A DVC command; while another DVC process holds the repository's lock (another `study.py run` queueing its
    runs, say), wait and try again, for ``wait_s`` seconds at most."""
    deadline = time.monotonic() + wait_s
    while True:
        proc = subprocess.run(args, cwd=root, capture_output=True, text=True)
        if proc.returncode == 0 or "Unable to acquire lock" not in proc.stderr or time.monotonic() > deadline:
            return proc
        time.sleep(LOCK_RETRY_S)


def lock_is_current(root: Path, head: dict) -> list[str]:
    """Code files whose content differs from their hash in dvc.lock (`dvc status`): results would be stale at once."""
    proc = run_dvc(["dvc", "status", "--json"], root)
    if proc.returncode != 0:
        raise StudyError(f"`dvc status` failed: {proc.stderr.strip()[-2000:]}")
    try:
        status = json.loads(proc.stdout or "{}")
    except ValueError:
        return []
    code = set(code_paths(head))
    changed = set()
    for entries in status.values():
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict):
                for path in (entry.get("changed deps") or {}):
                    if path in code:
                        changed.add(path)
    return sorted(changed)


def collect(study: Study, arm: Arm, seed: int, ref: dict, head: dict, root: Path, state: State) -> tuple[bool, str]:
    """Copy a finished experiment into its results folder, if it ran this pair's params on HEAD's code.
    Returns (collected, why not)."""
    def show(path):
        proc = subprocess.run(["git", "show", f"{ref['rev']}:{path}"], cwd=root, capture_output=True)
        return proc.stdout if proc.returncode == 0 else None

    lock = show("dvc.lock")
    if lock is None:
        return False, f"experiment {ref['rev'][:7]} has no dvc.lock"
    deps = lock_deps(schema.read_yaml(lock.decode()))
    expected = arm.expected_params(seed)
    reasons = stale_reasons(deps, head, expected)
    params_text = show("params.yaml")
    ran = schema.read_yaml(params_text.decode()) if params_text else {}
    for key, value in [("seed", seed), *arm.overrides]:
        try:
            if dotted_get(ran, key) != value:
                reasons.append(f"it ran {key}={dotted_get(ran, key)!r}, the study asks for {value!r}")
        except KeyError:
            reasons.append(f"it ran without {key}")
    if reasons:
        return False, "; ".join(reasons)
    files = {}
    for src, dest in COLLECTED_FILES.items():
        content = show(src)
        if content is None:
            return False, f"experiment {ref['rev'][:7]} has no {src} (code older than the outcomes file?)"
        files[dest] = content
    name = study.experiment_name(arm.name, seed)
    seen = [r for r in state.data["runs"].values() if r.get("name") == name and r.get("started")
            and r["started"] <= ref["time"] + 1]
    info = max(seen, key=lambda r: r["started"]) if seen else {}
    started, threads = info.get("started"), info.get("threads")
    note = None
    if not started:  # no study.py saw it running (queued with --no-wait): its executor log says when it began
        started = log_started(root, name, ref["time"])
        threads = state.data.get("workers", {}).get("threads")
        note = "start: the creation time of the executor's log (no study.py watched the run)" if started else None
    wall = round(ref["time"] - started, 1) if started and ref["time"] >= started else None
    run = {"study": study.name, "arm": arm.name, "seed": seed, "model": study.model,
           "experiment": name, "experiment_rev": ref["rev"], "baseline_commit": ref["baseline"],
           "set_params": set_params_args(arm, seed, study.base_params),
           "finished_at": dt.datetime.fromtimestamp(ref["time"], dt.timezone.utc).isoformat(),
           "started_at": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds")
           if started else None,
           "wall_s": wall, "threads": threads,
           "wall_note": note if wall is not None else "not measured: the run started while study.py was not watching"}
    write_run_folder(run_folder(root, study.name, arm.name, seed), files, deps, run)
    return True, ""


def log_started(root: Path, name: str, finished: float) -> float | None:
    """When the last executor of experiment ``name`` that began before ``finished`` began: the creation (birth) time
    of its log, from statx (`stat -c %W`; 0 where the filesystem does not keep it). None when unknown."""
    best = None
    for info in (root / ".dvc" / "tmp" / "exps" / "run").glob("*/*.run"):
        try:
            if json.loads(info.read_text()).get("name") != name:
                continue
            born = float(subprocess.run(["stat", "-c", "%W", str(info.with_suffix(".out"))], capture_output=True,
                                        text=True, check=True).stdout)
        except (OSError, ValueError, subprocess.CalledProcessError):
            continue
        if 0 < born <= finished and (best is None or born > best):
            best = born
    return best


def write_run_folder(folder: Path, files: dict[str, bytes], deps: dict, run: dict) -> None:
    """A collected run's folder, whole or not at all: written beside it, then renamed into place (run.json last)."""
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for dest, content in files.items():
        (tmp / dest).write_bytes(content)
    atomic_write_json(tmp / "deps.json", deps)
    atomic_write_json(tmp / "run.json", run)  # last: a folder with run.json is a complete run
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old)
    else:
        tmp.rename(folder)


def identical_run(study: Study, arm: Arm, seed: int, root: Path, head: dict) -> Collected | None:
    """A current (not stale) run collected by another study with exactly this pair's params: the same computation,
    so it is shared instead of rerun. DVC's run cache cannot do this: the student and attack stages also write
    git-tracked files (`cache: false`), and DVC keeps no run-cache entry for such stages."""
    want = arm.expected_params(seed)
    for name in all_studies(root):
        if name == study.name:
            continue
        other = load_study(name, root, check_params=False)
        for (arm_name, other_seed), c in load_collected(other, root, head).items():
            if not c.stale and not c.run.get("shared_from") and other.arms[arm_name].expected_params(other_seed) == want:
                return c
    return None


def share(study: Study, arm: Arm, seed: int, source: Collected, root: Path) -> Path:
    """Copy another study's identical run into this pair's folder; run.json says where it came from, and that it
    cost this study nothing."""
    files = {name: (source.folder / name).read_bytes() for name in COLLECTED_FILES.values()}
    origin = source.folder.relative_to(root).as_posix()
    run = {**{k: source.run.get(k) for k in ("experiment", "experiment_rev", "baseline_commit", "finished_at",
                                             "started_at")},
           "study": study.name, "arm": arm.name, "seed": seed, "model": study.model,
           "set_params": set_params_args(arm, seed, study.base_params), "wall_s": 0.0, "threads": 1,
           "shared_from": origin,
           "wall_note": f"not rerun: the same params and code as {origin} (its wall time is counted there)"}
    folder = run_folder(root, study.name, arm.name, seed)
    write_run_folder(folder, files, source.deps, run)
    return folder


def check_workspace(root: Path) -> None:
    dirty = git("status", "--porcelain", "--", "src", "dvc.yaml", "params.yaml", "dvc.lock", ".dvcignore",
                cwd=root).strip()
    if dirty:
        raise StudyError("uncommitted changes to the code or params an experiment runs on:\n" + dirty +
                         "\nCommit them (the experiments record HEAD as their code) or `git stash` them, then rerun")


class Interrupted(Exception):
    pass


# Failures of DVC itself when queue workers run side by side, not of the experiment (treeverse/dvc#10673): the
# run cache lists a stage's entries while another worker renames its temporary file there.
TRANSIENT_FAILURES = re.compile(r"failed to reproduce '[^']+': \[Errno 2\] No such file or directory: '[^']*"
                                r"/\.dvc/cache/runs/[^']*\.tmp'")


def transient_failure(log: Path) -> bool:
    """Whether a failed experiment's log shows one of DVC's known parallel-worker races (worth one more try)."""
    try:
        return bool(TRANSIENT_FAILURES.search(log.read_text(errors="replace")[-20000:]))
    except OSError:
        return False


def executor_alive(root: Path, stash_rev: str) -> bool:
    """Whether the process running a queued experiment is alive: DVC's pid file names a live, non-zombie process."""
    try:
        return executor_stat(root, stash_rev)[1][0] != "Z"
    except (OSError, ValueError, IndexError):
        return False


def queue_flags(name: str, existing: set[str]) -> list[str]:
    """`-f` only when an experiment of this name exists or waits in the queue: DVC needs it to overwrite one, but it
    also forces every stage to run, bypassing the run cache that otherwise restores what an identical earlier run
    computed (a teacher shared by arms, an arm identical to another study's)."""
    return ["-f"] if name in existing else []


def cmd_run(study: Study, root: Path, jobs: int, threads: int, wait: bool, poll_s: float,
            stall_s: float = STALL_S, arms: list[str] | None = None, seeds: list[int] | None = None) -> int:
    for name in arms or []:
        if name not in study.arms:
            raise StudyError(f"--arms: no arm `{name}` in {study.path}{did_you_mean(name, study.arms)}; "
                             f"its arms: {', '.join(study.arms)}")
    selected = [(arm, seed) for arm, seed in study.pairs()  # `--arms` / `--seeds`: a part of the study, run first
                if (not arms or arm.name in arms) and (seeds is None or seed in seeds)]
    if not selected:
        raise StudyError(f"--arms / --seeds select no (arm, seed) of {study.path}")
    part = "" if len(selected) == len(study.pairs()) else " selected"
    check_workspace(root)
    head = head_lock_deps(root)
    outdated = lock_is_current(root, head)
    if outdated:
        raise StudyError("dvc.lock is out of date for " + ", ".join(outdated) + ": every result would be stale at "
                         "once. Run `dvc repro` (or `dvc commit`) and commit dvc.lock, then rerun")
    head_rev = git("rev-parse", "HEAD", cwd=root).strip()
    collected = load_collected(study, root, head)
    state = State(root)
    pending = {}
    for arm, seed in selected:
        c = collected.get((arm.name, seed))
        if c and not c.stale:
            continue
        if c:
            print(f"{arm.name} seed {seed}: collected result is stale ({'; '.join(c.stale)}); it is rerun")
        pending[study.experiment_name(arm.name, seed)] = (arm, seed)
    if not pending:
        print(f"{study.name}: every{part} (arm, seed) is collected on the current code; nothing to run")
        return 0

    def try_collect_all(refs) -> None:
        for name in list(pending):
            arm, seed = pending[name]
            for ref in refs.get(name, []):
                ok, why = collect(study, arm, seed, ref, head, root, state)
                if ok:
                    print(f"collected {name} ({ref['rev'][:7]}) -> "
                          f"{run_folder(root, study.name, arm.name, seed).relative_to(root)}", flush=True)
                    del pending[name]
                    break
                skipped.setdefault(name, set())
                if ref["rev"] not in skipped[name]:
                    skipped[name].add(ref["rev"])
                    print(f"{name}: experiment {ref['rev'][:7]} not usable: {why}", flush=True)

    skipped: dict[str, set] = {}
    try_collect_all(exp_refs(root))
    for name in list(pending):
        source = identical_run(study, *pending[name], root, head)
        if source:
            folder = share(study, *pending[name], source, root)
            print(f"collected {name} from {source.folder.relative_to(root)} (the same params and code; not rerun) "
                  f"-> {folder.relative_to(root)}", flush=True)
            del pending[name]
    if not pending:
        print(f"{study.name}: every{part} (arm, seed) is collected")
        return 0
    snap = queue_snapshot(root)
    in_queue = {e["name"] for state_ in ("running", "queued") for e in snap[state_]}
    old_failed = {e["rev"] for e in snap["failed"]}
    code = code_paths(head) + ["dvc.yaml"]
    queued_now = 0

    existing = set(exp_refs(root)) | in_queue  # names DVC would refuse to queue again without -f

    def queue_run(name: str, arm: Arm, seed: int) -> None:
        set_args = [a for s in set_params_args(arm, seed, study.base_params) for a in ("-S", s)]
        args = ["dvc", "exp", "run", "--queue", "-n", name, *queue_flags(name, existing), *set_args]
        proc = run_dvc(args, root)
        if proc.returncode != 0:
            raise StudyError(f"`{' '.join(args)}` failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        print(f"queued {name}: {' '.join(set_args)}", flush=True)
    for name, (arm, seed) in pending.items():
        entries = [e for s in ("running", "queued") for e in snap[s] if e["name"] == name]
        reusable = [e for e in entries if e["baseline"] == head_rev or
                    not git("diff", "--name-only", e["baseline"], head_rev, "--", *code, cwd=root).strip()]
        if reusable:
            print(f"{name}: already queued or running ({reusable[0]['rev'][:7]}); reused")
            continue
        if entries:
            print(f"{name}: queued on older code ({entries[0]['rev'][:7]}); queueing it again on HEAD "
                  f"(`dvc queue remove {entries[0]['rev'][:7]}` drops the old one)")
        queue_run(name, arm, seed)
        queued_now += 1
    del in_queue

    started_workers = 0

    def start_workers() -> int:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        # Not captured: the workers inherit stdout/stderr, and reading those pipes would wait for the workers to exit.
        log = root / STATE_DIR / "queue-start.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as fh:
            code = subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=root, env=env, stdout=fh,
                                  stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise StudyError(f"`dvc queue start -j {jobs}` failed ({code}): {log.read_text()[-2000:]}")
        m = re.search(r"Started '(\d+)'", log.read_text())
        n = int(m.group(1)) if m else 0
        if n:
            state.data["workers"] = {"threads": threads, "jobs": jobs}
            state.save()
        return n

    started_workers += start_workers()
    print(f"{len(pending)} run(s) pending ({queued_now} queued now); {jobs} worker(s) at {threads} thread(s) "
          f"{'started' if started_workers else '(workers already running)'}", flush=True)
    if not wait:
        print(f"not waiting (--no-wait): `python tools/study.py run {study.name}` again collects the finished runs")
        return 0

    def stop(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    failed: dict[str, str] = {}
    retried: set[str] = set()
    idle_polls = 0
    stalled_since, recoveries = None, 0

    def requeue_stalled(names: list[str], snap: dict) -> set[str]:
        """Nothing has run for `stall_s` although `names` wait in the queue: a worker killed mid-task can leave an
        entry "running" with no process, or a message taken off the queue by a worker that then died. Stop the
        workers (no process runs, so nothing is lost), drop those entries and queue the runs again."""
        print(f"nothing has run for {stall_s:.0f} s although {', '.join(names)} wait in DVC's queue (a worker "
              "stopped mid-task?): restarting the queue workers and queueing them again", flush=True)
        run_dvc(["dvc", "queue", "stop", "--kill"], root)
        revs = [e["rev"] for s in ("running", "queued") for e in snap[s] if e["name"] in names]
        if revs:
            run_dvc(["dvc", "queue", "remove", *revs], root)
        for name in names:
            queue_run(name, *pending[name])
        return {e["rev"] for e in queue_snapshot(root)["failed"]}  # failures of the dropped entries are not news
    try:
        while pending:
            time.sleep(poll_s)
            try_collect_all(exp_refs(root))
            if not pending:
                break
            snap = queue_snapshot(root)
            for e in snap["running"]:
                if e["name"] in pending and e["rev"] not in state.data["runs"]:
                    started, t = process_info(root, e["rev"])
                    state.data["runs"][e["rev"]] = {"name": e["name"], "started": started or time.time(),
                                                    "threads": t if t is not None else
                                                    state.data.get("workers", {}).get("threads")}
                    state.save()
            for e in snap["failed"]:
                if e["name"] in pending and e["rev"] not in old_failed and e["name"] not in failed:
                    log = log_path(root, e["rev"])
                    if e["name"] not in retried and transient_failure(log):
                        retried.add(e["name"])
                        old_failed.add(e["rev"])
                        print(f"{e['name']} failed on a race between DVC's parallel workers, not on its own code "
                              f"(log {log.relative_to(root)}): queued again, once", flush=True)
                        queue_run(e["name"], *pending[e["name"]])
                        continue
                    failed[e["name"]] = str(log.relative_to(root))
                    print(f"FAILED {e['name']}: log {failed[e['name']]} (or `dvc queue logs {e['rev'][:7]}`)",
                          flush=True)
            active = {e["name"] for s in ("running", "queued") for e in snap[s]}
            waiting = [n for n in pending if n not in failed]
            if not waiting:
                break
            stuck = [n for n in waiting if n in active]
            if stuck and not any(executor_alive(root, e["rev"]) for e in snap["running"]):
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since >= stall_s:
                    if recoveries >= MAX_RECOVERIES:
                        print(f"still stalled after {recoveries} restarts of the queue: " + ", ".join(stuck) +
                              f" wait in DVC's queue and nothing runs. See `dvc queue status`; rerun "
                              f"`python tools/study.py run {study.name}` after `dvc queue stop --kill`", flush=True)
                        break
                    recoveries += 1
                    old_failed |= requeue_stalled(stuck, snap)
                    started_workers += start_workers()
                    stalled_since = time.monotonic() + RESTART_GRACE_S  # a fresh worker needs time to take a run
                    continue
            else:
                stalled_since = None
            if not any(n in active for n in waiting):
                idle_polls += 1
                if idle_polls >= 3:  # e.g. a run finished between the ref scan and the queue snapshot: 3 polls
                    print("not in the queue any more and not finished: " + ", ".join(waiting) +
                          f"; rerun `python tools/study.py run {study.name}`", flush=True)
                    break
            else:
                idle_polls = 0
                if any(e["name"] in pending for e in snap["queued"]) and not snap["running"]:
                    started_workers += start_workers()  # the workers exited (idle timeout, killed): start again
    except Interrupted as sig:
        print(f"\n{sig}: stopping", flush=True)
        if started_workers:
            subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=root, capture_output=True)
            print("stopped the queue workers this command started (runs in flight are lost; queued runs stay "
                  f"queued). `python tools/study.py run {study.name}` resumes.", flush=True)
        return 130
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
    done = len(selected) - len(pending)
    print(f"{study.name}: {done} of {len(selected)}{part} runs collected; {len(failed)} failed; "
          f"{len(pending) - len(failed)} not finished")
    if pending:
        return 1
    print(f"next: `python tools/study.py report {study.name}`, then commit results/studies/{study.name} and "
          f"{RESULTS_PAGE}")
    return 0


def cmd_status(study: Study, root: Path) -> int:
    head = head_lock_deps(root)
    collected = load_collected(study, root, head)
    try:
        snap = queue_snapshot(root)
    except Exception as err:  # noqa: BLE001 - the queue is optional here
        print(f"(queue not readable: {err})")
        snap = {"running": [], "queued": [], "failed": []}
    refs = exp_refs(root)
    counts: dict[str, int] = {}
    for arm, seed in study.pairs():
        name = study.experiment_name(arm.name, seed)
        c = collected.get((arm.name, seed))
        if c and not c.stale:
            what = "collected"
        elif c:
            what = "stale (" + "; ".join(c.stale) + ")"
        elif any(e["name"] == name for e in snap["running"]):
            what = "running"
        elif any(e["name"] == name for e in snap["queued"]):
            what = "queued"
        elif name in refs:
            what = "finished, not collected (`run` collects it)"
        elif any(e["name"] == name for e in snap["failed"]):
            rev = next(e["rev"] for e in snap["failed"] if e["name"] == name)
            what = f"failed (log {log_path(root, rev).relative_to(root)})"
        else:
            what = "missing"
        key = what.split(" ")[0].rstrip(",")
        counts[key] = counts.get(key, 0) + 1
        print(f"{arm.name:<24} seed {seed:<6} {what}")
    for folder in extra_folders(study, root):
        print(f"{folder.relative_to(root)}: not an (arm, seed) of {study.path} any more; not reported")
    print(f"{study.name}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0


# --- the report --------------------------------------------------------------------------------------------------
def pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def fmt_metric(key: str, x: float | None) -> str:
    if x is None:
        return "n/a"
    if re.search(r"(_acc|_headline|_rate)$", key):
        return pct(x)
    return f"{x:.4g}"


def fmt_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def mean_cell(values: list[float], fmt=pct, clip: tuple[float, float] | None = None) -> str:
    """mean ± std [95% t-interval over seeds]; ``clip``: the interval cut to the possible range (accuracies)."""
    from robustkd.stats import mean_interval

    if not values:
        return "n/a"
    mean, std, low, high = mean_interval(values)
    if clip and low is not None:
        low, high = max(clip[0], low), min(clip[1], high)
    if std is None:
        return f"{fmt(mean)} (1 seed)"
    return f"{fmt(mean)} ± {fmt(std)} [{fmt(low)}, {fmt(high)}]"


@dataclass
class ArmResult:
    arm: Arm
    runs: list[Collected]
    clean: dict[int, float]
    worst: dict[int, float]
    worst_bits: dict[int, object]
    points: dict[int, tuple]      # seed -> (attack points sha256, headline ε, test sha256)


def arm_results(study: Study, collected: dict) -> dict[str, ArmResult]:
    from robustkd.outcomes import read_outcomes

    out = {}
    for arm in study.arms.values():
        runs = [collected[(arm.name, s)] for s in arm.seeds if (arm.name, s) in collected]
        clean, worst, bits, points = {}, {}, {}, {}
        for r in runs:
            o = read_outcomes(r.outcomes, str(r.folder / "outcomes.json"))
            if study.model not in o.models:
                raise StudyError(f"{r.folder / 'outcomes.json'}: no model `{study.model}` (has "
                                 f"{', '.join(o.models)}); fix `model:` in {study.path}")
            m = o.models[study.model]
            w = m.worst_case.get(o.headline_key)
            if w is None:
                raise StudyError(f"{r.folder / 'outcomes.json'}: no worst case at the headline ε {o.headline_eps}")
            clean[r.seed] = float(m.clean_correct.mean())
            worst[r.seed] = float(w.mean())
            bits[r.seed] = w
            points[r.seed] = (o.attack_points_sha256, o.headline_eps, o.test_sha256)
        out[arm.name] = ArmResult(arm, runs, clean, worst, bits, points)
    return out


def choose_baseline(spec, results: dict[str, ArmResult]) -> tuple[str | None, str]:
    """The baseline arm for ``spec`` (a name, or {best_of: [...]}: the best by mean worst-case accuracy over seeds,
    the first listed on a tie) and how it was chosen."""
    if isinstance(spec, str):
        return spec, ""
    names = spec["best_of"]
    scored = [(sum(results[n].worst.values()) / len(results[n].worst), n) for n in names if results[n].worst]
    if not scored:
        return None, f"best of {', '.join(names)} (none has results yet)"
    best = max(scored, key=lambda t: (round(t[0], 10), -names.index(t[1])))
    text = ", ".join(f"{n} {pct(s)}" for s, n in sorted(scored, key=lambda t: names.index(t[1])))
    return best[1], f"best of {', '.join(names)} by mean worst-case accuracy ({text})"


def verdict(low: float | None, high: float | None, direction: str, margin: float) -> str:
    """held: the interval is wholly on the claimed side; did not hold: wholly on the other; else undecided."""
    if low is None or high is None:
        return VERDICTS[2]
    bound = -margin if direction == "at_least" else 0.0
    if low > bound:
        return VERDICTS[0]
    if high < bound:
        return VERDICTS[1]
    return VERDICTS[2]


def compare_arm(study: Study, arm: ArmResult, base: ArmResult) -> dict:
    from robustkd.stats import mean_interval, paired_difference

    seeds = [s for s in arm.arm.seeds if s in arm.worst and s in base.worst]
    per_seed = []
    for s in seeds:
        if arm.points[s] != base.points[s]:
            raise StudyError(f"{study.name}: {arm.arm.name} seed {s} and {base.arm.name} seed {s} were attacked on "
                             f"different points, headline ε or test split ({arm.points[s]} vs {base.points[s]}); "
                             f"a paired comparison needs the same ones: rerun one of them with the same "
                             f"attack.n_points / attack.seed / data params")
        d = paired_difference(base.worst_bits[s], arm.worst_bits[s])
        per_seed.append((s, d))
    diffs = [arm.worst[s] - base.worst[s] for s in seeds]
    mean = low = high = None
    if diffs:
        mean, _, low, high = mean_interval(diffs)
    return {"seeds": seeds, "per_seed": per_seed, "diffs": diffs, "mean": mean, "low": low, "high": high,
            "verdict": seed_gated(len(seeds), verdict(low, high, study.direction, study.margin))}


def seed_gated(n_paired: int, word: str) -> str:
    """The verdict word only when at least MIN_PAIRED_SEEDS seeds pair: two seeds that happen to agree give a
    zero-width interval, not evidence."""
    if n_paired >= MIN_PAIRED_SEEDS:
        return word
    return f"not decided: {n_paired} paired seed{'s' * (n_paired != 1)}, a verdict needs {MIN_PAIRED_SEEDS}"


def family_wise(study: Study, comparison: dict, n_compared: int) -> str:
    """The seed-mean interval and verdict at 1 - 0.05 / n_compared (Bonferroni over the study's compared arms): a
    reader scanning several arms for one that "held" should know whether it survives the multiplicity."""
    from robustkd.stats import mean_interval

    if len(comparison["diffs"]) < 2:
        return "n/a"
    _, _, low, high = mean_interval(comparison["diffs"], 1 - 0.05 / n_compared)
    word = seed_gated(len(comparison["diffs"]), verdict(low, high, study.direction, study.margin))
    return f"[{pct(low, True)}, {pct(high, True)}] {word}"


@dataclass
class Verdict:
    baseline: str | None          # the baseline arm (None: a best_of with no results yet)
    how: str                      # how a best_of baseline was chosen ("" for a named one)
    comparison: dict | None       # compare_arm's result; None when no seed is paired yet
    stale: bool                   # a run of the arm or of its baseline is stale

    @property
    def word(self) -> str:
        return self.comparison["verdict"] if self.comparison else NOT_YET

    def difference(self, one_seed: str = " (1 seed)") -> str:
        c = self.comparison
        if not c:
            return "n/a"
        return pct(c["mean"], True) + (f" [{pct(c['low'], True)}, {pct(c['high'], True)}]" if c["low"] is not None
                                       else one_seed)


def judge(study: Study, arm: Arm, results: dict[str, ArmResult]) -> Verdict:
    """A compared arm against its baseline: the paired comparison and its verdict, when seeds pair."""
    base_name, how = choose_baseline(arm.baseline, results)
    r = results[arm.name]
    base = results.get(base_name) if base_name else None
    if base is None or not r.worst or not base.worst:
        return Verdict(base_name, how, None, False)
    c = compare_arm(study, r, base)
    return Verdict(base_name, how, c if c["seeds"] else None, any(x.stale for x in r.runs + base.runs))


BUDGET_KEYS = [("dataset", "dataset"), ("teacher.epochs", "teacher epochs"), ("training.epochs", "other roles' epochs"),
               ("train_attack.steps", "PGD steps in adversarial training"), ("attack.headline_eps", "headline ε"),
               ("attack.n_points", "attacked points"), ("attack.autoattack.version", "AutoAttack")]


def setup_lines(study: Study, tail: list[str]) -> list[str]:
    """What every arm shares (the study's base on HEAD's params.yaml: the budget) and what each arm changes."""
    def shown(value) -> str:
        return json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)

    shared = merge(study.base_params, {})
    for key, value in study.base_overrides.items():
        apply_dotted(shared, key, value)
    budget = []
    for key, label in BUDGET_KEYS:
        try:
            budget.append(f"{label} {shown(dotted_get(shared, key))}")
        except KeyError:
            continue
    arms = []
    for arm in study.arms.values():
        change = ", ".join(f"{k}={shown(v)}" for k, v in arm.own_overrides)
        if arm.preset:
            change = f"preset `{arm.preset}`" + (f", then {change}" if change else "")
        arms.append(f"- `{arm.name}` ({arm.role}, {len(arm.seeds)} seed{'s' * (len(arm.seeds) != 1)}): {change}")
    base = ", ".join(f"`{k}={shown(v)}`" for k, v in study.base_overrides.items()) or "no overrides"
    return [f"Every arm runs HEAD's params.yaml with {base}; the budget: {'; '.join(budget)}. The arms change:", "",
            *arms, *tail]


def section(study: Study, root: Path, head: dict) -> str:
    """The study's part of docs/results.md, from results/studies/<name>/ alone (and HEAD's dvc.lock, for staleness)."""
    collected = load_collected(study, root, head)
    lines = [SECTION_START.format(name=study.name),
             f"### Study `{study.name}`",
             "",
             f"Claim: {study.claim}",
             "",
             f"Generated by `python tools/study.py report {study.name}` from `{RESULTS_DIR.as_posix()}/{study.name}/` "
             f"(study file `{study.path.as_posix()}`); do not edit by hand.",
             ""]
    lines += setup_lines(study, [""])
    total = len(study.pairs())
    if not collected:
        lines += [f"No runs collected yet (0 of {total} arm × seed runs): no numbers. Run "
                  f"`python tools/study.py run {study.name}`.", SECTION_END.format(name=study.name)]
        return "\n".join(lines)
    results = arm_results(study, collected)
    stale = [c for c in collected.values() if c.stale]
    commits = sorted({c.run.get("baseline_commit", "?")[:7] for c in collected.values()})
    lines.append(f"{len(collected)} of {total} runs collected; model `{study.model}`; ran on commit(s) "
                 f"{', '.join(commits)}.")
    if stale:
        lines += ["", f"**Stale: {len(stale)} run(s) ran on code or params that differ from HEAD's** (marked ⚠; rerun "
                  f"`python tools/study.py run {study.name}`):"]
        lines += [f"- {c.arm} seed {c.seed}: {'; '.join(c.stale)}" for c in sorted(stale, key=lambda c: (c.arm, c.seed))]
    lines += ["", "Per arm: mean ± std over seeds [95% t-interval over seeds, cut to 0-100], in %; worst case = the "
              "per-point worst over the attack suite at the headline ε."]
    extra = study.report_metrics
    header = ["arm", "role", "seeds", "clean", "worst case", *extra, "AutoAttack", "attacked points",
              "masking flagged", "CPU min"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    total_cpu, unmeasured = 0.0, 0
    for name, r in results.items():
        if not r.runs:
            lines.append(f"| {name} | {r.arm.role} | 0 of {len(r.arm.seeds)} | " + " | ".join(
                ["n/a"] * (len(header) - 3)) + " |")
            continue
        seeds_text = ", ".join(str(c.seed) + (" ⚠" if c.stale else "") for c in r.runs)
        extras = []
        for key in extra:
            values = [c.metrics.get(study.model, {}).get(key) for c in r.runs]
            values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            # every reported metric is non-negative (accuracies and rates at most 1): the interval is cut to that
            bounds = (0.0, 1.0) if re.search(r"(_acc|_headline|_rate)$", key) else (0.0, float("inf"))
            extras.append(mean_cell(values, lambda x, k=key: fmt_metric(k, x), clip=bounds) if values else "n/a")
        versions = sorted({str(c.metrics.get(study.model, {}).get("autoattack_version") or
                               c.outcomes["models"][study.model].get("autoattack_version")) for c in r.runs})
        n_points = sorted({c.outcomes["attack_points"]["n"] for c in r.runs})
        flags = [c.metrics.get(study.model, {}).get("gradient_masking") for c in r.runs]  # per model, 0 / 1
        codes = sorted({c.metrics.get(study.model, {}).get("masking_codes") or "" for c in r.runs} - {""})
        flagged = f"{sum(1 for f in flags if f)} of {len(flags)}" + (f" ({', '.join(codes)})" if codes else "")
        cpu = [c.run["wall_s"] * (c.run.get("threads") or 1) / 60 for c in r.runs if c.run.get("wall_s") is not None]
        missing = len(r.runs) - len(cpu)
        total_cpu += sum(cpu)
        unmeasured += missing
        cpu_text = (f"{sum(cpu):.0f}" if cpu else "n/a") + (f" (+{missing} unmeasured)" if missing and cpu else "")
        shared = sum(1 for c in r.runs if c.run.get("shared_from"))
        cpu_text += f" ({shared} shared)" if shared else ""
        lines.append(f"| {name} | {r.arm.role} | {seeds_text} | {mean_cell(list(r.clean.values()), clip=(0, 1))} | "
                     f"{mean_cell(list(r.worst.values()), clip=(0, 1))} | " + "".join(e + " | " for e in extras) +
                     f"{', '.join(versions)} | {', '.join(map(str, n_points))} | {flagged} | {cpu_text} |")
    compared = [a for a in study.arms.values() if a.role == "compared"]
    if compared:
        claim = "compared arm > baseline" if study.direction == "better" else \
            f"compared arm ≥ baseline{f' − {pct(study.margin)} points' if study.margin else ''}"
        lines += ["", f"Against the baseline (worst case, in points; claim: {claim}). Per seed: the paired difference "
                  "on the same attacked points, its 95% interval (Newcombe) and the exact McNemar p. The verdict is "
                  "decided by the difference of the seed means and its 95% t-interval over seeds (the per-seed "
                  "differences, paired by seed).", "",
                  "| arm | baseline | per seed: difference [95% CI], McNemar p | difference of seed means [95% CI] "
                  f"| verdict | family-wise over {len(compared)} compared arm(s) (Bonferroni) |",
                  "|---|---|---|---|---|---|"]
        notes = []
        for arm in compared:
            v = judge(study, arm, results)
            if v.how and v.how not in notes:
                notes.append(v.how)
            if not v.comparison:
                lines.append(f"| {arm.name} | {v.baseline or 'n/a'} | no paired seeds yet | n/a | {NOT_YET} | n/a |")
                continue
            per_seed = "; ".join(f"s{s}: {pct(d['diff'], True)} [{pct(d['ci_low'], True)}, {pct(d['ci_high'], True)}], "
                                 f"p {fmt_p(d['p_value'])}" for s, d in v.comparison["per_seed"])
            lines.append(f"| {arm.name} | {v.baseline} | {per_seed} | {v.difference(' (1 seed: no interval over seeds)')} "
                         f"| {v.word}{' ⚠ stale' if v.stale else ''} | "
                         f"{family_wise(study, v.comparison, len(compared))} |")
        lines += [""] + [f"Baseline: {n}." for n in notes]
        if len(compared) > 1:
            lines += ["", f"The verdict is per arm, at 95%. With {len(compared)} compared arms, one of them can "
                      f"\"hold\" by chance; the last column widens each interval to {100 - 5 / len(compared):.2f}% "
                      f"(Bonferroni), so that the chance that any of the {len(compared)} misses its true difference "
                      f"is at most 5%."]
    cost = f"Cost: {total_cpu:.0f} CPU minutes (wall time × threads per run)"
    shared_from = sorted({c.run["shared_from"].split("/")[2] for c in collected.values() if c.run.get("shared_from")})
    if shared_from:
        cost += (f"; runs marked shared have the same params and code as a run of another study "
                 f"({', '.join(shared_from)}) and were copied from it, not rerun (their minutes count there)")
    if unmeasured:
        cost += f", plus {unmeasured} run(s) whose wall time was not measured"
    lines += ["", cost + ".", SECTION_END.format(name=study.name)]
    return "\n".join(line for i, line in enumerate(lines) if not (line == "" and i and lines[i - 1] == ""))


def summary(root: Path) -> str:
    """One markdown row per compared arm of every study: the README's short results table, from the same collected
    files as docs/results.md (so the two cannot disagree)."""
    head = head_lock_deps(root)
    rows = ["| study | claim | arm vs baseline | runs collected | worst case: difference of seed means [95% CI] | "
            "verdict | family-wise (Bonferroni over the study's compared arms) |", "|---|---|---|---|---|---|---|"]
    for name in all_studies(root):
        study = load_study(name, root, check_params=False)
        collected = load_collected(study, root, head)
        results = arm_results(study, collected) if collected else {}
        runs = f"{len(collected)} of {len(study.pairs())}"
        compared = [a for a in study.arms.values() if a.role == "compared"]
        for i, arm in enumerate(compared):
            claim = study.claim if i == 0 else "〃"
            if not collected:
                v = Verdict(arm.baseline if isinstance(arm.baseline, str) else None, "", None, False)
            else:
                v = judge(study, arm, results)
            word = ("not run yet" if not collected else v.word) + (" ⚠ stale" if v.stale else "")
            base_text = v.baseline or "best of " + ", ".join(arm.baseline["best_of"])
            family = family_wise(study, v.comparison, len(compared)) if v.comparison else "n/a"
            rows.append(f"| [{name}](docs/results.md#study-{name}) | {claim} | {arm.name} vs {base_text} | {runs} | "
                        f"{v.difference()} | {word} | {family} |")
    return "\n".join(rows)


COST_RULE_HOURS = 6.0   # a study longer than this on the 2-core CPU attacks 500 points instead (docs/studies.md)


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def cpu_minutes(c: Collected) -> float | None:
    wall = c.run.get("wall_s")
    return None if wall is None else wall * (c.run.get("threads") or 1) / 60


def costs(root: Path, workers: int = 2) -> str:
    """What one run of each method cost, and what each study has cost and would still cost, from the collected
    runs' run.json and timing.json alone (docs/performance.md's block)."""
    head = head_lock_deps(root)
    studies = [load_study(n, root, check_params=False) for n in all_studies(root)]
    done = {s.name: load_collected(s, root, head) for s in studies}
    # every collected run with its full params; a run shared from another study (`shared_from`) cost nothing here
    # and says nothing of what its method costs
    runs_params = [(s, arm, seed, c, s.arms[arm].expected_params(seed))
                   for s in studies for (arm, seed), c in done[s.name].items()]
    by_method: dict[str, list[tuple[str, Collected, str]]] = {}  # method -> (study/arm, run, the study's model)
    for s, arm, _, c, params in runs_params:
        if cpu_minutes(c) is not None and not c.run.get("shared_from"):
            by_method.setdefault(str(params.get("method")), []).append((f"{s.name}/{arm}", c, s.model))
    lines = ["Measured: one run = one arm and seed of a study, on 1 thread while a second run used the other core "
             "(wall minutes = CPU minutes). Training = the roles' `train_seconds` in `timing.json`; the rest is data "
             "preparation, the surrogate, prediction and the attack suite with standard AutoAttack on every attacked "
             "model. Runs shared from another study (the same params and code, not rerun) are left out.",
             "", "| method | runs measured (study/arm) | minutes per run: median (min-max) | training minutes: median "
             "| the rest: median | attacked points | AutoAttack |", "|---|---|---|---|---|---|---|"]
    method_median = {}
    for method, runs in sorted(by_method.items()):
        minutes = [cpu_minutes(c) for _, c, _ in runs]
        train = [(c.timing.get("train_seconds_total") or 0) / 60 for _, c, _ in runs]
        rest = [m - t for m, t in zip(minutes, train) if m >= t]  # m < t: a teacher restored from the run cache
        method_median[method] = _median(minutes)
        arms = sorted({a for a, _, _ in runs})
        points = sorted({c.outcomes["attack_points"]["n"] for _, c, _ in runs})
        versions = sorted({str(c.outcomes["models"].get(model, {}).get("autoattack_version")) for _, c, model in runs})
        lines.append(f"| {method} | {len(runs)} ({', '.join(arms)}) | {_median(minutes):.0f} ({min(minutes):.0f}-"
                     f"{max(minutes):.0f}) | {_median(train):.1f} | " + (f"{_median(rest):.0f}" if rest else "n/a") +
                     f" | {', '.join(map(str, points))} | {', '.join(versions)} |")
    lines += ["", f"Each study: CPU minutes spent on its collected runs, and an estimate for the runs left: an arm's "
              f"own mean when it has a measured run, else the median run of its method above; a run with the same "
              f"params as a run another study collected is shared, not rerun, and costs nothing. Hours assume "
              f"{workers} queue workers at 1 thread; the cost rule: a study over about {COST_RULE_HOURS:.0f} h attacks "
              f"500 points instead of 1,000.", "",
              "| study | runs collected | CPU minutes spent | runs left | of which shared from another study | "
              "estimated CPU minutes left | estimated hours in all, on 2 cores | over the cost rule |",
              "|---|---|---|---|---|---|---|---|"]
    for s in studies:
        spent = sum(cpu_minutes(c) or 0 for c in done[s.name].values())
        left = [(a, seed) for a, seed in s.pairs() if (a.name, seed) not in done[s.name]]
        shareable, estimate, unknown = 0, 0.0, set()
        for arm, seed in left:
            if any(p == arm.expected_params(seed) and s2 is not s and not c.run.get("shared_from")
                   for s2, _, _, c, p in runs_params):
                shareable += 1  # `run` copies it from the other study: no CPU time
                continue
            own = [cpu_minutes(c) for (a, _), c in done[s.name].items() if a == arm.name and cpu_minutes(c)]
            method = str(arm.params.get("method"))
            if own:
                estimate += sum(own) / len(own)
            elif method in method_median:
                estimate += method_median[method]
            else:
                unknown.add(method)
        hours = (spent + estimate) / workers / 60
        unknown_text = f" + runs of {', '.join(sorted(unknown))} (none measured yet)" if unknown else ""
        over = "unknown" if unknown and hours <= COST_RULE_HOURS else ("yes" if hours > COST_RULE_HOURS else "no")
        lines.append(f"| {s.name} | {len(done[s.name])} of {len(s.pairs())} | {spent:.0f} | {len(left)} | {shareable} | "
                     f"{estimate:.0f}{unknown_text} | {hours:.1f}{' or more' if unknown else ''} | {over} |")
    return "\n".join(lines)


def all_studies(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / STUDIES_DIR).glob("*.yaml"))


def replace_section(page: str, name: str, text: str) -> str:
    start, end = SECTION_START.format(name=name), SECTION_END.format(name=name)
    if start in page and end in page:
        i, j = page.index(start), page.index(end) + len(end)
        return page[:i] + text + page[j:]
    return page.rstrip("\n") + "\n\n" + text + "\n"


def current_section(page: str, name: str) -> str | None:
    start, end = SECTION_START.format(name=name), SECTION_END.format(name=name)
    if start not in page or end not in page:
        return None
    i, j = page.index(start), page.index(end) + len(end)
    return page[i:j]


def cmd_report(names: list[str], root: Path, check: bool) -> int:
    names = names or all_studies(root)
    head = head_lock_deps(root)
    page_path = root / RESULTS_PAGE
    page = page_path.read_text() if page_path.is_file() else ""
    problems = []
    new_page = page
    for name in names:
        study = load_study(name, root, check_params=False)
        text = section(study, root, head)
        if check:
            have = current_section(page, study.name)
            if have is None:
                problems.append(f"{RESULTS_PAGE}: no section for study `{study.name}` (markers "
                                f"{SECTION_START.format(name=study.name)} ... {SECTION_END.format(name=study.name)})")
            elif have != text:
                problems.append(f"{RESULTS_PAGE}: the `{study.name}` section differs from what "
                                f"results/studies/{study.name}/ gives")
            for c in load_collected(study, root, head).values():
                if c.stale:
                    problems.append(f"{c.folder.relative_to(root)}: stale: {'; '.join(c.stale)}")
        else:
            new_page = replace_section(new_page, study.name, text)
    if check:
        if problems:
            print("study report check failed:\n  - " + "\n  - ".join(problems) +
                  "\nFix: rerun the stale runs (`python tools/study.py run NAME`), then `python tools/study.py report`"
                  " and commit results/studies/ and docs/results.md", file=sys.stderr)
            return 1
        print(f"study reports current: {', '.join(names) or 'no studies'}")
        return 0
    if new_page != page:
        atomic_write_text(page_path, new_page)
        print(f"{RESULTS_PAGE}: wrote {', '.join(names)}")
    else:
        print(f"{RESULTS_PAGE}: {', '.join(names)} unchanged")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="queue, run and collect every (arm, seed) not yet collected")
    p_run.add_argument("name")
    p_run.add_argument("-j", "--jobs", type=int, default=1, help="DVC queue workers (default 1)")
    p_run.add_argument("--threads", type=int, default=1, help="torch threads per run (OMP_NUM_THREADS; default 1)")
    p_run.add_argument("--no-wait", action="store_true", help="queue and start the workers, do not wait to collect")
    p_run.add_argument("--poll", type=float, default=10.0, help="seconds between checks of the queue (default 10)")
    p_run.add_argument("--arms", help="only these arms (comma-separated); the rest waits for a later run")
    p_run.add_argument("--seeds", help="only these seeds (comma-separated)")
    p_run.add_argument("--stall-timeout", type=float, default=STALL_S,
                       help=f"seconds with runs queued and none running before the queue is restarted "
                            f"(default {STALL_S:.0f})")
    p_status = sub.add_parser("status", help="collected / stale / queued / running / failed / missing per run")
    p_status.add_argument("name")
    p_validate = sub.add_parser("validate", help="check study files only (default: all)")
    p_validate.add_argument("names", nargs="*")
    p_report = sub.add_parser("report", help="write the studies' sections of docs/results.md (default: all)")
    p_report.add_argument("names", nargs="*")
    p_report.add_argument("--check", action="store_true",
                          help="fail if a section differs from the collected files or a result is stale")
    sub.add_parser("summary", help="print one markdown row per compared arm of every study (the README's table)")
    sub.add_parser("costs", help="print what one run of each method cost and each study's cost, spent and left "
                                 "(docs/performance.md's table)")
    args = parser.parse_args(argv)
    root = Path.cwd()
    try:
        if args.command == "run":
            if args.jobs < 1 or args.threads < 1:
                raise StudyError("-j/--jobs and --threads must be at least 1")
            try:
                seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
            except ValueError:
                raise StudyError(f"--seeds {args.seeds!r}: give integers, comma-separated (e.g. --seeds 0,1)")
            return cmd_run(load_study(args.name, root), root, args.jobs, args.threads, not args.no_wait, args.poll,
                           args.stall_timeout, args.arms.split(",") if args.arms else None, seeds)
        if args.command == "status":
            return cmd_status(load_study(args.name, root, check_params=False), root)
        if args.command == "summary":
            print(summary(root))
            return 0
        if args.command == "costs":
            print(costs(root))
            return 0
        if args.command == "validate":
            bad = 0
            for name in args.names or all_studies(root):
                try:
                    study = load_study(name, root)
                    print(f"{study.path}: valid ({len(study.arms)} arms, {len(study.pairs())} runs)", flush=True)
                except StudyError as err:
                    print(f"error: {err}", file=sys.stderr, flush=True)
                    bad += 1
            return 2 if bad else 0
        return cmd_report(args.names, root, args.check)
    except ProjectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
