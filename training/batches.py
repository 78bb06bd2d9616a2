"""Which rows each step of a training job trains on.

Two schemes, one interface (:class:`Batches`). The indices only pick rows of
each party's *share*; no row is ever opened.

* :class:`BatchPlan`, for jobs without DP: every party, and the plaintext
  reference, derive the same order from the job's public seed: one
  permutation of the row indices per epoch, cut into consecutive batches
  (the last one may be smaller).
* :class:`SecretBatches`, for DP-SGD: every step an independent, uniformly
  random subset of exactly ``min(batch_size, rows)`` rows, drawn without
  replacement from a 256-bit key the servers agree on in secret. This is the
  sampling the privacy accountant assumes
  (:mod:`ppml.training.privacy.accounting`); a public order would void it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

KEY_BYTES = 32


class Batches(Protocol):
    """Rows of every step, and where a step falls in its epoch."""

    @property
    def batches_per_epoch(self) -> int: ...

    def locate(self, step: int) -> tuple[int, int]: ...

    def indices(self, step: int) -> npt.NDArray[np.int64]: ...


@dataclass(frozen=True)
class BatchPlan:
    rows: int
    batch_size: int
    seed: int

    @property
    def batches_per_epoch(self) -> int:
        return max(1, -(-self.rows // self.batch_size))

    @functools.lru_cache(maxsize=4)  # noqa: B019 (plans are few, small and immutable)
    def permutation(self, epoch: int) -> npt.NDArray[np.int64]:
        """Epoch ``epoch``'s (0-based) order of all row indices (computed once per epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.rows).astype(np.int64)
        order.flags.writeable = False  # shared by every step of the epoch
        return order

    def locate(self, step: int) -> tuple[int, int]:
        """``(epoch, batch)`` of a 0-based step, both 0-based."""
        return divmod(step, self.batches_per_epoch)

    def indices(self, step: int) -> npt.NDArray[np.int64]:
        """Row indices of step ``step``'s batch."""
        epoch, batch = self.locate(step)
        start = batch * self.batch_size
        return self.permutation(epoch)[start : start + self.batch_size].copy()


@dataclass(frozen=True)
class SecretBatches:
    """Fixed-size batches sampled without replacement, independently per step, from a key.

    Invariants: :meth:`indices` returns ``min(batch_size, rows)`` distinct
    indices in ``0..rows-1``; for a uniformly random ``key`` unknown to an
    observer, each step's set is uniform over all subsets of that size and
    independent of every other step's (a keyed BLAKE2b PRF, one input per step
    and block, read as 64-bit words; rejection sampling, then a partial
    Fisher-Yates shuffle). Everyone holding ``key`` derives the same batches.
    The key is secret: it must never be stored, logged or sent to a client.
    """

    rows: int
    batch_size: int
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise ValueError(f"the batch key must be {KEY_BYTES} bytes, got {len(self.key)}")
        if self.rows < 1 or self.batch_size < 1:
            raise ValueError("need at least one row and a batch size of at least 1")

    @property
    def batches_per_epoch(self) -> int:
        """Steps per nominal epoch (``rows / batch_size``, rounded up): counting only."""
        return max(1, -(-self.rows // self.batch_size))

    def locate(self, step: int) -> tuple[int, int]:
        """``(epoch, batch)`` of a 0-based step, both 0-based."""
        return divmod(step, self.batches_per_epoch)

    def _words(self, step: int) -> Iterator[int]:
        """The PRF stream of step ``step``: uniform 64-bit words."""
        block = 0
        while True:
            digest = hashlib.blake2b(
                step.to_bytes(8, "little") + block.to_bytes(8, "little"),
                key=self.key,
                person=b"ppml-dp-batches",
            ).digest()
            yield from np.frombuffer(digest, dtype="<u8").tolist()
            block += 1

    def indices(self, step: int) -> npt.NDArray[np.int64]:
        """Row indices of step ``step``'s batch (distinct, in draw order)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        size = min(self.batch_size, self.rows)
        words = self._words(step)
        moved: dict[int, int] = {}  # sparse partial Fisher-Yates over 0..rows-1
        out = np.empty(size, dtype=np.int64)
        for i in range(size):
            j = i + _below(self.rows - i, words)
            out[i] = moved.get(j, j)
            moved[j] = moved.get(i, i)
        return out


def _below(n: int, words: Iterator[int]) -> int:
    """A uniform integer in ``0..n-1`` from uniform 64-bit words (no modulo bias)."""
    limit = (1 << 64) - (1 << 64) % n  # accept words below the largest multiple of n
    for word in words:
        if word < limit:
            return word % n
    raise AssertionError("the word stream is infinite")
