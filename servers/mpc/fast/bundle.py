"""What the dealer sends the parties: per-model setup and per-forward bundles, as numpy arrays.

Serialised as npz (``allow_pickle=False``), so any party can load what it
receives without executing code. Sizes: see gates.py and dcf.py.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppml.servers.mpc.fast.gates import GateKey
from ppml.servers.mpc.fast.prg import Ring


def _arrays_to_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    savez: Any = np.savez  # numpy's stub types **kwds as its allow_pickle flag
    savez(buf, **arrays)
    return buf.getvalue()


def _arrays_from_bytes(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@dataclass(frozen=True)
class ModelSetup:
    """One party's one-time material: shares of each layer's weight mask ``B``."""

    party: int
    mask_shares: tuple[Ring, ...]

    def to_bytes(self) -> bytes:
        """npz bytes (no pickle)."""
        arrays = {f"b{i}": b for i, b in enumerate(self.mask_shares)}
        return _arrays_to_bytes({"party": np.array([self.party]), **arrays})

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelSetup:
        """Inverse of :meth:`to_bytes`."""
        a = _arrays_from_bytes(data)
        n = len(a) - 1
        return cls(int(a["party"][0]), tuple(a[f"b{i}"].astype(np.int64) for i in range(n)))


@dataclass(frozen=True)
class StageBundle:
    """Per stage: share of the input mask r, share of F(B, r), gate key."""

    in_mask: Ring
    weight_mask_product: Ring
    gate: GateKey


@dataclass(frozen=True)
class Bundle:
    """One party's correlated randomness for one forward of ``batch`` samples.

    Single use: every mask in it hides one value once; running two inputs on
    one bundle would reveal their difference to both parties.
    """

    party: int
    batch: int
    stages: tuple[StageBundle, ...]

    @property
    def nbytes(self) -> int:
        """Serialised payload bytes (without npz headers)."""
        return sum(
            s.in_mask.nbytes + s.weight_mask_product.nbytes + s.gate.nbytes for s in self.stages
        )

    @classmethod
    def concat(cls, bundles: Sequence[Bundle]) -> Bundle:
        """One bundle for the stacked batch of ``bundles`` (e.g. 64 single-image bundles).

        Every element of a bundle is independent of the others, so a dealer
        can make single-image bundles ahead of time and a party can stack as
        many as the leader's dynamic batch needs.
        """
        if not bundles or len({(b.party, len(b.stages)) for b in bundles}) != 1:
            raise ValueError("need one or more bundles of one party and model")
        stages = tuple(
            StageBundle(
                np.concatenate([b.stages[i].in_mask for b in bundles]),
                np.concatenate([b.stages[i].weight_mask_product for b in bundles]),
                GateKey.concat([b.stages[i].gate for b in bundles]),
            )
            for i in range(len(bundles[0].stages))
        )
        return cls(bundles[0].party, sum(b.batch for b in bundles), stages)

    def to_bytes(self) -> bytes:
        """npz bytes (no pickle); DCF lanes keep only their low bytes."""
        arrays: dict[str, np.ndarray] = {"meta": np.array([self.party, self.batch])}
        for i, s in enumerate(self.stages):
            arrays[f"s{i}.in_mask"] = s.in_mask
            arrays[f"s{i}.fbr"] = s.weight_mask_product
            arrays.update(s.gate.to_arrays(f"s{i}.gate"))
        return _arrays_to_bytes(arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> Bundle:
        """Inverse of :meth:`to_bytes`."""
        a = _arrays_from_bytes(data)
        n = len({k.split(".")[0] for k in a if k != "meta"})
        stages = tuple(
            StageBundle(
                a[f"s{i}.in_mask"].astype(np.int64),
                a[f"s{i}.fbr"].astype(np.int64),
                GateKey.from_arrays(a, f"s{i}.gate"),
            )
            for i in range(n)
        )
        return cls(int(a["meta"][0]), int(a["meta"][1]), stages)
