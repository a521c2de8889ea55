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


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    data: bytes | None = None) -> Any:
    """Load tensors/dicts/lists/primitives only (``weights_only=True``): a pickle payload never runs.

    ``data``: the file's bytes, already read (and checked) by the caller; ``path`` then only names it in errors.
    Whatever goes wrong inside torch.load (zipfile, pickle, storage errors) becomes one CheckpointError line.
    """
    import torch

    path = Path(path)
    if data is None and not path.is_file():
        raise CheckpointError(f"{path}: file not found. Run the stage that writes it (`dvc repro`).")
    try:
        return torch.load(path if data is None else io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers "
            f"(weights_only=True). Do not use checkpoints from untrusted sources; regenerate it with `dvc repro`. "
            f"Detail: {_first_line(err)}"
        ) from None
    except Exception as err:  # noqa: BLE001 - a damaged zip can surface as almost any exception type
        raise CheckpointError(
            f"{path}: corrupted or truncated file ({type(err).__name__}: {_first_line(err)}). {restore_hint(path)}"
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def restore_hint(path: str | os.PathLike) -> str:
    return (f"Restore it with `dvc checkout {Path(path).as_posix()}` or rerun the stage that writes it "
            f"(`dvc repro -f <stage>`).")


# --- sealed files: a sha256 of the whole file, kept in the zip's end-of-central-directory comment -------------------
#
# Why a whole-file digest (tested by tests/test_checkpoint_integrity.py, which flips one byte at 50 seeded positions of
# a real checkpoint, one at a time): torch.save writes a zip archive, and much of it is bytes torch.load never reads
# or does not check (local-header padding to 64-byte alignment, file times, the zip64 records, part of the central
# directory). A flip there loads the identical content, so a digest of the tensors alone cannot make every damaged
# file fail; a digest of the file's bytes does. It lives in the archive comment (the last bytes of the file, after
# the 22-byte end-of-central-directory record whose last field is the comment's length): zip readers, torch.load
# (miniz) included, skip the comment, so a sealed file is still a plain torch file. The digest covers the file as
# torch.save wrote it (comment length 0, no comment), so the seal can be checked without trusting anything after it.
SEAL_PREFIX = b"robustkd-sha256:"
SEAL_LEN = len(SEAL_PREFIX) + 64
_EOCD_SIG = b"PK\x05\x06"
_EOCD_LEN = 22


def seal(raw: bytes) -> bytes:
    """torch.save's bytes -> the same archive with ``robustkd-sha256:<hex of raw>`` as its zip comment."""
    eocd = raw[-_EOCD_LEN:]
    if len(raw) < _EOCD_LEN or eocd[:4] != _EOCD_SIG or eocd[-2:] != b"\x00\x00":
        raise ValueError("not a zip archive ending with an empty comment (torch.save's format)")
    comment = SEAL_PREFIX + hashlib.sha256(raw).hexdigest().encode("ascii")
    return raw[:-2] + len(comment).to_bytes(2, "little") + comment


def unseal(data: bytes) -> tuple[bytes, str] | None:
    """(the bytes torch.save wrote, the recorded sha256) of a sealed file; None if ``data`` carries no seal."""
    if len(data) < SEAL_LEN + _EOCD_LEN:
        return None
    comment, eocd = data[-SEAL_LEN:], data[-SEAL_LEN - _EOCD_LEN:-SEAL_LEN]
    if (not comment.startswith(SEAL_PREFIX) or eocd[:4] != _EOCD_SIG
            or int.from_bytes(eocd[-2:], "little") != SEAL_LEN):
        return None
    try:
        recorded = comment[len(SEAL_PREFIX):].decode("ascii")
    except UnicodeDecodeError:
        return None
    return data[:-SEAL_LEN - 2] + b"\x00\x00", recorded


def atomic_torch_save_sealed(obj: Any, path: str | os.PathLike) -> None:
    """:func:`atomic_torch_save` plus the whole-file sha256 seal that :func:`load_sealed` checks."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = seal(buffer.getvalue())
    ensure_free_space(path, len(data))
    atomic_write_bytes(path, data)


def load_sealed(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a file written by :func:`atomic_torch_save_sealed`, after checking its whole-file sha256.

    Any damage (a flipped byte anywhere, truncation, a missing or altered seal) is a one-line CheckpointError that
    names the file and the fix. A file without a seal is refused too, after a weights_only load (so a pickle payload
    gets the "refused to load" message and never runs).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found. Run the stage that writes it (`dvc repro`).")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({_first_line(err)}). {restore_hint(path)}") from None
    sealed = unseal(data)
    if sealed is None:
        safe_torch_load(path, map_location, data=data)  # raises for damaged or unsafe content
        raise CheckpointError(
            f"{path}: no robustkd checksum at the end of the file (damaged there, truncated, or written by another "
            f"tool or an older version of this project). {restore_hint(path)}")
    raw, recorded = sealed
    if hashlib.sha256(raw).hexdigest() != recorded:
        raise CheckpointError(
            f"{path}: damaged: its sha256 differs from the one recorded when it was written. {restore_hint(path)}")
    return safe_torch_load(path, map_location, data=raw)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
