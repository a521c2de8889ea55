"""Checkpoints carry a digest of their content and a sha256 of the whole file; a damaged file never loads.

Measured on a real checkpoint (the Papernot CNN, 1.25 MB) with plain ``torch.load`` and 2000 seeded single-byte
flips: 1987 loaded *different* tensors without any error (torch does not check the zip CRCs), 5 loaded identical
content (bytes torch never reads: alignment padding, zip metadata) and only 8 raised. The content digest catches
the first kind, only the whole-file seal catches the second, so both are checked (``robustkd.io.load_sealed``,
``robustkd.models._read_checkpoint``).
"""
import io
import random

import pytest
import torch

from robustkd import io as rio
from robustkd.errors import CheckpointError
from robustkd.models import build_model, load_checkpoint, model_spec, read_info, save_checkpoint

META = {"shape": [1, 28, 28], "num_classes": 10, "mean": [0.3], "std": [0.3]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    spec = model_spec("papernot_cnn", META)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "teacher.pt"
    save_checkpoint(path, build_model(**spec), spec, {"role": "teacher", "fingerprint": "0123456789abcdef"})
    return path, path.read_bytes()


def assert_clean_failure(path, pattern=None):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message  # one line, naming the file
    assert f"dvc checkout {path.as_posix()}" in message and "rerun the stage" in message, message
    err = info.value  # no zipfile / pickle / torch exception chained to it (the stage prints the message alone)
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__), "a raw traceback is chained"
    if pattern:
        assert pattern in message, message
    return message


def test_sealed_checkpoint_loads_and_is_still_a_plain_torch_file(checkpoint):
    path, data = checkpoint
    model, info = load_checkpoint(path)
    assert info["role"] == "teacher"
    plain = torch.load(path, weights_only=True)  # the seal is a zip comment: any zip reader skips it
    assert plain["format"] == "robustkd-checkpoint-v2" and len(plain["digest"]) == 64
    assert data.endswith(rio.unseal(data)[1].encode()) and data[-rio.SEAL_LEN:].startswith(rio.SEAL_PREFIX)


def test_every_single_byte_flip_fails_cleanly(checkpoint, tmp_path):
    """50 seeded positions over the whole file, plus the seal's own bytes (length field, prefix, digest)."""
    _, data = checkpoint
    positions = random.Random(0).sample(range(len(data)), 50)
    positions += [len(data) - rio.SEAL_LEN - 2, len(data) - rio.SEAL_LEN, len(data) - 1]
    path = tmp_path / "damaged.pt"
    for pos in positions:
        damaged = bytearray(data)
        damaged[pos] ^= 0xFF
        path.write_bytes(bytes(damaged))
        assert_clean_failure(path)


def test_a_flip_torch_never_reads_is_caught_by_the_whole_file_seal(checkpoint, tmp_path):
    """Why the seal is needed: some flips load identical content with torch.load (found by search, seeded)."""
    _, data = checkpoint
    raw, _ = rio.unseal(data)
    reference = torch.load(io.BytesIO(raw), weights_only=True)
    path = tmp_path / "padding.pt"
    for pos in random.Random(1).sample(range(len(raw)), 3000):
        damaged = bytearray(raw)
        damaged[pos] ^= 0xFF
        try:
            obj = torch.load(io.BytesIO(bytes(damaged)), weights_only=True)
        except Exception:  # noqa: BLE001
            continue
        if all(torch.equal(obj["state_dict"][k], v) for k, v in reference["state_dict"].items()) \
                and {k: obj[k] for k in ("spec", "info", "digest")} == {k: reference[k] for k in ("spec", "info", "digest")}:
            path.write_bytes(bytes(damaged[:-2]) + data[len(raw) - 2:])
            assert_clean_failure(path, "sha256 differs")
            return
    pytest.fail("no flip with identical content found: the premise of the whole-file seal changed")


def test_truncated_or_unsealed_files_fail_cleanly(checkpoint, tmp_path):
    _, data = checkpoint
    path = tmp_path / "cut.pt"
    for n in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:n])
        assert_clean_failure(path)
    raw, _ = rio.unseal(data)
    path.write_bytes(raw)  # what torch.save wrote, without the seal
    assert_clean_failure(path, "no robustkd checksum")


def test_content_digest_catches_a_rewritten_checkpoint(checkpoint, tmp_path):
    """Re-saved by other code with an edited tensor (and a valid seal): the stored digest no longer matches."""
    path, _ = checkpoint
    ckpt = torch.load(path, weights_only=True)
    name = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][name] = ckpt["state_dict"][name] + 1
    rio.atomic_torch_save_sealed(ckpt, tmp_path / "edited.pt")
    assert_clean_failure(tmp_path / "edited.pt", "do not match the digest")
    ckpt = torch.load(path, weights_only=True)
    ckpt["spec"] = {**ckpt["spec"], "width": "cifar"}
    rio.atomic_torch_save_sealed(ckpt, tmp_path / "respec.pt")
    with pytest.raises(CheckpointError, match="do not match the digest"):
        read_info(tmp_path / "respec.pt")


def test_checkpoint_holds_no_wall_clock_time(checkpoint):
    path, _ = checkpoint
    info = torch.load(path, weights_only=True)["info"]
    assert not [k for k in info if any(w in k for w in ("second", "time", "elapsed"))]
