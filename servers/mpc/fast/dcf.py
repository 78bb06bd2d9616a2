"""Distributed comparison functions (DCF), vectorised over many independent instances.

Construction: Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar, Rathee, "Function
Secret Sharing for Mixed-Mode and Fixed-Point Secure Computation", EUROCRYPT
2021, the DCF scheme (tree of 128-bit seeds with control bits, value
correction words in the output group at every level).

For each element ``j`` the dealer holds a threshold ``alpha_j`` in
``[0, 2^depth)`` and a payload ``beta_j`` in the group ``G = Z_2^64^k``
(``k`` ring elements, a *vector* payload, so one key yields shares of several
multiples of the same comparison bit). :func:`gen` returns two keys; the
invariant, for every ``x_j`` in ``[0, 2^depth)``::

    eval(key_0, x) + eval(key_1, x) == beta * 1{x < alpha}      (mod 2^64, per element)

Security: one key alone (root seed, shared correction words) is
computationally indistinguishable from a key for any other (alpha, beta) of the
same depth and width, given a PRG; here the PRG is fixed-key AES in MMO mode
with tweaks (:class:`~ppml.servers.mpc.fast.prg.FixedKeyPRG`), so a party
holding one key and the public input learns nothing about alpha or beta.

Key size per element and party: ``16 + depth * (16 + 1 + 8k) + 8k`` bytes
(root seed; per level a seed correction, both control-bit corrections packed in
one byte, a value correction of k ring elements; a final value correction). The
correction words are the same in both parties' keys; only the root seed
differs. Evaluation costs ``depth`` AES calls over ``n * (1 + ceil(k/2))``
blocks, plus one final call, for all ``n`` elements together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ppml.servers.mpc.fast.prg import U64, FixedKeyPRG, KeyedPRG, Ring, tweak_table

_ONE = np.uint64(1)
_CLEAR_LSB = np.uint64(0xFFFF_FFFF_FFFF_FFFE)
_LEVEL_SALT = 0  # tweaks of the per-level expansion (side, block)
_FINAL_SALT = 1  # tweaks of the final seed-to-group conversion


def value_blocks(width: int) -> int:
    """AES blocks needed per expansion for ``width`` ring elements (two per block)."""
    return (width + 1) // 2


@dataclass(frozen=True)
class DCFKey:
    """One party's keys for ``n`` DCF instances of one depth and payload width.

    ``seeds`` (n, 2) uint64 root seeds; ``seed_cw`` (depth, n, 2) uint64;
    ``t_cw`` (depth, n) uint8 with bit 0 = left and bit 1 = right control-bit
    correction; ``v_cw`` (depth, n, k) int64; ``final_cw`` (n, k) int64.
    """

    party: int
    seeds: U64
    seed_cw: U64
    t_cw: npt.NDArray[np.uint8]
    v_cw: Ring
    final_cw: Ring

    @property
    def depth(self) -> int:
        return int(self.seed_cw.shape[0])

    @property
    def size(self) -> int:
        return int(self.seeds.shape[0])

    @property
    def width(self) -> int:
        return int(self.final_cw.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of this key (all elements)."""
        return sum(
            a.nbytes for a in (self.seeds, self.seed_cw, self.t_cw, self.v_cw, self.final_cw)
        )

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Named arrays for serialisation (party id included)."""
        return {
            f"{prefix}.party": np.array([self.party], dtype=np.int64),
            f"{prefix}.seeds": self.seeds,
            f"{prefix}.seed_cw": self.seed_cw,
            f"{prefix}.t_cw": self.t_cw,
            f"{prefix}.v_cw": self.v_cw,
            f"{prefix}.final_cw": self.final_cw,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> DCFKey:
        """Inverse of :meth:`to_arrays`; checks shapes and dtypes."""
        key = cls(
            party=int(arrays[f"{prefix}.party"][0]),
            seeds=np.ascontiguousarray(arrays[f"{prefix}.seeds"], dtype=np.uint64),
            seed_cw=np.ascontiguousarray(arrays[f"{prefix}.seed_cw"], dtype=np.uint64),
            t_cw=np.ascontiguousarray(arrays[f"{prefix}.t_cw"], dtype=np.uint8),
            v_cw=np.ascontiguousarray(arrays[f"{prefix}.v_cw"], dtype=np.int64),
            final_cw=np.ascontiguousarray(arrays[f"{prefix}.final_cw"], dtype=np.int64),
        )
        key.check()
        return key

    def check(self) -> None:
        """Raise ValueError unless the arrays have consistent shapes."""
        d, n, k = self.depth, self.size, self.width
        if self.party not in (0, 1):
            raise ValueError("DCF key party must be 0 or 1")
        shapes = {
            "seeds": (self.seeds.shape, (n, 2)),
            "seed_cw": (self.seed_cw.shape, (d, n, 2)),
            "t_cw": (self.t_cw.shape, (d, n)),
            "v_cw": (self.v_cw.shape, (d, n, k)),
            "final_cw": (self.final_cw.shape, (n, k)),
        }
        for name, (got, want) in shapes.items():
            if got != want:
                raise ValueError(f"DCF key {name} has shape {got}, expected {want}")


def key_bytes_per_element(depth: int, width: int) -> int:
    """Bytes per element of one party's key (see the module docstring)."""
    return 16 + depth * (16 + 1 + 8 * width) + 8 * width


def _bits_msb_first(x: U64, depth: int) -> npt.NDArray[np.intp]:
    """(depth, n) array of the bits of ``x`` (bit depth-1 first)."""
    shifts = np.arange(depth - 1, -1, -1, dtype=np.uint64)[:, None]
    return ((x[None, :] >> shifts) & _ONE).astype(np.intp)


def _check_domain(x: U64, depth: int, what: str) -> U64:
    x = np.ascontiguousarray(x, dtype=np.uint64).reshape(-1)
    if not 1 <= depth <= 64:
        raise ValueError("DCF depth must be in 1..64")
    if depth < 64 and x.size and int(x.max()) >> depth:
        raise ValueError(f"{what} must lie in [0, 2^{depth})")
    return x


def _convert(prg: FixedKeyPRG, seeds: U64, width: int) -> Ring:
    """Map 128-bit seeds (..., 2) to ``width`` ring elements each: (..., width)."""
    nv = value_blocks(width)
    tw = tweak_table(1, nv, _FINAL_SALT)[0]  # (nv, 2)
    out = prg.mmo(seeds[..., None, :] ^ tw)  # (..., nv, 2)
    flat = out.reshape(*seeds.shape[:-1], 2 * nv)[..., :width]
    return np.ascontiguousarray(flat).view(np.int64)


def gen(
    alpha: U64, beta: Ring, depth: int, rng: KeyedPRG, prg: FixedKeyPRG | None = None
) -> tuple[DCFKey, DCFKey]:
    """Keys for ``n`` DCFs ``x -> beta_j * 1{x < alpha_j}`` on ``depth``-bit inputs.

    ``alpha``: (n,) values in ``[0, 2^depth)``; ``beta``: (n, k) int64. Root
    seeds come from the secret stream ``rng``.
    """
    alpha = _check_domain(alpha, depth, "alpha")
    beta = np.asarray(beta, dtype=np.int64)
    n = alpha.size
    if beta.ndim != 2 or beta.shape[0] != n:
        raise ValueError("beta must have shape (n, k)")
    k = beta.shape[1]
    nv = value_blocks(k)
    prg = prg or FixedKeyPRG()
    tw = tweak_table(2, 1 + nv, _LEVEL_SALT)  # (side, block, 2)
    s = rng.seeds(2 * n).reshape(2, n, 2)
    roots = s.copy()
    t = np.zeros((2, n), dtype=np.uint64)
    t[1] = 1
    v_alpha = np.zeros((n, k), dtype=np.int64)
    seed_cw = np.empty((depth, n, 2), dtype=np.uint64)
    t_cw = np.empty((depth, n), dtype=np.uint8)
    v_cw = np.empty((depth, n, k), dtype=np.int64)
    bits = _bits_msb_first(alpha, depth)
    ar = np.arange(n)
    with np.errstate(over="ignore"):
        for i in range(depth):
            keep = bits[i]
            lose = 1 - keep
            a = keep.astype(np.uint64)
            out = prg.mmo(s[:, :, None, None, :] ^ tw)  # (party, n, side, block, 2)
            seeds = out[:, :, :, 0, :]
            tbits = seeds[..., 0] & _ONE  # (party, n, side)
            seeds[..., 0] &= _CLEAR_LSB
            vals = np.ascontiguousarray(out[:, :, :, 1:, :]).reshape(2, n, 2, 2 * nv)
            vals = np.ascontiguousarray(vals[..., :k]).view(np.int64)  # (party, n, side, k)
            s_lose, s_keep = seeds[:, ar, lose], seeds[:, ar, keep]
            v_lose, v_keep = vals[:, ar, lose], vals[:, ar, keep]
            t_keep = tbits[:, ar, keep]
            scw = s_lose[0] ^ s_lose[1]
            sign = (1 - 2 * t[1].astype(np.int64))[:, None]
            vcw = sign * (v_lose[1] - v_lose[0] - v_alpha) + sign * beta * keep[:, None]
            v_alpha = v_alpha - v_keep[1] + v_keep[0] + sign * vcw
            tl = tbits[0, :, 0] ^ tbits[1, :, 0] ^ a ^ _ONE
            tr = tbits[0, :, 1] ^ tbits[1, :, 1] ^ a
            tcw_keep = np.where(keep == 1, tr, tl)
            s = s_keep ^ (scw[None] & (np.uint64(0) - t)[..., None])
            t = t_keep ^ (t & tcw_keep[None])
            seed_cw[i] = scw
            t_cw[i] = (tl | (tr << _ONE)).astype(np.uint8)
            v_cw[i] = vcw
        conv = _convert(prg, s, k)  # (party, n, k)
        sign = (1 - 2 * t[1].astype(np.int64))[:, None]
        final_cw = sign * (conv[1] - conv[0] - v_alpha)
    return tuple(  # type: ignore[return-value]
        DCFKey(b, roots[b], seed_cw, t_cw, v_cw, final_cw) for b in (0, 1)
    )


def evaluate(key: DCFKey, x: U64, prg: FixedKeyPRG | None = None) -> Ring:
    """This party's shares (n, k) of ``beta * 1{x < alpha}`` at the public points ``x`` (n,)."""
    x = _check_domain(x, key.depth, "x")
    if x.size != key.size:
        raise ValueError(f"{x.size} inputs for {key.size} DCF keys")
    n, k = key.size, key.width
    nv = value_blocks(k)
    prg = prg or FixedKeyPRG()
    tw = tweak_table(2, 1 + nv, _LEVEL_SALT)
    s = key.seeds
    t = np.full(n, key.party, dtype=np.uint64)
    acc = np.zeros((n, k), dtype=np.int64)
    bits = _bits_msb_first(x, key.depth)
    with np.errstate(over="ignore"):
        for i in range(key.depth):
            side = bits[i]
            out = prg.mmo(s[:, None, :] ^ tw[side])  # (n, block, 2)
            s_new = out[:, 0, :]
            t_new = s_new[:, 0] & _ONE
            s_new[:, 0] &= _CLEAR_LSB
            s_new ^= key.seed_cw[i] & (np.uint64(0) - t)[:, None]
            t_new ^= t & ((key.t_cw[i] >> side.astype(np.uint8)) & 1).astype(np.uint64)
            vals = out[:, 1:, :].reshape(n, 2 * nv)[:, :k].view(np.int64)
            acc += vals
            acc += key.v_cw[i] * t.astype(np.int64)[:, None]
            s, t = s_new, t_new
        acc += _convert(prg, s, k)
        acc += key.final_cw * t.astype(np.int64)[:, None]
        if key.party == 1:
            np.negative(acc, out=acc)
    return acc
