"""Fixed-point encoding and additive secret sharing over Z_2^64.

The wire contract (docs/architecture.md, ``ppml/v1/common.proto``):

* ring elements are signed int64 with two's-complement wrap-around;
* ``encode(v) = round(v * 2**FRACTIONAL_BITS)``, ``decode(e) = e / 2**FRACTIONAL_BITS``;
* ``share(e, n)`` returns ``s_0..s_{n-1}`` with ``sum(s_i) == e (mod 2**64)``,
  each ``s_i`` for ``i >= 1`` uniform over the whole int64 range, drawn from
  the operating system's CSPRNG (``secrets``), never from numpy's or torch's
  generators.

All functions are pure apart from the CSPRNG draw and never modify inputs.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

FRACTIONAL_BITS = 16
SCALE = float(1 << FRACTIONAL_BITS)
# |v| must stay below this so that encode(v) fits in int64 with headroom for
# CrypTen's own arithmetic (it multiplies two encodings before truncating).
MAX_ABS_VALUE = float(1 << 30)

Ring = npt.NDArray[np.int64]


def encode(values: npt.ArrayLike) -> Ring:
    """Fixed-point encode floats; invariant: ``|decode(encode(v)) - v| <= 2**-17``.

    Raises ValueError for NaN, infinities or values of magnitude >= 2**30.
    """
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError("cannot encode NaN or infinite values")
    if array.size and float(np.max(np.abs(array))) >= MAX_ABS_VALUE:
        raise ValueError(f"values must have magnitude below {MAX_ABS_VALUE:g}")
    return np.rint(array * SCALE).astype(np.int64)


def decode(ring: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Inverse of :func:`encode` (interprets int64 as signed fixed point)."""
    return np.asarray(ring, dtype=np.int64).astype(np.float64) / SCALE


def random_ring(shape: tuple[int, ...]) -> Ring:
    """Uniform int64 tensor from the OS CSPRNG."""
    count = int(np.prod(shape, dtype=np.int64))
    raw = secrets.token_bytes(8 * count)
    return np.frombuffer(raw, dtype="<i8").astype(np.int64).reshape(shape)


def share(secret: Ring, parties: int) -> list[Ring]:
    """Split ``secret`` into ``parties`` additive shares; invariant:
    ``reconstruct(share(x, n)) == x`` for every int64 tensor ``x`` and ``n >= 2``.
    """
    if parties < 2:
        raise ValueError("secret sharing needs at least 2 parties")
    secret = np.asarray(secret, dtype=np.int64)
    masks = random_ring((parties - 1, *secret.shape))  # one CSPRNG draw for every mask
    first = secret.copy()
    with np.errstate(over="ignore"):
        first -= masks.sum(axis=0, dtype=np.int64)  # integer sums wrap mod 2**64
    return [first, *masks]


def share_named(values: Mapping[str, npt.ArrayLike], parties: int) -> list[dict[str, Ring]]:
    """Encode and share every named tensor; element i holds party i's shares."""
    out: list[dict[str, Ring]] = [{} for _ in range(parties)]
    for name, value in values.items():
        for rank, part in enumerate(share(encode(value), parties)):
            out[rank][name] = part
    return out


def reconstruct(shares: list[Ring]) -> Ring:
    """Sum shares modulo 2**64."""
    if not shares:
        raise ValueError("no shares to reconstruct")
    total = np.zeros(np.asarray(shares[0]).shape, dtype=np.int64)
    with np.errstate(over="ignore"):
        for part in shares:
            total += np.asarray(part, dtype=np.int64)
    return total
