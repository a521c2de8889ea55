"""Atomic writes: a failed or killed write never leaves a partial file under the final name."""
import subprocess
import sys
from pathlib import Path

import pytest

from robustkd.io import atomic_path, atomic_write_bytes

SRC = Path(__file__).resolve().parents[1] / "src"


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"complete old version")
    with pytest.raises(OSError, match="disk on fire"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise OSError("disk on fire")
    assert target.read_bytes() == b"complete old version"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # the temporary file is cleaned up


def test_write_killed_midway_keeps_the_previous_file(tmp_path):
    """SIGKILL inside the block: no cleanup code runs, yet the final name still holds the old file."""
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"complete old version")
    script = (f"import os, signal, sys; sys.path.insert(0, {str(SRC)!r})\n"
              "from robustkd.io import atomic_path\n"
              f"with atomic_path({str(target)!r}) as tmp:\n"
              "    tmp.write_bytes(b'half of the new')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    assert target.read_bytes() == b"complete old version"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out.bin"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".out.bin.") and leftovers[0].endswith(".tmp")
