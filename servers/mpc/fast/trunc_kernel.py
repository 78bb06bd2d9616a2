"""The top-bit truncation's party pass, compiled (:class:`~ppml.servers.mpc.fast.gates.TruncTop`).

``T = (x' >> s) - c + 2^(L-1-s) b - 2^(L-2-s)`` with ``b = s_x + t - 2 s_x t``
(gates.py, "Truncation from the top bit"): per element a few word operations,
which numpy did in about ten passes over the layer (a BERT-tiny request has
870,000 truncations); here it is one loop. ``uint64`` for the opened word,
``int64`` for ring values, never mixed in one operation. Compiled lazily and
cached next to this file; gates.py imports it on first use only.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def trunc_top(
    opened: np.ndarray, consts: np.ndarray, bits: int, shift: int, first: bool, out: np.ndarray
) -> None:
    """``out[i]``: this party's share of ``T`` from the opened ``o`` (uint64 view) and its
    shares ``consts[i] = (c, t)``; party 0 (``first``) adds the public terms."""
    half = np.uint64(1) << np.uint64(bits - 2)
    top_bit = np.uint64(bits - 1)
    low = (np.uint64(1) << top_bit) - np.uint64(1)
    step = np.int64(1) << np.int64(bits - 1 - shift)
    offset = np.int64(1) << np.int64(bits - 2 - shift)
    s = np.uint64(shift)
    for i in range(opened.size):
        x = opened[i] + half  # wraps mod 2^64; only the low ``bits`` bits are read
        high = (x >> top_bit) & np.uint64(1)
        c, t = consts[i, 0], consts[i, 1]
        y = (-t if high else t) * step - c
        if first:
            y += np.int64((x & low) >> s) + np.int64(high) * step - offset
        out[i] = y
