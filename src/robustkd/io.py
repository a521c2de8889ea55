"""Atomic writes and safe loads: a half-written file is never taken for a complete one.

torch is imported only by the functions that need it, so a stage that writes a small JSON marker (e.g. an
unused DARHT teacher slot) starts in a fraction of a second.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .errors import CheckpointError, ResourceError

# Free space kept in reserve beyond a write's own size: a full disk breaks DVC's cache, git and the OS too.
DISK_MARGIN_BYTES = 64 << 20

if TYPE_CHECKING:
    import torch


def _size(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


def ensure_free_space(path: str | os.PathLike, needed_bytes: int, margin_bytes: int | None = None) -> None:
    """Raise ResourceError, before anything is written, if the disk of ``path`` lacks ``needed_bytes`` + a margin.

    The margin (default: DISK_MARGIN_BYTES plus 5% of the size) leaves room for the temporary file's
    metadata, DVC's cache bookkeeping and everything else on the disk. ``path`` need not exist yet.
    """
    path = Path(path)
    probe = path
    while not probe.exists():  # terminates: "." or "/" exist
        probe = probe.parent
    margin = DISK_MARGIN_BYTES + needed_bytes // 20 if margin_bytes is None else margin_bytes
    free = shutil.disk_usage(probe).free
    if free < needed_bytes + margin:
        raise ResourceError(
            f"{path}: not enough free disk space: writing it needs about {_size(needed_bytes)} plus a "
            f"{_size(margin)} safety margin, but the disk holding {probe.resolve()} has only {_size(free)} free. "
            f"Nothing was written. Free some space (e.g. `dvc gc --workspace` drops cached versions the workspace "
            f"no longer uses; `dvc exp remove` drops old experiments) or move the repository / DVC cache "
            f"(`dvc cache dir`) to a larger disk, then rerun `dvc repro` (training resumes from its last epoch).")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600 files; give outputs the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    # sort_keys + fixed indent: identical inputs give byte-identical files.
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    # Saving through a buffer keeps the bytes independent of the (random) temporary file name,
    # which torch.save would otherwise record inside the archive: same object -> same file.
    # The size is known exactly once serialised: check the disk before the temporary file is created.
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    ensure_free_space(path, buffer.getbuffer().nbytes)
    atomic_write_bytes(path, buffer.getvalue())


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load tensors/dicts/lists/primitives only (``weights_only=True``): a pickle payload never runs."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found. Run the stage that writes it (`dvc repro`).")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers "
            f"(weights_only=True). Do not use checkpoints from untrusted sources; regenerate it with `dvc repro`. "
            f"Detail: {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: corrupted or truncated checkpoint ({type(err).__name__}: {str(err).splitlines()[0]}). "
            f"Delete it and regenerate with `dvc repro`."
        ) from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
