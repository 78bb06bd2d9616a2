"""What a spline gate (servers/mpc/fast/spline.py) must output, in exact integers.

The gate compares the top ``n + 1 - s`` bits of ``o' = u + r' mod 2^(n + 1)``
(``u = x + 2^n``, ``s`` the table's :meth:`~Spline.shift`): it selects the
piece of ``floor(u / 2^s) + c`` (mod ``2^(n + 1 - s)``), ``c`` the carry out
of the low ``s`` bits of ``u + r'``, and applies it to the true ``x`` in the
ring. With ``s = 0`` that is the exact table; with ``s > 0`` it is the piece
to the right on ``[b_j - 2^s, b_j)`` when the mask carries (spline.py,
Resolution).
"""

from __future__ import annotations

import numpy as np

from ppml.servers.mpc.fast.gates import GateParams
from ppml.servers.mpc.fast.prg import Ring
from ppml.servers.mpc.fast.spline import Spline


def selected_pieces(spline: Spline, p: GateParams, xs: Ring, r: Ring) -> np.ndarray:
    """The piece the gate selects for each ring input ``xs`` under masks ``r``."""
    n, s = spline.depth(p), spline.shift(p)
    d = n + 1
    full = np.uint64((1 << d) - 1)
    u = (xs.view(np.uint64) + np.uint64(1 << n)) & full
    low_mask = np.uint64((1 << s) - 1)
    carry = ((u & low_mask) + (r.view(np.uint64) & low_mask)) >> np.uint64(s)
    top = ((u >> np.uint64(s)) + carry) & np.uint64((1 << (d - s)) - 1)
    fx = spline.fixed(p.frac_bits)
    betas = np.array([(b + (1 << n)) >> s for b in fx.breakpoints], dtype=np.uint64)
    return np.searchsorted(betas, top, side="right")


def gate_outputs(spline: Spline, p: GateParams, xs: Ring, r: Ring) -> list[int]:
    """The gate's reconstructed outputs, as signed 64-bit ring values."""
    fx = spline.fixed(p.frac_bits)
    pieces = selected_pieces(spline, p, xs, r)
    exact = [fx.at(int(i), int(x)) for i, x in zip(pieces, xs, strict=True)]
    return [(v + (1 << 63)) % (1 << 64) - (1 << 63) for v in exact]


def windows(spline: Spline, p: GateParams) -> list[tuple[int, np.ndarray]]:
    """Per breakpoint ``j``: piece ``j + 1`` and the ring inputs ``[b_j - 2^s, b_j)`` it may get."""
    s = spline.shift(p)
    fx = spline.fixed(p.frac_bits)
    return [
        (j + 1, np.arange(b - (1 << s), b, dtype=np.int64))
        for j, b in enumerate(fx.breakpoints)
        if s
    ]
