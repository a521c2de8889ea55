"""Per-point outcomes (robustkd.outcomes), the paired statistics (robustkd.stats) and tools/compare.py."""
import re

import numpy as np
import pytest
import scipy.stats

from robustkd.bitsets import BitsetError, decode_bits, encode_bits
from robustkd.stats import mcnemar_exact, mean_interval, newcombe_paired_interval, paired_difference, t_ppf


# --- bitsets -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 400, 1000, 10000])
def test_bits_round_trip(n):
    values = np.random.default_rng(n).random(n) < 0.3
    text = encode_bits(values)
    assert len(text) == 4 * -(-((n + 7) // 8) // 3)  # base64 of ceil(n/8) bytes
    assert decode_bits(text, n).tolist() == values.tolist()


def test_bits_layout_is_little_endian_packbits_in_base64():
    # points 0 and 9 set over 10 points: bytes 0b00000001, 0b00000010 -> base64 "AQI="
    assert encode_bits([1, 0, 0, 0, 0, 0, 0, 0, 0, 1]) == "AQI="
    assert decode_bits("AQI=", 10).tolist() == [True] + [False] * 8 + [True]


@pytest.mark.parametrize("text,n", [("AQI=", 17), ("AQI=", 8), ("AQI=", 9), ("not base64!", 8)])
def test_bits_of_the_wrong_size_or_alphabet_are_refused(text, n):
    with pytest.raises(BitsetError):
        decode_bits(text, n)


# --- McNemar -------------------------------------------------------------------------------------------------------

def test_mcnemar_exact_known_values():
    assert mcnemar_exact(0, 5) == 0.0625          # 2 · (1/2)^5
    assert mcnemar_exact(5, 0) == 0.0625          # symmetric
    assert mcnemar_exact(4, 4) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)   # 2 · (C(10,0) + C(10,1)) / 2^10
    for a, b in ((3, 12), (40, 61), (250, 310)):  # the binomial test of the discordant counts
        assert mcnemar_exact(a, b) == pytest.approx(scipy.stats.binomtest(a, a + b, 0.5).pvalue, rel=1e-9)
    assert mcnemar_exact(0, 3000) == 0.0 and 0 < mcnemar_exact(1000, 2000) < 1e-70  # exact integers: no overflow
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


# --- Newcombe's paired interval ------------------------------------------------------------------------------------
# Newcombe RG (1998), "Improved confidence intervals for the difference between binomial proportions based on paired
# data", Stat Med 17:2635-2650: method 10 (the hybrid score interval) on the paper's worked examples, cells
# (e, f, g, h) = (both right, first only, second only, neither), difference (f - g)/n, z = 1.96, to 4 decimals.
# The values are the method-10 rows of the paper's Table III as transcribed in a public test suite (the paper itself
# was not at hand); 17 of its 18 rows are reproduced here exactly. The (1, 97, 1, 1) row (0.8736) is left out: the
# formula gives 0.87367, i.e. 0.8737 (a rounding or transcription slip in one digit).
NEWCOMBE_METHOD_10 = {
    (36, 12, 2, 0): (0.0569, 0.3404), (20, 12, 2, 16): (0.0562, 0.3292), (18, 12, 2, 18): (0.0562, 0.3290),
    (36, 14, 0, 0): (0.1528, 0.4167), (35, 14, 0, 1): (0.1461, 0.4175), (18, 14, 0, 18): (0.1441, 0.3963),
    (2, 97, 1, 0): (0.8721, 0.9854), (0, 29, 1, 0): (0.6666, 0.9882), (2, 98, 0, 0): (0.9178, 0.9945),
    (1, 98, 0, 1): (0.9171, 0.9916), (0, 30, 0, 0): (0.8395, 1.0), (54, 0, 0, 0): (-0.0664, 0.0664),
    (53, 0, 0, 1): (-0.0729, 0.0729), (30, 0, 0, 24): (-0.0358, 0.0358), (29, 0, 0, 25): (-0.0354, 0.0354),
    (28, 0, 0, 26): (-0.0352, 0.0352), (27, 0, 0, 27): (-0.0351, 0.0351),
}


@pytest.mark.parametrize("cells,published", sorted(NEWCOMBE_METHOD_10.items()))
def test_newcombe_method_10_matches_the_paper(cells, published):
    e, f, g, h = cells  # our difference is b - a: the paper's "first only" is our b_only
    low, high = newcombe_paired_interval(both=e, a_only=g, b_only=f, neither=h, z=1.96)
    assert (round(low, 4), round(high, 4)) == published


def test_paired_difference_on_a_hand_example():
    # 36 both right, 2 right for a only, 12 for b only: the paper's first example with a, b swapped
    a = [1] * 36 + [1] * 2 + [0] * 12
    b = [1] * 36 + [0] * 2 + [1] * 12
    r = paired_difference(a, b)
    assert (r["n"], r["a_only"], r["b_only"]) == (50, 2, 12)
    assert (r["a_acc"], r["b_acc"], r["diff"]) == (0.76, 0.96, 0.2)
    assert r["ci_low"] < r["diff"] < r["ci_high"]
    assert (r["ci_low"], r["ci_high"]) == (0.0569, 0.3404)  # z = 1.959964 and 1.96 agree at 4 digits here
    assert r["p_value"] == 0.01294  # 2 · (C(14,0) + C(14,1) + C(14,2)) / 2^14 = 0.012939
    swapped = paired_difference(b, a)
    assert (swapped["diff"], swapped["ci_low"], swapped["ci_high"]) == (-0.2, -0.3404, -0.0569)
    assert swapped["p_value"] == r["p_value"]


def test_paired_difference_is_narrower_than_unpaired_when_outcomes_agree():
    a = [1] * 600 + [0] * 400
    b = [1] * 590 + [0] * 10 + [1] * 30 + [0] * 370  # 10 lost, 30 gained, the rest shared
    r = paired_difference(a, b)
    assert r["diff"] == 0.02 and r["ci_low"] < 0.02 < r["ci_high"]
    assert r["ci_high"] - r["ci_low"] < 0.035  # unpaired (Newcombe's method 10 for independent samples): ~0.086
    with pytest.raises(ValueError, match="same points"):
        paired_difference(a, b[:-1])


# --- over seeds ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 29, 120])
def test_t_quantile(df):
    assert t_ppf(0.975, df) == pytest.approx(scipy.stats.t.ppf(0.975, df), rel=1e-9)


def test_mean_interval():
    assert mean_interval([0.5]) == (0.5, None, None, None)
    mean, std, low, high = mean_interval([0.5, 0.6, 0.7])
    assert (mean, std) == (0.6, 0.1)
    half = 4.302653 * 0.1 / 3 ** 0.5  # t(0.975, 2) · s / sqrt(n)
    assert (low, high) == (round(0.6 - half, 4), round(0.6 + half, 4))
    with pytest.raises(ValueError):
        mean_interval([])


# --- tools/compare.py ----------------------------------------------------------------------------------------------

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from robustkd.outcomes import SCHEMA, points_sha256, read_outcomes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_TEST = 200


def outcomes_file(worst: list[int], clean: list[int] | None = None, points=range(0, N_TEST, 4), eps=0.1,
                  test_sha256="t" * 64, model="student") -> dict:
    """A hand-made outcomes file: ``worst`` per attacked point (ascending index order), ``clean`` per test point."""
    points = list(points)
    assert len(worst) == len(points)
    mask = np.zeros(N_TEST, dtype=bool)
    mask[points] = True
    clean = clean if clean is not None else [1] * N_TEST
    key = "eps_" + f"{eps:g}".replace(".", "p")
    return {"schema": SCHEMA, "dataset": "fashion_mnist", "n_test": N_TEST, "test_sha256": test_sha256,
            "eps": [eps], "headline_eps": eps,
            "attack_points": {"n": len(points), "sha256": points_sha256(points), "bits": encode_bits(mask)},
            "models": {model: {"clean_correct": encode_bits(clean), "worst_case": {key: encode_bits(worst)},
                               "robust": {"pgd_margin": {key: encode_bits(worst)}}, "autoattack_version": "standard"}}}


def compare_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "compare.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def repo(tmp_path):
    """A git repository (no DVC) with two commits of results/outcomes.json, tagged base and changed, and a DVC-style
    experiment ref (refs/exps/..../my-exp) pointing at the second."""
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, text=True)  # noqa: E731
    git("init", "-q")
    git("config", "user.email", "t@t.invalid")
    git("config", "user.name", "t")
    (tmp_path / "results").mkdir()
    path = tmp_path / "results" / "outcomes.json"
    # 50 attacked points: A robust on the first 20; B keeps 18 of them and gains 10 more (10 B only, 2 A only).
    worst_a = [1] * 20 + [0] * 30
    worst_b = [1] * 18 + [0] * 2 + [1] * 10 + [0] * 20
    clean_a = [1] * 180 + [0] * 20
    clean_b = [1] * 175 + [0] * 5 + [1] * 2 + [0] * 18
    path.write_text(json.dumps(outcomes_file(worst_a, clean_a)))
    git("add", "-A")
    git("commit", "-qm", "base")
    git("tag", "base")
    path.write_text(json.dumps(outcomes_file(worst_b, clean_b)))
    git("commit", "-qam", "changed")
    git("tag", "changed")
    sha = git("rev-parse", "HEAD").stdout.strip()
    git("update-ref", "refs/exps/ab/cdef0123/my-exp", sha)
    git("reset", "-q", "--hard", "base")  # the workspace holds the base run again
    return tmp_path, worst_a, worst_b, clean_a, clean_b


def test_compare_two_commits_from_git_alone(repo):
    path, worst_a, worst_b, clean_a, clean_b = repo
    out = compare_cli(path, "base", "changed")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[-1])  # the last line is the JSON
    worst = result["models"]["student"]["worst_case"]
    assert worst == paired_difference(worst_a, worst_b)
    assert (worst["a_only"], worst["b_only"], worst["a_acc"], worst["b_acc"], worst["diff"]) == (2, 10, 0.4, 0.56, 0.16)
    assert worst["p_value"] == float(f"{mcnemar_exact(2, 10):.4g}") == 0.03857
    assert worst["ci_low"] < 0.16 < worst["ci_high"]
    clean = result["models"]["student"]["clean"]
    assert clean == paired_difference(clean_a, clean_b) and (clean["a_only"], clean["b_only"]) == (5, 2)
    assert result["n_attacked"] == 50 and result["headline_eps"] == 0.1 and result["a"]["kind"] == "git"
    table = "\n".join(lines[:-1])
    assert re.search(r"student  worst case  40.00%  56.00%  \+16.00 +\[", table)
    assert f"[{100 * worst['ci_low']:+.2f}, {100 * worst['ci_high']:+.2f}]" in table and "0.03857" in table


def test_compare_an_experiment_the_workspace_and_a_folder(repo, tmp_path_factory):
    path, worst_a, worst_b, *_ = repo
    out = compare_cli(path, "workspace", "my-exp", "--model", "student")  # the workspace holds the base run
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["b"]["kind"] == "experiment" and result["models"]["student"]["worst_case"]["diff"] == 0.16
    folder = tmp_path_factory.mktemp("study") / "seed-0"
    folder.mkdir()
    (folder / "outcomes.json").write_text(json.dumps(outcomes_file(worst_b)))
    out = compare_cli(path, "base", str(folder))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["models"]["student"]["worst_case"]["b_only"] == 10


def test_compare_refuses_different_points_eps_and_splits(repo, tmp_path_factory):
    path, worst_a, *_ = repo
    other = tmp_path_factory.mktemp("other")
    cases = {
        "points": (outcomes_file(worst_a, points=[*range(0, 180, 4), *range(181, 200, 4)]),
                   r"the attacked points differ: base attacked 50 points .* 5 of base's are not among .*'s and 5 of"),
        "eps": (outcomes_file(worst_a, eps=0.3), r"the ε differ: base reports its worst case at headline ε=0\.1, .* ε=0\.3"),
        "split": (outcomes_file(worst_a, test_sha256="u" * 64), r"the test splits differ"),
    }
    for name, (data, message) in cases.items():
        folder = other / name
        folder.mkdir()
        (folder / "outcomes.json").write_text(json.dumps(data))
        out = compare_cli(path, "base", str(folder))
        assert out.returncode == 2 and out.stdout == "", (name, out.stdout)
        assert re.search(message, out.stderr), (name, out.stderr)


def test_compare_says_which_side_has_no_outcomes(repo):
    path, *_ = repo
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "empty"], cwd=path, check=True)
    subprocess.run(["git", "rm", "-q", "results/outcomes.json"], cwd=path, check=True)
    subprocess.run(["git", "commit", "-qm", "old run"], cwd=path, check=True)
    out = compare_cli(path, "HEAD", "base")
    assert out.returncode == 2
    assert re.search(r"HEAD \([0-9a-f]{9}\): no results/outcomes\.json in that commit; results from before", out.stderr)
    assert "rerun `dvc repro`" in out.stderr
    out = compare_cli(path, "no-such-thing", "base")
    assert out.returncode == 2 and "not `.`/`workspace`, a folder, a git branch/tag/commit or a DVC experiment" in out.stderr
    out = compare_cli(path, "base", "changed", "--model", "teacher")
    assert out.returncode == 2 and "--model teacher: not in both" in out.stderr


def test_compare_help_names_every_form_and_the_statistics():
    out = compare_cli(ROOT, "--help")
    assert out.returncode == 0
    for words in ("workspace", "folder", "branch", "experiment", "Newcombe", "McNemar", "git show", "last line"):
        assert words in out.stdout, words


def test_read_outcomes_refuses_another_schema_and_a_broken_bitset():
    data = outcomes_file([1] * 50)
    assert read_outcomes(json.dumps(data)).models["student"].worst_case["eps_0p1"].all()
    with pytest.raises(Exception, match=r"schema None, expected 'robustkd-outcomes/1'"):
        read_outcomes({**data, "schema": None}, "x.json")
    data["attack_points"]["sha256"] = "0" * 64
    with pytest.raises(Exception, match=r"x\.json: attack_points: the bitset does not match its n / sha256"):
        read_outcomes(data, "x.json")
