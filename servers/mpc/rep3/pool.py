"""Max and average pooling on replicated shares (square windows, no padding).

* :func:`max_pool` -- each window's exact maximum, by the tournament of
  :func:`~ppml.servers.mpc.rep3.nonlinear.maximum` over the window's
  ``k * k`` values: 10 rounds per halving (20 for 2x2 windows). Exact: a
  difference ``a - b`` of two values below ``2^62`` never wraps.
* :func:`avg_pool` -- the window sum is local; dividing by ``k^2`` is a
  truncation (2 rounds) and a reshare (1): by ``log2(k^2)`` bits when
  ``k^2`` is a power of two (``floor`` or one more unit), else a product
  with the public ``round(2^16 / k^2)`` first (relative error at most
  ``k^2 2^-17`` on top).

Windows are taken from both components alike (``sliding_window_view``), so
a window of a sharing is a sharing of the window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ppml.servers.mpc.rep3 import trunc
from ppml.servers.mpc.rep3.keys import Correlated
from ppml.servers.mpc.rep3.nonlinear import maximum
from ppml.servers.mpc.rep3.rounds import Array, Steps
from ppml.servers.mpc.rep3.rss import Shared, reshare

FRAC_BITS = 16


@dataclass(frozen=True)
class Pool:
    """``kind`` ("max" or "avg") pooling of (batch, C, H, W) with a square ``kernel``."""

    kind: str
    kernel: int
    stride: int
    in_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        if self.kind not in ("max", "avg") or self.kernel < 1 or self.stride < 1:
            raise ValueError("pooling needs kind 'max' or 'avg', kernel and stride >= 1")
        if min(self.in_shape[1:]) < self.kernel:
            raise ValueError(f"a {self.kernel}x{self.kernel} window does not fit {self.in_shape}")

    @property
    def out_shape(self) -> tuple[int, int, int]:
        c, h, w = self.in_shape
        k, s = self.kernel, self.stride
        return c, (h - k) // s + 1, (w - k) // s + 1

    def windows(self, a: Array) -> Array:
        """(batch, C, Ho, Wo, k * k): every window's values, last."""
        _, ho, wo = self.out_shape
        x = a.reshape(a.shape[0], *self.in_shape)
        win = sliding_window_view(x, (self.kernel, self.kernel), axis=(2, 3))
        win = win[:, :, :: self.stride, :: self.stride][:, :, :ho, :wo]
        return np.ascontiguousarray(win).reshape(*win.shape[:4], -1)


def apply(corr: Correlated, pool: Pool, x: Shared) -> Steps[Shared]:
    """``pool`` of the replicated ``x`` (batch, C, H, W) at 16 fractional bits."""
    if pool.kind == "max":
        return (yield from max_pool(corr, pool, x))
    return (yield from avg_pool(corr, pool, x))


def max_pool(corr: Correlated, pool: Pool, x: Shared) -> Steps[Shared]:
    top = yield from maximum(corr, x.map(pool.windows))
    return top.map(lambda a: a.reshape(a.shape[0], *pool.out_shape))


def avg_pool(corr: Correlated, pool: Pool, x: Shared) -> Steps[Shared]:
    window = pool.kernel * pool.kernel
    summed = x.map(lambda a: pool.windows(a).sum(axis=-1))
    if window & (window - 1) == 0:  # a power of two: a shift
        shift = window.bit_length() - 1
    else:
        summed, shift = summed.scale(round((1 << FRAC_BITS) / window)), FRAC_BITS
    if shift == 0:
        return summed
    y = yield from trunc.from_shared(corr, summed, shift)
    return (yield from reshare(corr, y))
