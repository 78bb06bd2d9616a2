"""Products of int64 matrices modulo 2^64, fast on one core: einsum over rows of both operands.

Integer products have no BLAS. numpy's int64 ``@`` walks the right operand
down its columns (a strided inner loop) and torch's int64 matmul is slower
still on this CPU; ``np.einsum('bk,nk->bn')`` with the right operand stored
transposed runs a contiguous multiply-add over both rows instead. On one
core (AVX2, no AVX-512), for (64, 784) x (784, 128): about 3 ms against 11
(numpy ``@``) and 18 ms (torch); at one row 0.06 ms against 0.18 ms. The
result is exact modulo 2^64 (int64 arithmetic wraps).

:class:`RingMatrix` keeps a fixed right operand (a model's weights) in the
transposed layout, made once.
"""

from __future__ import annotations

import numpy as np

from ppml.servers.mpc.fast.prg import Ring


class RingMatrix:
    """A fixed (K, n) int64 right operand: ``x @ w mod 2^64`` for any (b, K) ``x``."""

    def __init__(self, w: Ring) -> None:
        if w.ndim != 2 or w.dtype != np.int64:
            raise ValueError("a ring matrix is a 2-D int64 array")
        self.shape = (int(w.shape[0]), int(w.shape[1]))
        self.wt = np.ascontiguousarray(w.T)  # (n, K): each output's weights in one row

    def left_mul(self, x: Ring) -> Ring:
        """``x @ w`` modulo 2^64."""
        if x.ndim != 2 or x.shape[1] != self.shape[0]:
            raise ValueError(f"cannot multiply {x.shape} by {self.shape}")
        out: Ring = np.einsum("bk,nk->bn", x, self.wt)
        return out


def ring_matmul(x: Ring, w: Ring) -> Ring:
    """``x @ w`` modulo 2^64 for 2-D int64 arrays (the transpose made for this call)."""
    return RingMatrix(w).left_mul(x)
