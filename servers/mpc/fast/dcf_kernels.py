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
_LEAF_BITS = np.uint64(127)  # a leaf's 128 bits: x's low 7 bits pick one
_HALF_SHIFT = np.uint64(6)  # bit 6 of that: the leaf's high word
_WORD_MASK = np.uint64(63)

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
    """Absorb level ``level``'s MMO output of elements ``j0 ..``: ``out`` (blocks, 2m) is the
    AES output alone, and the MMO's ``XOR input`` is done here, from ``inp`` before it is
    overwritten with the next level's input.

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
        s0, s1 = o0[2 * c] ^ i0[2 * c], o0[2 * c + 1] ^ i0[2 * c + 1]
        xj = xs[c]
        tcw = (np.uint64(tc[c]) >> ((xj >> shift) & _ONE)) & _ONE
        if compact:
            a0[c] += np.int64((s0 >> _VALUE_SHIFT) & _ONE) + (v0[c] & itm)
            s0 &= _CLEAR_VALUE_BIT
        else:
            a0[c] += np.int64(o1[2 * c] ^ i1[2 * c]) + (v0[c] & itm)
            if k > 1:
                a1[c] += np.int64(o1[2 * c + 1] ^ i1[2 * c + 1]) + (v1[c] & itm)
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
    for w in range(2, k):  # blocks 2.. of inp still hold this level's input
        row, v, o, h = acc[w, j0:j1], v_cw[level, w, j0:j1], out[1 + w // 2], w % 2
        blk = inp[1 + w // 2]
        for c in range(m):
            row[c] += np.int64(o[2 * c + h] ^ blk[2 * c + h]) + (v[c] & tmask[c])
    if not last:
        for b in range(2, nb):
            d, dst = block_hi[b] ^ bh0, inp[b]
            for c in range(m):
                dst[2 * c], dst[2 * c + 1] = i0[2 * c], i0[2 * c + 1] ^ d


@_jit
def gen_prepare(
    state: np.ndarray, j0: int, ids: np.ndarray, table_hi: np.ndarray, inp: np.ndarray
) -> None:
    """Level 0's MMO input ``inp`` (party, side, block, 2m) for elements ``j0 .. j0 + m - 1``.

    ``state`` (party, 2n) and ``ids`` (2n,) are flat views of (.., n, 2)
    arrays; ``table_hi`` (side, block) the tweak table's high words (its low
    words are 0). Entry (p, s, b) of element ``j``: party ``p``'s state XOR
    the level word (low word), ``table_hi[s, b]`` (high word) and ``ids[j]``.
    """
    lw = _level_word(0)
    for c in range(inp.shape[3] // 2):
        j = j0 + c
        for p in range(2):
            lo = state[p, 2 * j] ^ lw ^ ids[2 * j]
            hi = state[p, 2 * j + 1] ^ ids[2 * j + 1]
            for s in range(2):
                for b in range(inp.shape[2]):
                    inp[p, s, b, 2 * c] = lo
                    inp[p, s, b, 2 * c + 1] = hi ^ table_hi[s, b]


@_jit
def _pick(bit_mask: np.uint64, zero: np.uint64, one: np.uint64) -> np.uint64:
    """``one`` where ``bit_mask`` is all ones, ``zero`` where it is 0 (no branch)."""
    return zero ^ ((zero ^ one) & bit_mask)


@_jit
def _ipick(bit: np.int64, zero: np.int64, one: np.int64) -> np.int64:
    """``one`` if ``bit`` (0 or 1) else ``zero``, on ring values (no branch)."""
    return zero ^ ((zero ^ one) & (np.int64(0) - bit))


@_jit
def gen_level(
    out: np.ndarray, state: np.ndarray, alpha: np.ndarray, depth: int, level: int, j0: int,
    beta: np.ndarray, masks: np.ndarray, compact: bool, v_alpha: np.ndarray,
    seed_cw: np.ndarray, t_cw: np.ndarray, v_cw: np.ndarray,
    ids: np.ndarray, table_hi: np.ndarray, inp: np.ndarray, scratch: np.ndarray,
) -> None:  # fmt: skip
    """The dealer's level ``level`` for elements ``j0 ..``: correction words from ``out``.

    ``out`` (party, side, block, 2m) expands both parties' states (flat as in
    :func:`gen_prepare`). Per element, with ``a`` alpha's bit (keep the right
    child iff 1): the seed correction is the lost side's two states XORed (bit
    0 cleared), the control-bit corrections ``tl = t_0L ^ t_1L ^ a ^ 1`` and
    ``tr = t_0R ^ t_1R ^ a``, the value correction of lane ``w``
    ``sign (v_1,lose - v_0,lose - V + beta a) mod 2^b_w`` with ``sign = 1 - 2 t_1``
    and ``V`` (``v_alpha``) then updated by the kept side; each party's next
    state is its kept child, corrected under its control bit. Writes
    ``seed_cw[level]``, ``t_cw[level]``, ``v_cw[level]`` and, below the last
    level, the next level's MMO input to ``inp``. Lanes 0 and 1 and the first
    value block are done in the element loop, further ones (rare) in passes
    after it, with ``a`` and ``sign`` kept in ``scratch`` (2, m).
    """
    m = out.shape[3] // 2
    k, nb = beta.shape[0], out.shape[2]
    k2 = min(1, k - 1)
    vb = min(1, nb - 1)
    shift = np.uint64(depth - 1 - level)
    last = level + 1 == depth
    lw = _level_word(level + 1)
    j1 = j0 + m
    xa, ids = alpha[j0:j1], ids[2 * j0 : 2 * j1]
    st0, st1 = state[0, 2 * j0 : 2 * j1], state[1, 2 * j0 : 2 * j1]
    scw0, scw1, tcw = seed_cw[level, 0, j0:j1], seed_cw[level, 1, j0:j1], t_cw[level, j0:j1]
    va0, va1 = v_alpha[0, j0:j1], v_alpha[k2, j0:j1]
    b0, b1 = beta[0, j0:j1], beta[k2, j0:j1]
    vc0, vc1 = v_cw[level, 0, j0:j1], v_cw[level, k2, j0:j1]
    mask0, mask1 = masks[0], masks[k2]
    o00, o01, o10, o11 = out[0, 0, 0], out[0, 1, 0], out[1, 0, 0], out[1, 1, 0]
    w00, w01, w10, w11 = out[0, 0, vb], out[0, 1, vb], out[1, 0, vb], out[1, 1, vb]
    for c in range(m):
        a = (xa[c] >> shift) & _ONE
        am = _ZERO - a
        ai = np.int64(a)
        lo00, lo01, lo10, lo11 = o00[2 * c], o01[2 * c], o10[2 * c], o11[2 * c]
        hi00, hi01, hi10, hi11 = o00[2 * c + 1], o01[2 * c + 1], o10[2 * c + 1], o11[2 * c + 1]
        if compact:  # the value bit leaves the state: the seed keeps 126 fresh bits
            v00 = np.int64((lo00 >> _VALUE_SHIFT) & _ONE)
            v01 = np.int64((lo01 >> _VALUE_SHIFT) & _ONE)
            v10 = np.int64((lo10 >> _VALUE_SHIFT) & _ONE)
            v11 = np.int64((lo11 >> _VALUE_SHIFT) & _ONE)
            lo00 &= _CLEAR_VALUE_BIT
            lo01 &= _CLEAR_VALUE_BIT
            lo10 &= _CLEAR_VALUE_BIT
            lo11 &= _CLEAR_VALUE_BIT
        else:
            v00, v01 = np.int64(w00[2 * c]), np.int64(w01[2 * c])
            v10, v11 = np.int64(w10[2 * c]), np.int64(w11[2 * c])
        t0m = _ZERO - (st0[2 * c] & _ONE)
        t1 = st1[2 * c] & _ONE
        t1m = _ZERO - t1
        sign = np.int64(1) - np.int64(2) * np.int64(t1)
        lo0k, lo1k = _pick(am, lo00, lo01), _pick(am, lo10, lo11)
        hi0k, hi1k = _pick(am, hi00, hi01), _pick(am, hi10, hi11)
        scw_lo = (_pick(am, lo01, lo00) ^ _pick(am, lo11, lo10)) & _CLEAR_LSB
        scw_hi = _pick(am, hi01, hi00) ^ _pick(am, hi11, hi10)
        v0k, v1k = _ipick(ai, v00, v01), _ipick(ai, v10, v11)
        v0l, v1l = _ipick(ai, v01, v00), _ipick(ai, v11, v10)
        vcw = (sign * (v1l - v0l - va0[c]) + sign * b0[c] * ai) & mask0
        va0[c] = va0[c] - v1k + v0k + sign * vcw
        vc0[c] = vcw
        if k > 1 and not compact:
            v00, v01 = np.int64(w00[2 * c + 1]), np.int64(w01[2 * c + 1])
            v10, v11 = np.int64(w10[2 * c + 1]), np.int64(w11[2 * c + 1])
            v0k, v1k = _ipick(ai, v00, v01), _ipick(ai, v10, v11)
            v0l, v1l = _ipick(ai, v01, v00), _ipick(ai, v11, v10)
            vcw = (sign * (v1l - v0l - va1[c]) + sign * b1[c] * ai) & mask1
            va1[c] = va1[c] - v1k + v0k + sign * vcw
            vc1[c] = vcw
        if k > 2:
            scratch[0, c], scratch[1, c] = ai, sign
        tl = (lo00 ^ lo10 ^ a ^ _ONE) & _ONE
        tr = (lo01 ^ lo11 ^ a) & _ONE
        corr = scw_lo | _pick(am, tl, tr)
        scw0[c], scw1[c] = scw_lo, scw_hi
        tcw[c] = np.uint8(tl | (tr << _ONE))
        s0lo, s0hi = lo0k ^ (t0m & corr), hi0k ^ (t0m & scw_hi)
        s1lo, s1hi = lo1k ^ (t1m & corr), hi1k ^ (t1m & scw_hi)
        st0[2 * c], st0[2 * c + 1] = s0lo, s0hi
        st1[2 * c], st1[2 * c + 1] = s1lo, s1hi
        if not last:
            l0, h0 = s0lo ^ lw ^ ids[2 * c], s0hi ^ ids[2 * c + 1]
            l1, h1 = s1lo ^ lw ^ ids[2 * c], s1hi ^ ids[2 * c + 1]
            for b in range(min(2, nb)):
                for side in range(2):
                    th = table_hi[side, b]
                    inp[0, side, b, 2 * c], inp[0, side, b, 2 * c + 1] = l0, h0 ^ th
                    inp[1, side, b, 2 * c], inp[1, side, b, 2 * c + 1] = l1, h1 ^ th
    if k > 2:
        _gen_lanes(out, level, j0, beta, masks, v_alpha, v_cw, scratch)
    if not last:
        for b in range(2, nb):
            for p in range(2):
                for s in range(2):
                    d, src, dst = table_hi[s, b] ^ table_hi[s, 0], inp[p, s, 0], inp[p, s, b]
                    for c in range(m):
                        dst[2 * c], dst[2 * c + 1] = src[2 * c], src[2 * c + 1] ^ d


@_jit
def _gen_lanes(
    out: np.ndarray, level: int, j0: int, beta: np.ndarray, masks: np.ndarray,
    v_alpha: np.ndarray, v_cw: np.ndarray, scratch: np.ndarray,
) -> None:  # fmt: skip
    """:func:`gen_level`'s value corrections of lanes 2.. (``scratch``: ``a`` and ``sign``)."""
    m = out.shape[3] // 2
    for w in range(2, beta.shape[0]):
        bl, h = 1 + w // 2, w % 2
        w00, w01, w10, w11 = out[0, 0, bl], out[0, 1, bl], out[1, 0, bl], out[1, 1, bl]
        va, bw, vc, mask = v_alpha[w, j0:], beta[w, j0:], v_cw[level, w, j0:], masks[w]
        for c in range(m):
            ai, sign = scratch[0, c], scratch[1, c]
            v00, v01 = np.int64(w00[2 * c + h]), np.int64(w01[2 * c + h])
            v10, v11 = np.int64(w10[2 * c + h]), np.int64(w11[2 * c + h])
            v0k, v1k = _ipick(ai, v00, v01), _ipick(ai, v10, v11)
            v0l, v1l = _ipick(ai, v01, v00), _ipick(ai, v11, v10)
            vcw = (sign * (v1l - v0l - va[c]) + sign * bw[c] * ai) & mask
            va[c] = va[c] - v1k + v0k + sign * vcw
            vc[c] = vcw


@_jit
def leaf_prepare(state: np.ndarray, ids: np.ndarray, table_hi: np.uint64, inp: np.ndarray) -> None:
    """The leaf's MMO input ``inp`` (flat 2n): each final state XOR its instance tweak, and the
    final conversion's tweak ``table_hi`` in the high word (dcf.py, ``_convert``, one block)."""
    for j in range(state.size // 2):
        inp[2 * j] = state[2 * j] ^ ids[2 * j]
        inp[2 * j + 1] = state[2 * j + 1] ^ ids[2 * j + 1] ^ table_hi


@_jit
def leaf_bits(
    out: np.ndarray, inp: np.ndarray, state: np.ndarray, final_cw: np.ndarray, x: np.ndarray,
    acc: np.ndarray,
) -> None:  # fmt: skip
    """``acc[j] +=`` bit ``x mod 128`` of element ``j``'s leaf: the MMO output (``out`` XOR
    ``inp``), corrected by ``final_cw`` (2, n) under the control bit (dcf.py, add_leaf_bits)."""
    for j in range(x.size):
        t = _ZERO - (state[2 * j] & _ONE)
        low = x[j] & _LEAF_BITS
        if low >> _HALF_SHIFT == _ONE:
            word = out[2 * j + 1] ^ inp[2 * j + 1] ^ (final_cw[1, j] & t)
        else:
            word = out[2 * j] ^ inp[2 * j] ^ (final_cw[0, j] & t)
        acc[j] += np.int64((word >> (low & _WORD_MASK)) & _ONE)
