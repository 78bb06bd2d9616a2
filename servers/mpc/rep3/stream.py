"""A keyed stream read ahead in large blocks: the same bytes, one cipher call per block.

The engine reads its pairwise streams in many small pieces (a Network A
forward at batch 1 makes about 70 reads of a few hundred words each), and
each :meth:`~ppml.servers.mpc.fast.prg.KeyedPRG.ring` call costs a cipher
call and two allocations. :class:`ReadAhead` draws :data:`BLOCK_WORDS` words
(or more, for a larger read) at once and hands out consecutive slices, so
the n-th word read is the n-th word of the underlying stream whatever the
read sizes: both holders of a key stay in step exactly as before, and the
messages do not change.

Slices are views of the block (never handed out twice), so a caller may
write into what it got.
"""

from __future__ import annotations

import math

import numpy as np

from ppml.servers.mpc.fast.prg import U64, KeyedPRG, Ring

BLOCK_WORDS = 1 << 13  # 64 KiB


class ReadAhead:
    """``ring`` and ``uint64`` reads of ``prg``'s keystream, served from read-ahead blocks."""

    def __init__(self, prg: KeyedPRG, block_words: int = BLOCK_WORDS) -> None:
        self._prg = prg
        self._block_words = block_words
        self._buf = np.empty(0, dtype=np.uint64)
        self._pos = 0

    def _refill(self, n: int) -> None:
        """A new block holding the unread rest of the old one, then at least ``n`` fresh words."""
        left = self._buf[self._pos :]
        buf = np.empty(left.size + max(self._block_words, n), dtype=np.uint64)
        buf[: left.size] = left
        self._prg.fill(buf[left.size :])
        self._buf, self._pos = buf, 0

    def uint64(self, shape: tuple[int, ...] | int) -> U64:
        """The next words of the stream as a uint64 array of ``shape``."""
        n = shape if isinstance(shape, int) else math.prod(shape)
        if self._pos + n > self._buf.size:
            self._refill(n)
        start = self._pos
        self._pos = start + n
        return self._buf[start : self._pos].reshape(shape)

    def ring(self, shape: tuple[int, ...] | int) -> Ring:
        """The next words of the stream as ring elements (int64) of ``shape``."""
        out: Ring = self.uint64(shape).view(np.int64)
        return out
