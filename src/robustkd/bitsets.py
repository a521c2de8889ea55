"""Per-point outcomes as compact text: one bit a point, numpy.packbits(bitorder="little"), then base64 (the standard
alphabet). Torch-free, and small on purpose: the predict stage writes its per-point correctness with it, and the
outcomes file (robustkd.outcomes) holds every bitset in this form."""
from __future__ import annotations

import base64
import binascii

import numpy as np

from .errors import ProjectError


class BitsetError(ProjectError):
    """A bitset's text is not base64, or does not hold the expected number of points."""


def encode_bits(values) -> str:
    """A bool (or 0/1) sequence as base64 text: numpy.packbits(bitorder="little"), standard alphabet."""
    bits = np.asarray(values, dtype=bool).ravel()
    return base64.b64encode(np.packbits(bits, bitorder="little").tobytes()).decode("ascii")


def decode_bits(text: str, n: int) -> np.ndarray:
    """The ``n`` bits of :func:`encode_bits`' text as a bool array; the text must hold exactly ceil(n/8) bytes and
    nothing but zero padding after bit n."""
    try:
        raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.uint8)
    except (binascii.Error, ValueError, UnicodeEncodeError, AttributeError) as err:
        raise BitsetError(f"not a base64 bitset ({err})") from None
    if len(raw) != (n + 7) // 8:
        raise BitsetError(f"a bitset of {len(raw)} bytes cannot hold {n} points ({(n + 7) // 8} bytes expected)")
    bits = np.unpackbits(raw, bitorder="little").astype(bool)
    if bits[n:].any():
        raise BitsetError(f"a bitset over {n} points has bits set past point {n}")
    return bits[:n]
