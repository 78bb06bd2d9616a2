"""The local linear maps a weighted layer's backward needs, on one share array at a time.

Each layer is a product of its input's *patches* with the weight (in the
``(in, out)`` layout :meth:`~ppml.servers.mpc.fast.linear.Linear.transpose`
gives): for Linear the rows themselves, for Conv2d im2col's rows, one per
output position. So, with ``P`` the patches of the input ``h`` and ``G`` the
output gradient laid out as one row per output position (:func:`out_rows`):

* weight gradient ``P^T G`` (same layout as the weight), bias gradient the
  column sums of ``G``;
* input gradient: ``G W^T`` gives the patches' gradient, and the adjoint of
  taking patches (:func:`patches_adjoint`, col2im: each patch entry added
  back where it came from) gives the input's.

All maps are linear over Z_2^64 (reshapes, gathers and sums that wrap), so
each party applies them to each of its components: no messages.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ppml.servers.mpc.fast.linear import Conv2d, Linear, WeightedOp
from ppml.servers.mpc.fast.prg import Ring


def patches(op: WeightedOp, h: Ring) -> Ring:
    """The input's patches, one row per output position: (positions, weight rows)."""
    batch = h.shape[0]
    if isinstance(op, Linear):
        return h.reshape(batch, op.in_features)
    k, s, p = op.kernel_size, op.stride, op.padding
    x = h.reshape(batch, *op.in_shape)
    if p:
        x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    ho, wo = op.out_hw
    win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s][:, :, :ho, :wo]
    cols = win.transpose(0, 2, 3, 1, 4, 5)  # (batch, Ho, Wo, C, k, k): the weight's order
    return np.ascontiguousarray(cols).reshape(-1, op.in_channels * k * k)


def patches_adjoint(op: WeightedOp, cols: Ring, batch: int) -> Ring:
    """The adjoint of :func:`patches`: (batch, *in_shape), every entry summed back in place."""
    if isinstance(op, Linear):
        return cols.reshape(batch, op.in_features)
    return _col2im(op, cols, batch)


def out_rows(op: WeightedOp, g: Ring) -> Ring:
    """A gradient of the layer's output as one row per output position: (positions, out)."""
    batch = g.shape[0]
    if isinstance(op, Linear):
        return g.reshape(batch, op.out_features)
    per_position = g.reshape(batch, *op.out_shape).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(per_position).reshape(-1, op.out_channels)


def _col2im(op: Conv2d, cols: Ring, batch: int) -> Ring:
    k, s, p = op.kernel_size, op.stride, op.padding
    (ho, wo), (h, w) = op.out_hw, op.in_hw
    grid = cols.reshape(batch, ho, wo, op.in_channels, k, k).transpose(0, 3, 4, 5, 1, 2)
    out = np.zeros((batch, op.in_channels, h + 2 * p, w + 2 * p), dtype=np.int64)
    for i in range(k):
        for j in range(k):  # kernel entry (i, j) of every patch, back to its input pixel
            out[:, :, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s] += grid[
                :, :, i, j
            ]
    return np.ascontiguousarray(out[:, :, p : p + h, p : p + w])
