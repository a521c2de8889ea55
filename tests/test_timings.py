"""tools/timings.py: a measured command's time and pytest summary land in the file, and `show` says exactly that."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import timings  # noqa: E402


def test_a_run_is_recorded_and_shown(tmp_path, capsys):
    out = tmp_path / "timings.json"
    cmd = [sys.executable, "-c", "print('===== 3 passed, 1 skipped in 2.00s =====')"]
    assert timings.main(["run", "--out", str(out), "ci", "--", *cmd]) == 0
    entry = json.loads(out.read_text())["ci"]
    assert entry["exit_status"] == 0 and entry["pytest"] == ["3 passed, 1 skipped in 2.00s"]
    assert 0 <= entry["seconds"] < 60 and entry["command"].endswith("=====')")
    assert timings.main(["run", "--out", str(out), "repro", "--", sys.executable, "-c", "import sys; sys.exit(3)"]) == 3
    capsys.readouterr()
    timings.main(["show", "--file", str(out)])
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].startswith("* `bash .ci/run` in a fresh clone") and "pytest: 3 passed, 1 skipped" in shown[0]
    assert "**exit status 3**" in shown[1]  # a failed run is never shown as a plain time
