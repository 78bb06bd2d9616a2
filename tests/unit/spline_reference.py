"""What a spline gate (servers/mpc/fast/spline.py) must output, in exact integers.

The gate compares the top ``d - s`` bits (``d = n + 2``) of ``o' = u + r' mod
2^d`` (``u = x + 2^n``, ``s`` the table's :meth:`~Spline.shift`), taking the
wrap of ``u + r'`` as ``T (1 - O)`` from the top bits of ``r'`` and ``o'``.
For ``x`` in the range (``u < 2^(d-1)``) that is the true wrap, and the gate
selects the piece of ``floor(u / 2^s) + c``, ``c`` the carry out of the low
``s`` bits of ``u + r'``, applied to the true ``x`` in the ring: with ``s =
0`` the exact table; with ``s > 0`` the piece to the right on ``[b_j - 2^s,
b_j)`` when the mask carries (spline.py, Resolution). Outside the range the
indicators follow the same formula with that wrap (:func:`indicators`): the
piece of ``x``'s representative mod ``2^d`` when that lies in the range, else
the last piece, or the first when the wrong wrap is read (spline.py, Range).
"""

from __future__ import annotations

import numpy as np

from ppml.servers.mpc.fast.gates import GateParams
from ppml.servers.mpc.fast.prg import Ring
from ppml.servers.mpc.fast.spline import Spline


def indicators(spline: Spline, p: GateParams, xs: Ring, r: Ring) -> np.ndarray:
    """``e_j`` (k, len(xs)) as the gate computes them: ``1{v_j < r'} - w + 1{o' < beta_j}``
    on the top ``d - s`` bits, ``w = T (1 - O)``."""
    n, s = spline.depth(p), spline.shift(p)
    d = n + 2
    bits = np.uint64(d - s)
    low = np.uint64((1 << (d - s)) - 1)
    u = xs.view(np.uint64) + np.uint64(1 << n)
    o = ((u + r.view(np.uint64)) & np.uint64((1 << d) - 1)) >> np.uint64(s)
    threshold = (r.view(np.uint64) & np.uint64((1 << d) - 1)) >> np.uint64(s)
    one = np.uint64(1)
    w = ((threshold >> (bits - one)) & (one - ((o >> (bits - one)) & one))).astype(np.int64)
    fx = spline.fixed(p.frac_bits)
    betas = [np.uint64((b + (1 << n)) >> s) for b in fx.breakpoints]
    rows = [
        (((o - beta) & low) < threshold).astype(np.int64) - w + (o < beta).astype(np.int64)
        for beta in betas
    ]
    return np.array(rows, dtype=np.int64).reshape(len(betas), xs.size)


def selected_pieces(spline: Spline, p: GateParams, xs: Ring, r: Ring) -> np.ndarray:
    """The piece the gate selects for each ring input ``xs`` under masks ``r``: the indicators
    are 0 or 1 and fall with ``j``, for any input (spline.py, Range)."""
    e = indicators(spline, p, xs, r)
    if e.size and (not np.isin(e, (0, 1)).all() or (np.diff(e, axis=0) < 0).any()):
        raise AssertionError("the gate's comparisons select no single piece")
    return len(spline.breakpoints) - e.sum(axis=0)


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
