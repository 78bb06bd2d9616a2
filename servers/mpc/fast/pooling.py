"""Pooling windows over ring shares: shapes, window views, the max tournament's sizes.

Pure local reshaping and sums on additive shares (linear, so each party does
it on its own share); the comparisons of max pooling are gates, run by
:mod:`.engine` as :mod:`.graph` plans them. Square window ``kernel``,
``stride``, no padding, on per-sample shapes (C, H, W).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ppml.servers.mpc.fast.prg import Ring


def pooled_shape(shape: tuple[int, ...], kernel: int, stride: int) -> tuple[int, int, int]:
    """(C, Ho, Wo) after pooling (C, H, W); ValueError if the window does not fit."""
    if len(shape) != 3 or kernel < 1 or stride < 1:
        raise ValueError(f"pooling needs a (C, H, W) input and a positive window, got {shape}")
    c, h, w = shape
    if h < kernel or w < kernel:
        raise ValueError(f"a {kernel}x{kernel} window does not fit {h}x{w}")
    return c, (h - kernel) // stride + 1, (w - kernel) // stride + 1


def windows(x: Ring, shape: tuple[int, ...], kernel: int, stride: int) -> Ring:
    """(batch, C*Ho*Wo, kernel*kernel): each output position's window, C-contiguous."""
    c, ho, wo = pooled_shape(shape, kernel, stride)
    x = x.reshape(x.shape[0], *shape)
    win = sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    win = win[:, :, :ho, :wo]  # (batch, C, Ho, Wo, k, k)
    return np.ascontiguousarray(win).reshape(x.shape[0], c * ho * wo, kernel * kernel)


def window_sums(x: Ring, shape: tuple[int, ...], kernel: int, stride: int) -> Ring:
    """(batch, C, Ho, Wo) sums of each window (mod 2^64)."""
    _, ho, wo = pooled_shape(shape, kernel, stride)
    x = x.reshape(x.shape[0], *shape)
    win = sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    with np.errstate(over="ignore"):
        return win[:, :, :ho, :wo].sum(axis=(4, 5), dtype=np.int64)


def tournament(candidates: int) -> tuple[int, ...]:
    """Comparisons per window at each level of a max tournament over ``candidates`` values.

    Each level pairs the candidates (an odd one out waits for the next
    level) and keeps the larger of each pair: ``ceil(log2(candidates))`` levels.
    """
    levels = []
    while candidates > 1:
        levels.append(candidates // 2)
        candidates = candidates // 2 + candidates % 2
    return tuple(levels)


def average_factor(kernel: int, frac_bits: int) -> int:
    """``round(2^f / kernel^2)``: the public fixed-point reciprocal of the window size.

    Relative error at most ``kernel^2 / 2^(f+1)`` (none when ``kernel^2`` is a
    power of two up to ``2^f``); ValueError if it rounds to 0.
    """
    size = kernel * kernel
    factor = ((1 << frac_bits) + size // 2) // size
    if factor < 1:
        raise ValueError(f"a {kernel}x{kernel} average is below the fixed-point resolution")
    return factor
