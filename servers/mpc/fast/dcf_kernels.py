"""Compiled per-level passes of the DCF tree walk (:mod:`~ppml.servers.mpc.fast.dcf`).

A tree level is one fixed-key AES call over all elements (``FixedKeyPRG.mmo``,
OpenSSL, AES-NI) and element-wise work around it: select a side, correct the
seed under the control bit, accumulate value corrections, tweak the next
level's AES input. In numpy that work was about ten memory-bound passes over
``(n,)`` arrays per level; here it is one numba-compiled loop over the
elements per level (:func:`eval_level`, :func:`gen_level`), which also writes
the next level's MMO input, so the AES input and output are the only arrays a
level streams through. The arithmetic, bit layout and tweaks are exactly
those the module doc of :mod:`~ppml.servers.mpc.fast.dcf` describes: keys and
shares are bit-identical to the numpy passes these loops replaced.

All arithmetic is on ``uint64`` (states, tweaks) or ``int64`` (ring values,
wrapping mod 2^64 as numpy's does); the two are never mixed in one operation
(numba would promote them to float64). Kernels are compiled lazily on first
use and cached next to this file (``cache=True``): the first process on a
fresh checkout compiles them (a few seconds), later ones load them. They hold
no GIL (``nogil=True``), so a party's network threads keep running.

This module imports numba, which costs about 0.7 s per process:
:mod:`~ppml.servers.mpc.fast.dcf` imports it on first use only.
"""

from __future__ import annotations

import numba
import numpy as np

_ONE = np.uint64(1)
_ZERO = np.uint64(0)
_CLEAR_LSB = np.uint64(0xFFFF_FFFF_FFFF_FFFE)
_VALUE_SHIFT = np.uint64(1)  # a one-bit payload's level value: bit 1 of the expanded block
_CLEAR_VALUE_BIT = np.uint64(0xFFFF_FFFF_FFFF_FFFD)
_SIDE_SHIFT = np.uint64(16)  # the row (side) field of a tweak's high word (prg.tweak_table)
_LEVEL_SHIFT = np.uint64(1)  # level + 1 in bits 1..7 of the tweak's low word

_jit = numba.njit(cache=True, nogil=True)


@_jit
def _level_word(level: int) -> np.uint64:
    """Tree level ``level``'s tweak in the low word: ``(level + 1) << 1``."""
    return np.uint64(level + 1) << _LEVEL_SHIFT


@_jit
def eval_prepare(
    state: np.ndarray, x: np.ndarray, depth: int, j0: int, ids: np.ndarray, block_hi: np.ndarray,
    inp: np.ndarray,
) -> None:  # fmt: skip
    """Level 0's MMO input ``inp`` (blocks, 2m) for elements ``j0 .. j0 + m - 1``.

    ``state`` and ``ids`` are flat (2n,) views of (n, 2) arrays, ``inp`` of
    (blocks, m, 2). Block ``b`` of element ``j``: its state XOR the level word
    (low word), the input's side in the row field, the block's tweak
    ``block_hi[b]`` (high word) and the element's instance tweak ``ids[j]``.
    """
    m = inp.shape[1] // 2
    shift = np.uint64(depth - 1)
    lw = _level_word(0)
    for c in range(m):
        j = j0 + c
        side = (x[j] >> shift) & _ONE
        lo = state[2 * j] ^ lw ^ ids[2 * j]
        hi = state[2 * j + 1] ^ (side << _SIDE_SHIFT) ^ ids[2 * j + 1]
        for b in range(inp.shape[0]):
            inp[b, 2 * c] = lo
            inp[b, 2 * c + 1] = hi ^ block_hi[b]


@_jit
def eval_level(
    out: np.ndarray, state: np.ndarray, x: np.ndarray, depth: int, level: int, j0: int,
    seed_cw: np.ndarray, t_cw: np.ndarray, v_cw: np.ndarray, compact: bool, acc: np.ndarray,
    ids: np.ndarray, block_hi: np.ndarray, inp: np.ndarray, tmask: np.ndarray,
) -> None:  # fmt: skip
    """Absorb level ``level``'s MMO output ``out`` (blocks, 2m) of elements ``j0 ..``.

    Per element ``j``: the next state is block 0, its value bit taken out when
    ``compact`` (one one-bit lane: ``acc[0, j] +=`` bit 1), else ``acc[w, j] +=``
    word ``w`` of blocks 1..; under the entering control bit ``t`` (as an
    all-ones mask, no branch) the seed correction, with the input side's
    control-bit correction in bit 0, is XORed in and ``v_cw[level]`` added.
    Below the last level the next level's MMO input goes to ``inp``, as
    :func:`eval_prepare` makes it. Lanes 0 and 1 and the first value block are
    done in the element loop; further lanes and blocks (rare) in short passes
    after it, with the masks kept in ``tmask`` (m,). Flat arrays as in
    :func:`eval_prepare`.
    """
    m = out.shape[1] // 2
    k, nb = acc.shape[0], out.shape[0]
    shift = np.uint64(depth - 1 - level)
    nshift = np.uint64(max(depth - 2 - level, 0))
    last = level + 1 == depth
    lw = _level_word(level + 1)
    j1 = j0 + m
    st, xs, ids = state[2 * j0 : 2 * j1], x[j0:j1], ids[2 * j0 : 2 * j1]
    slo, shi, tc = seed_cw[level, 0, j0:j1], seed_cw[level, 1, j0:j1], t_cw[level, j0:j1]
    a0, v0 = acc[0, j0:j1], v_cw[level, 0, j0:j1]
    a1, v1 = acc[min(1, k - 1), j0:j1], v_cw[level, min(1, k - 1), j0:j1]
    o0, o1 = out[0], out[min(1, nb - 1)]
    i0, i1 = inp[0], inp[min(1, nb - 1)]
    bh0, bh1 = block_hi[0], block_hi[min(1, nb - 1)]
    for c in range(m):
        tm = _ZERO - (st[2 * c] & _ONE)  # all ones under the entering control bit
        itm = np.int64(tm)
        s0, s1 = o0[2 * c], o0[2 * c + 1]
        xj = xs[c]
        tcw = (np.uint64(tc[c]) >> ((xj >> shift) & _ONE)) & _ONE
        if compact:
            a0[c] += np.int64((s0 >> _VALUE_SHIFT) & _ONE) + (v0[c] & itm)
            s0 &= _CLEAR_VALUE_BIT
        else:
            a0[c] += np.int64(o1[2 * c]) + (v0[c] & itm)
            if k > 1:
                a1[c] += np.int64(o1[2 * c + 1]) + (v1[c] & itm)
        if k > 2:
            tmask[c] = itm
        s0 ^= (slo[c] | tcw) & tm
        s1 ^= shi[c] & tm
        st[2 * c], st[2 * c + 1] = s0, s1
        if not last:
            lo = s0 ^ lw ^ ids[2 * c]
            hi = s1 ^ (((xj >> nshift) & _ONE) << _SIDE_SHIFT) ^ ids[2 * c + 1]
            i0[2 * c], i0[2 * c + 1] = lo, hi ^ bh0
            if nb > 1:
                i1[2 * c], i1[2 * c + 1] = lo, hi ^ bh1
    for w in range(2, k):
        row, v, o, h = acc[w, j0:j1], v_cw[level, w, j0:j1], out[1 + w // 2], w % 2
        for c in range(m):
            row[c] += np.int64(o[2 * c + h]) + (v[c] & tmask[c])
    if not last:
        for b in range(2, nb):
            d, dst = block_hi[b] ^ bh0, inp[b]
            for c in range(m):
                dst[2 * c], dst[2 * c + 1] = i0[2 * c], i0[2 * c + 1] ^ d


@_jit
def gen_prepare(state: np.ndarray, ids: np.ndarray, table_hi: np.ndarray, inp: np.ndarray) -> None:
    """Level 0's MMO input ``inp`` (party, side, block, n, 2) from both parties' roots (2, n, 2).

    ``table_hi`` (side, block): the tweak table's high words (its low words are 0).
    """
    _gen_input(state, 0, ids, table_hi, inp)


@_jit
def _gen_input(
    state: np.ndarray, level: int, ids: np.ndarray, table_hi: np.ndarray, inp: np.ndarray
) -> None:
    lw = _level_word(level)
    for j in range(state.shape[1]):
        _gen_input_at(state, j, lw, ids, table_hi, inp)


@_jit
def _gen_input_at(
    state: np.ndarray, j: int, lw: np.uint64, ids: np.ndarray, table_hi: np.ndarray,
    inp: np.ndarray,
) -> None:  # fmt: skip
    for p in range(2):
        lo = state[p, j, 0] ^ lw ^ ids[j, 0]
        hi = state[p, j, 1] ^ ids[j, 1]
        for s in range(2):
            for b in range(inp.shape[2]):
                inp[p, s, b, j, 0] = lo
                inp[p, s, b, j, 1] = hi ^ table_hi[s, b]


@_jit
def gen_level(
    out: np.ndarray, state: np.ndarray, alpha: np.ndarray, depth: int, level: int,
    beta: np.ndarray, masks: np.ndarray, compact: bool, v_alpha: np.ndarray,
    seed_cw: np.ndarray, t_cw: np.ndarray, v_cw: np.ndarray,
    ids: np.ndarray, table_hi: np.ndarray, inp: np.ndarray,
) -> None:  # fmt: skip
    """The dealer's level ``level``: correction words from the expansions ``out``.

    ``out`` (party, side, block, n, 2) expands both parties' states (2, n, 2).
    Per element, with ``a`` alpha's bit (keep the right child iff 1): the seed
    correction is the lost side's two states XORed (bit 0 cleared), the control
    bit corrections ``tl = t_0L ^ t_1L ^ a ^ 1`` and ``tr = t_0R ^ t_1R ^ a``,
    the value correction ``sign (v_1,lose - v_0,lose - V + beta a) mod 2^b``
    with ``sign = 1 - 2 t_1`` and ``V`` (``v_alpha``) updated by the kept side;
    each party's next state is its kept child, corrected under its control bit.
    Writes ``seed_cw[level]``, ``t_cw[level]``, ``v_cw[level]``, then the next
    level's MMO input to ``inp`` below the last level.
    """
    n, k = state.shape[1], beta.shape[0]
    shift = np.uint64(depth - 1 - level)
    last = level + 1 == depth
    lw = _level_word(level + 1)
    lo = np.empty((2, 2), dtype=np.uint64)
    hi = np.empty((2, 2), dtype=np.uint64)
    vals = np.empty((2, 2, k), dtype=np.int64)
    for j in range(n):
        a = (alpha[j] >> shift) & _ONE
        keep, lose = int(a), 1 - int(a)
        for p in range(2):
            for s in range(2):
                blo = out[p, s, 0, j, 0]
                if compact:
                    vals[p, s, 0] = np.int64((blo >> _VALUE_SHIFT) & _ONE)
                    blo &= _CLEAR_VALUE_BIT
                else:
                    for w in range(k):
                        vals[p, s, w] = np.int64(out[p, s, 1 + w // 2, j, w % 2])
                lo[p, s] = blo
                hi[p, s] = out[p, s, 0, j, 1]
        t0 = state[0, j, 0] & _ONE
        t1 = state[1, j, 0] & _ONE
        scw_lo = (lo[0, lose] ^ lo[1, lose]) & _CLEAR_LSB
        scw_hi = hi[0, lose] ^ hi[1, lose]
        sign = np.int64(1) - np.int64(2) * np.int64(t1)
        ai = np.int64(a)
        for w in range(k):
            vcw = sign * (vals[1, lose, w] - vals[0, lose, w] - v_alpha[w, j])
            vcw = (vcw + sign * beta[w, j] * ai) & masks[w]
            v_alpha[w, j] = v_alpha[w, j] - vals[1, keep, w] + vals[0, keep, w] + sign * vcw
            v_cw[level, w, j] = vcw
        tl = (lo[0, 0] ^ lo[1, 0] ^ a ^ _ONE) & _ONE
        tr = (lo[0, 1] ^ lo[1, 1] ^ a) & _ONE
        tcw_keep = tr if keep else tl
        seed_cw[level, 0, j] = scw_lo
        seed_cw[level, 1, j] = scw_hi
        t_cw[level, j] = np.uint8(tl | (tr << _ONE))
        state[0, j, 0] = lo[0, keep] ^ (t0 * (scw_lo | tcw_keep))
        state[0, j, 1] = hi[0, keep] ^ (t0 * scw_hi)
        state[1, j, 0] = lo[1, keep] ^ (t1 * (scw_lo | tcw_keep))
        state[1, j, 1] = hi[1, keep] ^ (t1 * scw_hi)
        if not last:
            _gen_input_at(state, j, lw, ids, table_hi, inp)
