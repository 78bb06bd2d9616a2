"""What the dealer sends the parties: per-model setup and per-forward bundles, as numpy arrays.

Serialised as a flat container of named arrays (:func:`arrays_to_bytes`):
only integer dtypes, no pickles, so a party loads what it receives without
executing code; reading makes read-only views into the received bytes (no
copy, no parse beyond a small header per array), which matters because a
batch-64 bundle is about 18 MB. Sizes: see gates.py and dcf.py.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppml.servers.mpc.fast.beaver import Triple
from ppml.servers.mpc.fast.gates import GateKey
from ppml.servers.mpc.fast.prg import Ring

MAGIC = b"PPMLFB01"
_DTYPES: dict[bytes, np.dtype[Any]] = {
    b"i": np.dtype("<i8"),
    b"u": np.dtype("<u8"),
    b"w": np.dtype("<u4"),
    b"h": np.dtype("<u2"),
    b"b": np.dtype("u1"),
}
_CODES = {dt: code for code, dt in _DTYPES.items()}
_HEAD = struct.Struct("<HcB")  # name length, dtype code, ndim
_DIM = struct.Struct("<Q")
MAX_ARRAYS = 4096
MAX_NDIM = 8


def arrays_to_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``MAGIC | u32 count | per array: name, dtype, shape, data (8-byte aligned)``.

    Dtypes: int64 and unsigned 64/32/16/8-bit (little-endian); anything else is a ValueError.
    """
    parts: list[bytes | memoryview] = [MAGIC, struct.pack("<I", len(arrays))]
    offset = len(MAGIC) + 4
    for name, value in arrays.items():
        a = np.ascontiguousarray(value)
        code = _CODES.get(a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype)
        if code is None or a.ndim > MAX_NDIM:
            raise ValueError(f"array {name!r}: dtype {a.dtype} or {a.ndim} dims not allowed")
        raw = name.encode()
        head = _HEAD.pack(len(raw), code, a.ndim) + raw + b"".join(_DIM.pack(d) for d in a.shape)
        head += bytes(-(offset + len(head)) % 8)  # the data starts 8-byte aligned
        little = a.astype(a.dtype.newbyteorder("<"), copy=False).reshape(-1)
        parts += [head, little.view(np.uint8).data if a.size else b""]
        offset += len(head) + a.nbytes
        parts.append(bytes(-offset % 8))
        offset += -offset % 8
    return b"".join(parts)


def arrays_from_bytes(data: bytes | bytearray) -> dict[str, np.ndarray]:
    """Inverse of :func:`arrays_to_bytes`: read-only views into ``data``; ValueError if bad."""
    view = memoryview(data)
    if bytes(view[: len(MAGIC)]) != MAGIC or len(view) < len(MAGIC) + 4:
        raise ValueError("not a fast-engine container")
    (count,) = struct.unpack_from("<I", view, len(MAGIC))
    if count > MAX_ARRAYS:
        raise ValueError(f"{count} arrays in one container")
    pos, out = len(MAGIC) + 4, {}
    try:
        for _ in range(count):
            size, code, ndim = _HEAD.unpack_from(view, pos)
            pos += _HEAD.size
            name = bytes(view[pos : pos + size]).decode()
            pos += size
            if code not in _DTYPES or ndim > MAX_NDIM:
                raise ValueError(f"array {name!r}: bad dtype or rank")
            shape = tuple(_DIM.unpack_from(view, pos + 8 * i)[0] for i in range(ndim))
            pos += 8 * ndim + (-(pos + 8 * ndim) % 8)
            dtype = _DTYPES[code]
            items = math.prod(shape)  # Python ints: no overflow
            nbytes = items * dtype.itemsize
            if pos + nbytes > len(view):
                raise ValueError(f"array {name!r} runs past the end")
            out[name] = np.frombuffer(view, dtype, items, pos).reshape(shape)
            pos += nbytes + (-nbytes % 8)
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed fast-engine container: {exc}") from None
    return out


@dataclass(frozen=True)
class ModelSetup:
    """One party's one-time material: shares of each layer's weight mask ``B``."""

    party: int
    mask_shares: tuple[Ring, ...]

    def to_bytes(self) -> bytes:
        """Container bytes (:func:`arrays_to_bytes`)."""
        arrays = {f"b{i}": b for i, b in enumerate(self.mask_shares)}
        return arrays_to_bytes({"party": np.array([self.party]), **arrays})

    @classmethod
    def from_bytes(cls, data: bytes | bytearray) -> ModelSetup:
        """Inverse of :meth:`to_bytes`."""
        a = arrays_from_bytes(data)
        n = len(a) - 1
        return cls(int(a["party"][0]), tuple(a[f"b{i}"].astype(np.int64) for i in range(n)))


@dataclass(frozen=True)
class Bundle:
    """One party's correlated randomness for one forward of ``batch`` samples.

    In the order of the model's plan (:mod:`.graph`): ``masks``, shares of
    each opening's mask ``r`` (batch, *shape); ``products``, shares of
    ``F(B, r)`` per weighted layer (batch, *out_shape); ``gates``, one key set
    per gate (``batch * per_sample`` instances, sample-major); ``triples``,
    shares of one matrix Beaver triple per MatMul of two activations
    (:mod:`.beaver`; each array (batch, *shape)).

    Single use: every mask in it hides one value once; running two inputs on
    one bundle would reveal their difference to both parties.
    """

    party: int
    batch: int
    masks: tuple[Ring, ...]
    products: tuple[Ring, ...]
    gates: tuple[GateKey, ...]
    triples: tuple[Triple, ...] = ()

    @property
    def nbytes(self) -> int:
        """Serialised payload bytes (without the container's headers)."""
        return (
            sum(m.nbytes for m in self.masks)
            + sum(p.nbytes for p in self.products)
            + sum(g.nbytes for g in self.gates)
            + sum(t.nbytes for t in self.triples)
        )

    def _layout(self) -> tuple[int, int, int, int, int]:
        return self.party, len(self.masks), len(self.products), len(self.gates), len(self.triples)

    @classmethod
    def concat(cls, bundles: Sequence[Bundle]) -> Bundle:
        """One bundle for the stacked batch of ``bundles`` (e.g. 64 single-image bundles).

        Every element of a bundle is independent of the others, so a dealer
        can make single-image bundles ahead of time and a party can stack as
        many as the leader's dynamic batch needs.
        """
        if not bundles or len({b._layout() for b in bundles}) != 1:
            raise ValueError("need one or more bundles of one party and model")
        first = bundles[0]
        return cls(
            first.party,
            sum(b.batch for b in bundles),
            tuple(np.concatenate([b.masks[i] for b in bundles]) for i in range(len(first.masks))),
            tuple(
                np.concatenate([b.products[i] for b in bundles]) for i in range(len(first.products))
            ),
            tuple(GateKey.concat([b.gates[i] for b in bundles]) for i in range(len(first.gates))),
            tuple(
                Triple.concat([b.triples[i] for b in bundles]) for i in range(len(first.triples))
            ),
        )

    def head(self, rows: int) -> Bundle:
        """The material of the first ``rows`` samples (views, no copy).

        The rest is never used: its masks hide nothing that is opened, so
        dropping them is safe; the bundle as a whole is still single use.
        """
        if not 1 <= rows <= self.batch:
            raise ValueError(f"cannot take {rows} rows of a bundle for {self.batch}")
        return self if rows == self.batch else self.rows(0, rows)

    def rows(self, start: int, stop: int) -> Bundle:
        """The material of samples ``start .. stop - 1``, as a bundle of its own (views).

        Every sample's material is independent of the others', so a dealer can
        make many bundles in one pass and cut them apart; each part is single
        use, like any bundle.
        """
        if not 0 <= start < stop <= self.batch:
            raise ValueError(f"cannot take rows {start}..{stop} of a bundle for {self.batch}")
        gates = []
        for g in self.gates:
            per = g.size // self.batch
            gates.append(g.take(start * per, stop * per))
        return Bundle(
            self.party,
            stop - start,
            tuple(m[start:stop] for m in self.masks),
            tuple(p[start:stop] for p in self.products),
            tuple(gates),
            tuple(t.rows(start, stop) for t in self.triples),
        )

    def to_bytes(self) -> bytes:
        """Container bytes (:func:`arrays_to_bytes`); DCF lanes keep only their low bytes."""
        arrays: dict[str, np.ndarray] = {"meta": np.array((self.party, *self._sizes()))}
        arrays.update({f"m{i}": m for i, m in enumerate(self.masks)})
        arrays.update({f"p{i}": p for i, p in enumerate(self.products)})
        for i, g in enumerate(self.gates):
            arrays.update(g.to_arrays(f"g{i}"))
        for i, t in enumerate(self.triples):
            arrays.update({f"t{i}a": t.a, f"t{i}b": t.b, f"t{i}c": t.c})
        return arrays_to_bytes(arrays)

    def _sizes(self) -> tuple[int, ...]:
        """Batch and counts as ``meta`` stores them (the triples' count only when there are any)."""
        counts = (self.batch, len(self.masks), len(self.products), len(self.gates))
        return counts + ((len(self.triples),) if self.triples else ())

    @classmethod
    def from_bytes(cls, data: bytes | bytearray) -> Bundle:
        """Inverse of :meth:`to_bytes`; ValueError if malformed."""
        a = arrays_from_bytes(data)
        try:
            meta = [int(v) for v in a["meta"]]
            if len(meta) not in (5, 6):
                raise ValueError(f"meta of {len(meta)} values")
            party, batch, masks, products, gates = meta[:5]
            triples = meta[5] if len(meta) == 6 else 0
            return cls(
                party,
                batch,
                tuple(a[f"m{i}"].astype(np.int64) for i in range(masks)),
                tuple(a[f"p{i}"].astype(np.int64) for i in range(products)),
                tuple(GateKey.from_arrays(a, f"g{i}") for i in range(gates)),
                tuple(
                    Triple(*(a[f"t{i}{x}"].astype(np.int64) for x in "abc")) for i in range(triples)
                ),
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"malformed bundle: {exc}") from None
