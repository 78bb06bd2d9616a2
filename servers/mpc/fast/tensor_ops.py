"""A transformer's tensor nodes on the fast engine: MatMul of two activations, Transpose,
Reshape, Scale, Bias, Mean, Select, Concat; their per-sample shapes and local maps on shares.

Public descriptions (dealer and parties agree on them); how a model runs them
is :mod:`.graph`'s business. Shapes are per sample (no batch dim). Per node:

* :class:`MatMul` -- ``a @ b`` over the last two dims of two secret
  activations, equal leading dims (heads): a matrix Beaver triple, one round
  (:mod:`.beaver`); operands at ``2^f``, output at ``2^(2f)``; exact in the ring.
* :class:`Transpose`, :class:`Reshape` -- each party moves its own shares;
  exact, the scale is kept.
* :class:`Scale` -- times a public fixed-point integer ``multiplier =
  round(factor 2^f)`` (:meth:`Scale.of`): input at ``2^f``, output at
  ``2^(2f)``. Exact when ``factor 2^f`` is an integer (e.g. powers of two down
  to ``2^-f``); otherwise the factor is off by at most ``2^-(f+1)``, a relative
  error of at most ``2^-(f+1) / |factor|`` (1.4e-5 for ``1/sqrt(8)`` at ``f =
  16``).
* :class:`Bias` -- a secret parameter (e.g. a positional embedding) whose
  shares, at ``2^f``, each party adds to its own; lifted by ``2^f`` onto a
  ``2^(2f)`` value; exact.
* :class:`Mean` -- each party sums its shares over ``axis`` and multiplies by
  ``round(2^f / n)`` (:func:`reciprocal`): input at ``2^f``, output at
  ``2^(2f)``; relative error at most ``n / 2^(f+1)``, none when ``n`` is a
  power of two up to ``2^f``.
* :class:`Select` -- entry ``index`` of sample dim ``axis`` (CLS pooling):
  each party picks its own shares; exact, the scale is kept.
* :class:`Concat` -- two values joined along sample dim ``axis``: each party
  joins its own shares, a ``2^f`` operand lifted by ``2^f`` when the other is
  at ``2^(2f)`` (as Add's); exact.

All but MatMul are local linear maps of a party's own shares with public
constants: nothing is sent, nothing is revealed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ppml.servers.mpc.fast.prg import Ring

MAX_RANK = 4  # dims of one sample's value (a head split is 3)
MAX_MULTIPLIER = 1 << 32  # |Scale.multiplier|: factors up to 2^16 at f = 16, as the domain allows

Shape = tuple[int, ...]


@dataclass(frozen=True)
class MatMul:
    """``a @ b`` for two activations ``(..., n, k)`` and ``(..., k, m)``: ``(..., n, m)``."""

    arity: ClassVar[int] = 2

    @staticmethod
    def out_shape(a: Shape, b: Shape) -> Shape:
        if len(a) < 2 or len(a) != len(b) or a[:-2] != b[:-2] or a[-1] != b[-2]:
            raise ValueError(f"cannot multiply {a} by {b} (needs (..., n, k) and (..., k, m))")
        return (*a[:-1], b[-1])


@dataclass(frozen=True)
class Transpose:
    """Output dim ``i`` is input dim ``perm[i]`` (per sample; the batch stays first)."""

    perm: Shape
    arity: ClassVar[int] = 1

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) != len(self.perm) or sorted(self.perm) != list(range(len(shape))):
            raise ValueError(f"{list(self.perm)} is not a permutation of the dims of {shape}")
        return tuple(shape[p] for p in self.perm)


@dataclass(frozen=True)
class Reshape:
    """To the static ``shape`` (same element count)."""

    shape: Shape
    arity: ClassVar[int] = 1

    def out_shape(self, shape: Shape) -> Shape:
        if not 1 <= len(self.shape) <= MAX_RANK or min(self.shape) < 1:
            raise ValueError(f"bad reshape target {self.shape}")
        if math.prod(shape) != math.prod(self.shape):
            raise ValueError(f"cannot reshape {shape} to {self.shape}")
        return self.shape


@dataclass(frozen=True)
class Scale:
    """``x * multiplier / 2^f``: a public factor in fixed point (see :meth:`of`)."""

    multiplier: int
    arity: ClassVar[int] = 1

    @classmethod
    def of(cls, factor: float, frac_bits: int) -> Scale:
        """``round(factor 2^f)``; ValueError if it rounds to 0 or is out of range."""
        scale = cls(round(factor * (1 << frac_bits)))
        scale.out_shape(())
        return scale

    def out_shape(self, shape: Shape) -> Shape:
        m = self.multiplier
        if type(m) is not int or m == 0 or abs(m) > MAX_MULTIPLIER:
            raise ValueError(f"Scale multiplier {m!r} must be a non-zero int up to 2^32")
        return shape


@dataclass(frozen=True)
class Bias:
    """``x + bias`` for a secret ``bias`` of ``shape``, each dim 1 or the sample's."""

    shape: Shape
    arity: ClassVar[int] = 1

    def out_shape(self, shape: Shape) -> Shape:
        if len(self.shape) != len(shape) or any(
            s not in (1, d) for s, d in zip(self.shape, shape, strict=True)
        ):
            raise ValueError(f"bias {self.shape} does not broadcast to {shape}")
        return shape


@dataclass(frozen=True)
class Mean:
    """The mean over sample dim ``axis`` (dropped)."""

    axis: int
    arity: ClassVar[int] = 1

    def out_shape(self, shape: Shape) -> Shape:
        if not 0 <= self.axis < len(shape):
            raise ValueError(f"no axis {self.axis} in {shape}")
        return shape[: self.axis] + shape[self.axis + 1 :]


@dataclass(frozen=True)
class Select:
    """Entry ``index`` of sample dim ``axis`` (dropped)."""

    axis: int
    index: int
    arity: ClassVar[int] = 1

    def out_shape(self, shape: Shape) -> Shape:
        if not 0 <= self.axis < len(shape) or not 0 <= self.index < shape[self.axis]:
            raise ValueError(f"no entry {self.index} on axis {self.axis} of {shape}")
        return shape[: self.axis] + shape[self.axis + 1 :]


@dataclass(frozen=True)
class Concat:
    """Two values joined along sample dim ``axis`` (their other dims equal)."""

    axis: int
    arity: ClassVar[int] = 2

    def join(self, a: Shape, b: Shape) -> Shape:
        k = self.axis
        if not 0 <= k < len(a) or len(a) != len(b) or a[:k] + a[k + 1 :] != b[:k] + b[k + 1 :]:
            raise ValueError(f"cannot join {a} and {b} along axis {k}")
        return (*a[:k], a[k] + b[k], *a[k + 1 :])


def reciprocal(n: int, frac_bits: int) -> int:
    """``round(2^f / n)``: the public fixed-point ``1 / n``; ValueError if it rounds to 0."""
    factor = ((1 << frac_bits) + n // 2) // n
    if factor < 1:
        raise ValueError(f"1/{n} is below the fixed-point resolution")
    return factor


def permute(x: Ring, perm: Shape) -> Ring:
    """Shares ``(batch, *shape)`` with the sample dims permuted (C-contiguous)."""
    return np.ascontiguousarray(x.transpose(0, *(p + 1 for p in perm)))


def axis_sum(x: Ring, axis: int) -> Ring:
    """Shares ``(batch, *shape)`` summed over sample dim ``axis`` (mod 2^64)."""
    with np.errstate(over="ignore"):
        return x.sum(axis=axis + 1, dtype=np.int64)


def select(x: Ring, axis: int, index: int) -> Ring:
    """Shares ``(batch, *shape)`` at entry ``index`` of sample dim ``axis`` (dropped)."""
    return np.ascontiguousarray(np.take(x, index, axis=axis + 1))


def concat(a: Ring, b: Ring, axis: int) -> Ring:
    """Shares ``(batch, *shape)`` of two values joined along sample dim ``axis``."""
    return np.concatenate([a, b], axis=axis + 1)
