"""Paired comparison of two runs on the same points: did robustness (or clean accuracy) change?

    python tools/compare.py main workspace                 # the committed run on main vs the working tree
    python tools/compare.py main my-exp                     # vs a DVC experiment (`dvc exp run -n my-exp ...`)
    python tools/compare.py temp-20 temp-50 --model student # two branches (or tags, or commits)
    python tools/compare.py HEAD results/studies/chain/t50/seed-0   # vs a folder holding an outcomes.json

A and B are each: `.` or `workspace` (the working tree's results/outcomes.json); a folder that holds an
outcomes.json (e.g. a collected study run); a git branch, tag or commit; or a DVC experiment's name (matched against
`git for-each-ref refs/exps`). A commit's or an experiment's file is read with `git show REV:results/outcomes.json`,
so no DVC cache is needed: the metrics stage keeps the per-point outcomes in git.

For every model in both (or only --model), at the headline ε: the clean accuracy over the test set and the
worst-case robust accuracy over the attacked points, of A and of B; the difference B - A with its 95% interval for
paired proportions (Newcombe 1998, method 10: the hybrid score interval); the discordant counts (points right for
A only, for B only) and the exact McNemar p-value (two-sided binomial test of the discordant counts). The last line
of the output is one JSON object with the same numbers.

Refused, with the reason: two runs that attacked different points (compared by the sha256 of the sorted indices,
with how many points differ), used a different headline ε, or ran on a different test split; a side with no
outcomes file (results from before the per-point outcomes were recorded: rerun `dvc repro`).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # `python tools/compare.py` imports robustkd

from robustkd.errors import ProjectError  # noqa: E402
from robustkd.outcomes import OUTCOMES_PATH, Outcomes, OutcomesError, read_outcomes  # noqa: E402
from robustkd.stats import paired_difference  # noqa: E402

WORKSPACE = (".", "workspace")
RERUN = ("results from before the per-point outcomes were recorded lack it: check that revision out and rerun "
         "`dvc repro` (or `dvc exp run`), then commit")


class CompareError(ProjectError):
    """The two sides cannot be compared (or one cannot be read); the message says why."""


@dataclass
class Side:
    spec: str           # as given on the command line
    kind: str           # workspace | folder | git | experiment
    rev: str | None     # the commit, for git and experiment sides
    source: str         # where the file was read, in words
    outcomes: Outcomes

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "rev": self.rev, "source": self.source}


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True)


def _repo_root() -> Path:
    out = _git("rev-parse", "--show-toplevel")
    return Path(out.stdout.strip()) if out.returncode == 0 else Path.cwd()


def _commit(spec: str) -> str | None:
    out = _git("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}")
    return out.stdout.strip() if out.returncode == 0 else None


def _experiments(name: str) -> list[tuple[str, str]]:
    """(ref, commit) of every DVC experiment ref whose last path component is ``name``."""
    out = _git("for-each-ref", "--format=%(refname) %(objectname)", "refs/exps")
    if out.returncode != 0:
        return []
    refs = [line.split() for line in out.stdout.splitlines() if line.strip()]
    return [(ref, sha) for ref, sha in refs if ref.rsplit("/", 1)[-1] == name]


def _from_file(path: Path, spec: str, kind: str) -> Side:
    if not path.is_file():
        where = "the working tree" if kind == "workspace" else f"folder {spec}"
        raise CompareError(f"{spec}: {where} has no {path}; {RERUN}.")
    return Side(spec, kind, None, str(path), read_outcomes(path.read_text(), str(path)))


def _from_git(spec: str, rev: str, kind: str) -> Side:
    out = _git("show", f"{rev}:{OUTCOMES_PATH}")
    label = f"{spec} ({rev[:9]})"
    if out.returncode != 0:
        raise CompareError(f"{label}: no {OUTCOMES_PATH} in that commit; {RERUN}.")
    return Side(spec, kind, rev, f"{rev[:9]}:{OUTCOMES_PATH}", read_outcomes(out.stdout, f"{label}:{OUTCOMES_PATH}"))


def resolve(spec: str) -> Side:
    """One side: the workspace, a folder with an outcomes.json, a git revision, or a DVC experiment's name."""
    if spec in WORKSPACE:
        return _from_file(_repo_root() / OUTCOMES_PATH, spec, "workspace")
    path = Path(spec)
    if path.is_dir():
        return _from_file(path / "outcomes.json", spec, "folder")
    if path.is_file() and path.suffix == ".json":
        return _from_file(path, spec, "folder")
    commit = _commit(spec)
    if commit:
        return _from_git(spec, commit, "git")
    found = _experiments(spec)
    if len(found) == 1:
        return _from_git(spec, found[0][1], "experiment")
    if len(found) > 1:
        raise CompareError(f"{spec}: {len(found)} DVC experiments have that name ({', '.join(r for r, _ in found)}); "
                           f"give the commit of the one you mean")
    raise CompareError(f"{spec}: not `.`/`workspace`, a folder, a git branch/tag/commit or a DVC experiment name "
                       f"(`dvc exp list` lists the experiments, `git branch -a` the branches)")


def check_comparable(a: Side, b: Side) -> list[str]:
    """Refuses (CompareError) what cannot be paired; returns notes on what differs but does not stop a comparison."""
    oa, ob = a.outcomes, b.outcomes
    if (oa.dataset, oa.n_test, oa.test_sha256) != (ob.dataset, ob.n_test, ob.test_sha256):
        raise CompareError(
            f"the test splits differ: {a.spec} ran on {oa.dataset} ({oa.n_test} test points, sha256 "
            f"{str(oa.test_sha256)[:12]}), {b.spec} on {ob.dataset} ({ob.n_test}, sha256 {str(ob.test_sha256)[:12]}); "
            f"a paired comparison needs the same test points")
    if oa.headline_eps != ob.headline_eps:
        raise CompareError(f"the ε differ: {a.spec} reports its worst case at headline ε={oa.headline_eps:g}, "
                           f"{b.spec} at ε={ob.headline_eps:g}; rerun one with the other's `attack.headline_eps`")
    if oa.attack_points_sha256 != ob.attack_points_sha256:
        pa, pb = set(oa.attack_points.tolist()), set(ob.attack_points.tolist())
        raise CompareError(
            f"the attacked points differ: {a.spec} attacked {len(pa)} points (sha256 {oa.attack_points_sha256[:12]}), "
            f"{b.spec} {len(pb)} (sha256 {ob.attack_points_sha256[:12]}); {len(pa - pb)} of {a.spec}'s are not "
            f"among {b.spec}'s and {len(pb - pa)} of {b.spec}'s not among {a.spec}'s. A paired test needs the same "
            f"points: rerun one with the other's `attack.n_points` and `attack.seed`")
    notes = []
    if oa.eps != ob.eps:
        notes.append(f"note: the ε lists differ ({oa.eps} vs {ob.eps}); only the headline ε={oa.headline_eps:g} "
                     f"is compared")
    return notes


def compare(a: Side, b: Side, model: str | None = None) -> dict:
    """The JSON result: per model, the paired clean and worst-case differences (robustkd.stats.paired_difference)."""
    notes = check_comparable(a, b)
    oa, ob = a.outcomes, b.outcomes
    common = [m for m in oa.models if m in ob.models]
    if model is not None:
        if model not in common:
            raise CompareError(f"--model {model}: not in both ({a.spec}: {', '.join(oa.models) or 'none'}; "
                               f"{b.spec}: {', '.join(ob.models) or 'none'})")
        common = [model]
    elif not common:
        raise CompareError(f"no model in both: {a.spec} has {', '.join(oa.models)}, {b.spec} has "
                           f"{', '.join(ob.models)}")
    only = sorted(set(oa.models) ^ set(ob.models))
    if model is None and only:
        notes.append(f"note: only in one side, not compared: {', '.join(only)}")
    key = oa.headline_key
    models = {}
    for name in common:
        ma, mb = oa.models[name], ob.models[name]
        if key not in ma.worst_case or key not in mb.worst_case:
            raise CompareError(f"{name}: no worst case at the headline ε={oa.headline_eps:g} in "
                               f"{a.spec if key not in ma.worst_case else b.spec}")
        if ma.autoattack_version != mb.autoattack_version:
            notes.append(f"note: {name}: AutoAttack differs ({a.spec}: {ma.autoattack_version}, {b.spec}: "
                         f"{mb.autoattack_version}); the worst cases come from different attack suites")
        models[name] = {"clean": paired_difference(ma.clean_correct, mb.clean_correct),
                        "worst_case": paired_difference(ma.worst_case[key], mb.worst_case[key])}
    return {"a": a.describe(), "b": b.describe(), "headline_eps": oa.headline_eps, "n_test": oa.n_test,
            "n_attacked": int(len(oa.attack_points)), "attack_points_sha256": oa.attack_points_sha256,
            "method": "paired difference B - A: Newcombe 1998 method 10 (95%), exact McNemar p",
            "notes": notes, "models": models}


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _pts(v: float) -> str:
    return f"{100 * v:+.2f}"


def render(result: dict) -> str:
    a, b = result["a"]["spec"], result["b"]["spec"]
    lines = [f"A = {a} ({result['a']['source']}), B = {b} ({result['b']['source']})",
             f"Paired differences B - A in percentage points, 95% interval (Newcombe 1998, method 10), discordant "
             f"points and exact McNemar p; worst case at ε={result['headline_eps']:g} over the same "
             f"{result['n_attacked']} attacked points, clean over the {result['n_test']} test points.", ""]
    header = ("model", "measure", "A", "B", "B - A (points)", "95% interval", "A only", "B only", "McNemar p")
    rows = [header]
    for name, m in result["models"].items():
        for label, r in (("clean", m["clean"]), ("worst case", m["worst_case"])):
            rows.append((name, label, _pct(r["a_acc"]), _pct(r["b_acc"]), _pts(r["diff"]),
                         f"[{_pts(r['ci_low'])}, {_pts(r['ci_high'])}]", str(r["a_only"]), str(r["b_only"]),
                         f"{r['p_value']:.4g}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines += result["notes"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/compare.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", metavar="A", help="the baseline: `.`/`workspace`, a folder with an outcomes.json, "
                                               "a git branch/tag/commit, or a DVC experiment name")
    parser.add_argument("b", metavar="B", help="the other run, in the same forms; differences are B - A")
    parser.add_argument("--model", help="compare only this model (default: every model in both)")
    args = parser.parse_args(argv)
    try:
        result = compare(resolve(args.a), resolve(args.b), args.model)
    except (ProjectError, OutcomesError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(render(result))
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
