"""The DCF's tree walks as plain numpy passes: the reference for the compiled kernels.

This is :mod:`ppml.servers.mpc.fast.dcf`'s key generation and evaluation as they
were before the per-level work moved into :mod:`ppml.servers.mpc.fast.dcf_kernels`
(about ten numpy passes per level; the "tabled" walk tables every level's
public inputs first). Tests check that the package's keys and shares equal
these bit for bit, so keys made before and after the change interoperate.
"""

from __future__ import annotations

import numpy as np

from ppml.servers.mpc.fast.dcf import (
    _CLEAR_LSB,
    _CLEAR_VALUE_BIT,
    _LEVEL_SALT,
    _LEVEL_SHIFT,
    _ONE,
    _SIDE_BIT,
    _VALUE_BIT,
    DCFKey,
    _at_level,
    _check_domain,
    _compact,
    _convert,
    _lane_masks,
    _tweaks,
    _words,
    leaf_correction,
    leaf_levels,
    value_blocks,
)
from ppml.servers.mpc.fast.prg import (
    U64,
    FixedKeyPRG,
    KeyedPRG,
    Ring,
    instance_start,
    instance_tweaks,
)


def gen(
    alpha: U64,
    beta: Ring,
    depth: int,
    rng: KeyedPRG,
    prg: FixedKeyPRG | None = None,
    lane_bits: tuple[int, ...] | None = None,
) -> tuple[DCFKey, DCFKey]:
    """Keys for ``n`` DCFs ``x -> beta_j * 1{x < alpha_j}`` on ``depth``-bit inputs.

    ``alpha``: (n,) values in ``[0, 2^depth)``; ``beta``: (k, n) int64;
    ``lane_bits``: modulus exponent per lane (default 64 each). Root seeds and
    the key set's nonce come from the secret stream ``rng``.
    """
    alpha = _check_domain(alpha, depth, "alpha")
    beta = np.asarray(beta, dtype=np.int64)
    n = alpha.size
    if beta.ndim != 2 or beta.shape[1] != n:
        raise ValueError("beta must have shape (k, n)")
    k = beta.shape[0]
    lanes = (64,) * k if lane_bits is None else tuple(lane_bits)
    if len(lanes) != k or not all(1 <= b <= 64 for b in lanes):
        raise ValueError("need one lane width in 1..64 per payload element")
    masks = _lane_masks(lanes).view(np.int64)
    compact = _compact(lanes)
    nv = 0 if compact else value_blocks(k)
    prg = prg or FixedKeyPRG()
    state = rng.seeds(2 * n).reshape(2, n, 2)
    nonces = instance_start(rng)[None] if n else np.zeros((0, 2), dtype=np.uint64)
    runs = np.array([n] if n else [], dtype=np.int64)
    ids = instance_tweaks(nonces, runs)
    tw = _tweaks(2, 1 + nv, ids, _LEVEL_SALT)  # (side, block, n, 2)
    state[0, :, 0] &= _CLEAR_LSB  # t_0 = 0
    state[1, :, 0] |= _ONE  # t_1 = 1
    roots = state.copy()
    leaf = leaf_levels(depth, lanes)  # early termination: the tree stops above the leaves
    v_alpha = np.zeros((k, n), dtype=np.int64)
    seed_cw = np.empty((depth - leaf, 2, n), dtype=np.uint64)
    t_cw = np.empty((depth - leaf, n), dtype=np.uint8)
    v_cw = np.empty((depth - leaf, k, n), dtype=np.int64)
    with np.errstate(over="ignore"):
        for i in range(depth - leaf):
            a = (alpha >> np.uint64(depth - 1 - i)) & _ONE
            keep = a.astype(bool)  # keep the right child iff alpha's bit is 1
            t = state[:, :, 0] & _ONE  # (party, n)
            out = prg.mmo(_at_level(state, i)[:, None, None] ^ tw)  # (party, side, block, n, 2)
            lo, hi = out[:, :, 0, :, 0], out[:, :, 0, :, 1]  # (party, side, n)
            if compact:  # the value bit leaves the state: the seed keeps 126 fresh bits
                vals = ((lo >> _VALUE_BIT) & _ONE).view(np.int64)[:, :, None]  # (party, side, 1, n)
                lo &= _CLEAR_VALUE_BIT
            else:
                vals = _words(out[:, :, 1:], k).view(np.int64)  # (party, side, k, n)
            lo_keep, lo_lose = (
                np.where(keep, lo[:, 1], lo[:, 0]),
                np.where(keep, lo[:, 0], lo[:, 1]),
            )
            hi_keep, hi_lose = (
                np.where(keep, hi[:, 1], hi[:, 0]),
                np.where(keep, hi[:, 0], hi[:, 1]),
            )
            v_keep = np.where(keep, vals[:, 1], vals[:, 0])
            v_lose = np.where(keep, vals[:, 0], vals[:, 1])
            scw_lo = (lo_lose[0] ^ lo_lose[1]) & _CLEAR_LSB
            scw_hi = hi_lose[0] ^ hi_lose[1]
            sign = 1 - 2 * t[1].view(np.int64)
            vcw = sign * (v_lose[1] - v_lose[0] - v_alpha) + sign * beta * a.view(np.int64)
            vcw &= masks  # only the lane's residue travels: it is masked by a uniform PRG output
            v_alpha = v_alpha - v_keep[1] + v_keep[0] + sign * vcw
            tbit = lo & _ONE  # (party, side, n)
            tl = tbit[0, 0] ^ tbit[1, 0] ^ a ^ _ONE
            tr = tbit[0, 1] ^ tbit[1, 1] ^ a
            tcw_keep = np.where(keep, tr, tl)
            state = np.stack([lo_keep ^ (t * (scw_lo | tcw_keep)), hi_keep ^ (t * scw_hi)], axis=-1)
            seed_cw[i, 0], seed_cw[i, 1] = scw_lo, scw_hi
            t_cw[i] = (tl | (tr << _ONE)).astype(np.uint8)
            v_cw[i] = vcw
        if leaf:
            final_cw = leaf_correction(prg, state, alpha, beta[0], v_alpha[0], ids)
        else:
            conv = _convert(prg, state, k, ids)  # (party, k, n)
            sign = 1 - 2 * (state[1, :, 0] & _ONE).view(np.int64)
            final_cw = (sign * (conv[1] - conv[0] - v_alpha)) & masks
    return tuple(
        DCFKey(b, roots[b], seed_cw, t_cw, v_cw, final_cw, lanes, nonces, runs, leaf)
        for b in (0, 1)
    )


def evaluate(
    key: DCFKey, x: U64, prg: FixedKeyPRG | None = None, tabled: bool | None = None
) -> Ring:
    """This party's shares (k, n) of ``beta * 1{x < alpha}`` at the public points ``x`` (n,).

    Lane ``i`` is reduced to ``[0, 2^b_i)``; only its residue mod ``2^b_i`` is meaningful.
    ``tabled`` picks the tree walk (default: by size, as the package chose); both give
    the same shares.
    """
    x = _check_domain(x, key.depth, "x")
    if x.size != key.size:
        raise ValueError(f"{x.size} inputs for {key.size} DCF keys")
    n, k = key.size, key.width
    prg = prg or FixedKeyPRG()
    ids = key.instance_tweaks
    if tabled is None:
        tabled = key.depth * n <= 1 << 14
    with np.errstate(over="ignore"):
        state, acc = (_walk_tabled if tabled else _walk)(key, x, prg, ids)
        if key.leaf:
            acc[0] += _leaf_bits(prg, key, state, x, ids)
        else:
            acc += _convert(prg, state, k, ids)
            acc += key.final_cw * (state[:, 0] & _ONE).view(np.int64)
        if key.party == 1:
            np.negative(acc, out=acc)
        if any(b < 64 for b in key.lane_bits):
            acc &= _lane_masks(key.lane_bits).view(np.int64)
    return acc


def _walk(key: DCFKey, x: U64, prg: FixedKeyPRG, ids: U64) -> tuple[U64, Ring]:
    """The tree walk level by level: the final states and the levels' value shares (k, n).

    Each level computes its own public inputs; for many elements this is the
    least memory traffic.
    """
    n, k = key.size, key.width
    compact = _compact(key.lane_bits)
    nv = 0 if compact else value_blocks(k)
    tw = _tweaks(1, 1 + nv, ids, _LEVEL_SALT)[0]  # side-0 tweaks (block, n, 2)
    state = key.seeds
    acc_blocks = np.zeros((nv, n, 2), dtype=np.uint64)
    acc = np.zeros((k, n), dtype=np.int64)
    for i in range(key.levels):
        side = (x >> np.uint64(key.depth - 1 - i)) & _ONE
        tweaked = _at_level(state, i)
        tweaked[:, 1] ^= side << _SIDE_BIT
        out = prg.mmo(tweaked[None] ^ tw)  # (block, n, 2)
        t = state[:, 0] & _ONE
        tcw = (key.t_cw[i] >> side.astype(np.uint8)) & np.uint8(1)
        state = out[0]
        if compact:
            acc[0] += ((state[:, 0] >> _VALUE_BIT) & _ONE).view(np.int64)
            state[:, 0] &= _CLEAR_VALUE_BIT
        else:
            acc_blocks += out[1:]
        state[:, 0] ^= (key.seed_cw[i, 0] | tcw) * t
        state[:, 1] ^= key.seed_cw[i, 1] * t
        acc += key.v_cw[i] * t.view(np.int64)
    if not compact:
        acc += _words(acc_blocks, k).view(np.int64)
    return state, acc


def _walk_tabled(key: DCFKey, x: U64, prg: FixedKeyPRG, ids: U64) -> tuple[U64, Ring]:
    """The same walk with every public input tabled for all levels first.

    The path's sides, the MMO inputs' tweaks (instance and block, level in the
    low word and side in the high word, as :func:`_at_level` and :func:`_walk`
    set them) and the seed corrections with the chosen side's control-bit
    correction: a level then costs a few array operations, which is what
    matters for few elements (a single image), where each operation's fixed
    cost dominates.
    """
    n, k, depth = key.size, key.width, key.levels
    compact = _compact(key.lane_bits)
    nv = 0 if compact else value_blocks(k)
    shifts = np.arange(key.depth - 1, key.depth - 1 - depth, -1, dtype=np.uint64)[:, None]
    sides = (x[None] >> shifts) & _ONE  # (depth, n)
    tweaks = np.empty((depth, 1 + nv, n, 2), dtype=np.uint64)
    tweaks[:] = _tweaks(1, 1 + nv, ids, _LEVEL_SALT)[0]
    tweaks[..., 0] ^= (np.arange(1, depth + 1, dtype=np.uint64) << _LEVEL_SHIFT)[:, None, None]
    tweaks[..., 1] ^= (sides << _SIDE_BIT)[:, None]
    tcw = (key.t_cw >> sides.astype(np.uint8)) & np.uint8(1)
    corrections = np.stack([key.seed_cw[:, 0] | tcw, key.seed_cw[:, 1]], axis=-1)  # (depth, n, 2)
    state = key.seeds
    ts = np.empty((depth, n, 1), dtype=np.uint64)  # the control bit entering each level
    raw = np.empty((depth, n), dtype=np.uint64) if compact else None
    acc_blocks = np.zeros((nv, n, 2), dtype=np.uint64)
    for i in range(depth):
        np.bitwise_and(state[:, :1], _ONE, out=ts[i])
        out = prg.mmo(state[None] ^ tweaks[i])  # (block, n, 2)
        state = out[0]
        if raw is not None:
            raw[i] = state[:, 0]
            state[:, 0] &= _CLEAR_VALUE_BIT
        else:
            acc_blocks += out[1:]
        state ^= corrections[i] * ts[i]
    acc = (key.v_cw * ts[:, :, 0].view(np.int64)[:, None]).sum(axis=0)  # wraps, like the ring
    if raw is not None:
        acc[0] += ((raw >> _VALUE_BIT) & _ONE).view(np.int64).sum(axis=0)
    else:
        acc += _words(acc_blocks, k).view(np.int64)
    return state, acc


def _leaf_bits(prg: FixedKeyPRG, key: DCFKey, state: U64, x: U64, ids: U64) -> Ring:
    """This party's leaf bits (n,): bit ``x mod 128`` of its converted state, corrected."""
    block = _convert(prg, state, 2, ids).view(np.uint64)  # (2, n)
    t = np.uint64(0) - (state[:, 0] & _ONE)  # all ones under the control bit
    block ^= key.final_cw.view(np.uint64) & t
    low = x & np.uint64(127)
    word = np.where(low >> np.uint64(6) == _ONE, block[1], block[0])
    out: Ring = ((word >> (low & np.uint64(63))) & _ONE).view(np.int64)
    return out
