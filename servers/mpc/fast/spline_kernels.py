"""Compiled passes of the spline gate's output (:mod:`~ppml.servers.mpc.fast.spline`).

After its comparisons, a party holds shares of ``r^t 1{p < r'}`` at each of
the gate's ``k`` points and of ``r^t`` times the wrap (``t <= m``) and combines them, with public
powers of the opened ``o``, into its share of the active piece (spline.py,
Output). In numpy that was a dozen passes over ``(k, m + 1, n)`` arrays
and their temporaries, about a third of a large GELU gate's time; here it is
one numba loop over the elements (:func:`piece_sum`), which also makes a
one-bit gate's products from its opened bits. The arithmetic is exactly
the numpy version's: ``int64`` wrapping mod ``2^64``; ``uint64`` only where
masked inputs are compared, never mixed with ``int64`` in one operation
(numba would promote them to float64).

Compiled lazily on first use and cached next to this file, as
:mod:`~ppml.servers.mpc.fast.dcf_kernels`; spline.py imports this module on
first use only (numba costs about 0.7 s per process).
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)


@_jit
def _mine(t: int, i: int, first: bool, mask: np.ndarray, consts: np.ndarray) -> np.int64:
    """This party's share of ``r^t`` for element ``i``: party 0's 1, the mask, the constants."""
    if t == 0:
        return np.int64(1) if first else np.int64(0)
    if t == 1:
        return mask[i]
    return consts[i, t - 2]


@_jit
def piece_sum(
    o: np.ndarray,
    top: np.ndarray,
    wrap_bit: np.uint64,
    at: np.ndarray,
    e: np.ndarray,
    bits: bool,
    betas: np.ndarray,
    coef: np.ndarray,
    mask: np.ndarray,
    consts: np.ndarray,
    first: bool,
    out: np.ndarray,
) -> None:
    """``out[i]``: shares of ``P_k(x) - sum_j e_j dP_j(x)`` (spline.py, Output).

    The shares of ``r^t 1{p < r'}`` at point ``j`` (``o' - beta_j``) are
    ``at[j, t, i]`` (a payload gate) or, if ``bits``, made here from the
    opened bit ``e[j, i]`` (:func:`_share`); those of ``r^t w``, the wrap
    ``w = T (1 - O)`` (``O`` bit ``wrap_bit`` of ``top[i]``), from the
    shares of ``T r^t``, ``consts[i, m - 1 + t]`` (spline.py, Comparisons).
    ``coef[j, t, u]``: the coefficient of ``o^u`` in ``(-1)^t`` times the
    factor of ``r^t``, for ``dP_j`` (``j < k``) and the last piece ``P_k``
    (``j = k``).
    """
    k = betas.size
    m = coef.shape[1] - 1
    for i in range(o.size):
        oi = o[i]
        clear = np.int64(1) - np.int64((top[i] >> wrap_bit) & np.uint64(1))  # 1 - O
        acc = np.int64(0)
        for t in range(m + 1):
            mine = _mine(t, i, first, mask, consts)
            wrap = clear * consts[i, m - 1 + t]
            acc += _poly(coef, k, t, oi) * mine
            for j in range(k):
                below = _share(bits, at, e, consts, m, j, t, i, mine) - wrap
                if top[i] < betas[j]:
                    below += mine
                acc -= _poly(coef, j, t, oi) * below
        out[i] = acc


@_jit
def _share(
    bits: bool, at: np.ndarray, e: np.ndarray, consts: np.ndarray, m: int, p: int, t: int,
    i: int, mine: np.int64,
) -> np.int64:  # fmt: skip
    """Shares of ``r^t 1{p < r'}``: the payload's, or ``e r^t + (1 - 2 e) rho r^t`` from the
    opened ``e`` and the shares of ``rho_p r^t``, ``consts[i, 2 m + p (m + 1) + t]``
    (spline.py, :func:`~.spline.deal_bits`)."""
    if not bits:
        return at[p, t, i]
    ep = np.int64(e[p, i])
    return ep * mine + (1 - 2 * ep) * consts[i, 2 * m + p * (m + 1) + t]


@_jit
def _poly(coef: np.ndarray, j: int, t: int, o: np.int64) -> np.int64:
    """``sum_u coef[j, t, u] o^u`` (Horner, wrapping)."""
    acc = np.int64(0)
    for u in range(coef.shape[2] - 1, -1, -1):
        acc = acc * o + coef[j, t, u]
    return acc
