"""2-out-of-3 replicated secret sharing over Z_2^64: arithmetic and XOR (binary) forms.

A value ``x = x_0 + x_1 + x_2 (mod 2^64)`` (or ``x_0 ^ x_1 ^ x_2`` for the
binary form, 64 bits per word) is held as :class:`Shared`: party ``i``
keeps the pair ``(x_i, x_{i+1})``, so any two parties together hold every
component and any one party holds two of three, which alone are uniform
and say nothing about ``x``.

Local (no messages): addition, subtraction, a public constant (added to
component 0, which parties 0 and 2 hold), a public factor, reshaping.

One round, no preprocessing:

* product (:func:`mul`, :func:`matmul`, :func:`and_bits`): party ``i``
  computes ``z_i = x_i y_i + x_i y_{i+1} + x_{i+1} y_i``, three *additive*
  shares of ``x y``; :func:`reshare` adds a fresh zero sharing and sends
  ``z_i`` to party ``i - 1``, which restores the replicated form. Each message
  is uniform to its receiver (masked by the zero share's component it lacks).
* input from additive shares (the SDK's wire form, one share per server):
  :func:`reshare` as is.

The output is returned additively: party ``i`` hands back ``x_i`` plus a
fresh zero share (:func:`to_additive`), so the client's three shares are
uniform and sum to ``x``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ppml.servers.mpc.fast.prg import U64, Ring
from ppml.servers.mpc.rep3.keys import Correlated, next_of, prev_of
from ppml.servers.mpc.rep3.rounds import Array, Expect, Round, Steps


@dataclass(frozen=True)
class Shared:
    """This party's two components: ``a = x_rank``, ``b = x_{rank+1}`` (int64 or uint64)."""

    a: Array
    b: Array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.a.shape)

    def map(self, f: Callable[[Array], Array]) -> Shared:
        """The same local, linear reshaping on both components (reshape, slice, transpose)."""
        return Shared(f(self.a), f(self.b))

    def __add__(self, other: Shared) -> Shared:
        return Shared(self.a + other.a, self.b + other.b)

    def __sub__(self, other: Shared) -> Shared:
        return Shared(self.a - other.a, self.b - other.b)

    def __neg__(self) -> Shared:
        return Shared(-self.a, -self.b)

    def __xor__(self, other: Shared) -> Shared:
        return Shared(self.a ^ other.a, self.b ^ other.b)

    def scale(self, factor: int | Array) -> Shared:
        """Multiply by a public int64 factor (scalar or broadcastable array)."""
        f = np.asarray(factor, dtype=np.int64)
        return Shared(self.a * f, self.b * f)


def add_public(rank: int, x: Shared, c: Ring | int) -> Shared:
    """``x + c`` for a public ``c``: component 0 (held by parties 0 and 2) takes it."""
    c = np.asarray(c, dtype=x.a.dtype)
    if rank == 0:
        return Shared(x.a + c, x.b)
    if rank == 2:
        return Shared(x.a, x.b + c)
    return Shared(x.a + np.zeros_like(c), x.b + np.zeros_like(c))


def xor_public(rank: int, x: Shared, c: U64 | int) -> Shared:
    """``x ^ c`` for a public ``c`` (binary form), on component 0."""
    c = np.asarray(c, dtype=np.uint64)
    if rank == 0:
        return Shared(x.a ^ c, x.b)
    if rank == 2:
        return Shared(x.a, x.b ^ c)
    return x


def component(rank: int, j: int, value: Array | None, like: Array) -> Shared:
    """A sharing whose component ``j`` is ``value`` and the others 0 (no messages).

    Component ``j`` is held by parties ``j`` and ``j - 1``; they pass the
    value, the third party passes None (``like`` gives shape and dtype).
    """
    zero = np.zeros_like(like)
    if rank == j:
        assert value is not None
        return Shared(value, zero)
    if next_of(rank) == j:
        assert value is not None
        return Shared(zero, value)
    return Shared(zero, zero.copy())


def reshare(corr: Correlated, z: Array) -> Steps[Shared]:
    """Three additive (3-out-of-3) shares to replicated form: one round, one array per party."""
    rank = corr.rank
    if z.dtype == np.uint64:  # masked in place in the fresh zero share (one array less)
        mine: Array = corr.zero_bits(z.shape)
        mine ^= z
    else:
        mine = corr.zero(z.shape)
        mine += z
    got = yield Round(send={prev_of(rank): [mine]}, expect={next_of(rank): [Expect.like(mine)]})
    return Shared(mine, got[next_of(rank)][0])


def mul_local(x: Shared, y: Shared) -> Ring:
    """Additive shares of the elementwise product (before :func:`reshare`)."""
    out: Ring = x.a * (y.a + y.b) + x.b * y.a
    return out


def mul(corr: Correlated, x: Shared, y: Shared) -> Steps[Shared]:
    """Elementwise product, one round."""
    return (yield from reshare(corr, mul_local(x, y)))


def and_local(x: Shared, y: Shared) -> U64:
    """XOR shares of the bitwise AND (before :func:`reshare`)."""
    out = (x.a & (y.a ^ y.b)) ^ (x.b & y.a)
    return np.asarray(out, dtype=np.uint64)


def and_bits(corr: Correlated, x: Shared, y: Shared) -> Steps[Shared]:
    """Bitwise AND of two binary sharings (64 gates per word), one round."""
    return (yield from reshare(corr, and_local(x, y)))


def matmul_local(apply: Callable[[Ring, Ring], Ring], x: Shared, w: Shared) -> Ring:
    """Additive shares of a bilinear ``apply(x, w)`` (matmul, convolution), before resharing."""
    out: Ring = apply(x.a, w.a + w.b) + apply(x.b, w.a)
    return out


def to_additive(corr: Correlated, x: Shared) -> Ring:
    """This party's additive share of ``x`` for a client: ``x_rank`` plus a fresh zero share."""
    out: Ring = x.a + corr.zero(x.shape)
    return out


def open_all(rank: int, x: Shared) -> Steps[Array]:
    """Reveal ``x`` to all three parties (tests and public results only): one round."""
    got = yield Round(send={prev_of(rank): [x.b]}, expect={next_of(rank): [Expect.like(x.b)]})
    third = got[next_of(rank)][0]
    if x.a.dtype == np.uint64:
        out: Array = x.a ^ x.b ^ third
        return out
    return x.a + x.b + third
