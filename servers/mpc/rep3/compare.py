"""Sign of a replicated value with a binary adder circuit: 8 rounds, no preprocessing.

``x = x_0 + x_1 + x_2 (mod 2^64)`` is negative iff bit 63 of that sum is set.
Each component is known to two parties, so as a binary sharing it costs
nothing (:func:`~ppml.servers.mpc.rep3.rss.component`). Then:

1. carry-save (1 round): ``s = x_0 ^ x_1 ^ x_2`` (local: the arithmetic
   shares read as bits) and ``c = maj(x_0, x_1, x_2) = ((x_0 ^ x_2) & (x_1 ^
   x_2)) ^ x_2`` (one AND per bit), so ``x = s + 2c``;
2. generate/propagate (1 round): ``g = s & t``, ``p = s ^ t`` with ``t = c << 1``;
3. Kogge-Stone prefix (6 rounds, 2 ANDs per bit each): after levels 1, 2, 4,
   ..., 32, bit ``k`` of ``g`` is the carry out of bits ``0..k``; ``g`` and
   ``p`` of one span never both hold, so OR is XOR;
4. ``msb = p_63 ^ g_62`` (local).

All 64 bit positions of an element travel in one uint64 word, so a round
moves 8 (or 16) bytes per element and party: 104 bytes per element in all.
Every message is an AND's reshared output, uniform to its receiver. Exact
for every ring value; no range assumption.
"""

from __future__ import annotations

import numpy as np

from ppml.servers.mpc.fast.prg import U64
from ppml.servers.mpc.rep3.keys import Correlated
from ppml.servers.mpc.rep3.rounds import Steps
from ppml.servers.mpc.rep3.rss import Shared, and_bits, reshare

ROUNDS = 8
_ONE = np.uint64(1)
_TOP = np.uint64(63)


def _bits(x: Shared) -> Shared:
    return Shared(x.a.view(np.uint64), x.b.view(np.uint64))


def _only(rank: int, x: Shared, components: set[int]) -> Shared:
    """The binary sharing whose components are x's in ``components`` and 0 elsewhere."""
    zero = np.zeros_like(x.a)
    return Shared(
        x.a if rank in components else zero,
        x.b if (rank + 1) % 3 in components else zero,
    )


def shl(x: Shared, k: int) -> Shared:
    s = np.uint64(k)
    return Shared(x.a << s, x.b << s)


def negative(corr: Correlated, x: Shared) -> Steps[Shared]:
    """Binary sharing of ``x < 0`` (as int64) in bit 0 of each word; 8 rounds."""
    rank = corr.rank
    bits = _bits(x)
    uv = yield from and_bits(corr, _only(rank, bits, {0, 2}), _only(rank, bits, {1, 2}))
    carry = uv ^ _only(rank, bits, {2})
    t = shl(carry, 1)
    p = bits ^ t
    g = yield from and_bits(corr, bits, t)
    prop = p
    k = 1
    while k < 64:
        shifted_g = shl(g, k)
        if k < 32:
            both = yield from reshare(corr, _and_pair(prop, shifted_g, shl(prop, k)))
            half = both.shape[0] // 2
            g = g ^ Shared(both.a[:half], both.b[:half])
            prop = Shared(both.a[half:], both.b[half:])
        else:
            g = g ^ (yield from and_bits(corr, prop, shifted_g))
        k *= 2
    top = p ^ shl(g, 1)
    return Shared(top.a >> _TOP, top.b >> _TOP)


def _and_pair(x: Shared, y: Shared, z: Shared) -> U64:
    """``and_local`` of ``[x, x]`` and ``[y, z]`` stacked, written in place (no stacked copies)."""
    n = x.a.shape[0]
    out = np.empty((2 * n, *x.a.shape[1:]), dtype=np.uint64)
    for half, w in ((out[:n], y), (out[n:], z)):
        np.bitwise_xor(w.a, w.b, out=half)
        half &= x.a
        half ^= x.b & w.a
    return out
