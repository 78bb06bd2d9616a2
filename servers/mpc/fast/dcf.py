"""Distributed comparison functions (DCF), vectorised over many independent instances.

Construction: Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar, Rathee, "Function
Secret Sharing for Mixed-Mode and Fixed-Point Secure Computation", EUROCRYPT
2021, the DCF scheme (tree of 128-bit seeds with control bits, value
correction words in the output group at every level).

For each element ``j`` the dealer holds a threshold ``alpha_j`` in
``[0, 2^depth)`` and a payload ``beta_j`` in the group
``G = Z_2^b_1 x ... x Z_2^b_k`` (``k`` lanes, a *vector* payload, so one key
yields shares of several multiples of the same comparison bit; ``b_i <= 64``,
default 64). :func:`gen` returns two keys; the invariant, for every ``x_j`` in
``[0, 2^depth)`` and every lane ``i``::

    eval(key_0, x)[i] + eval(key_1, x)[i] == beta[i] * 1{x < alpha}   (mod 2^b_i)

Narrow lanes only shrink keys: computation stays in int64 (reduction mod
``2^b`` is a ring homomorphism), and the dealer reduces the value corrections
mod ``2^b_i`` so that nothing above bit ``b_i`` is ever sent.

Security: one key alone (root seed, shared correction words) is
computationally indistinguishable from a key for any other (alpha, beta) of the
same depth and width, given a PRG; here the PRG is fixed-key AES in MMO mode
with tweaks (:class:`~ppml.servers.mpc.fast.prg.FixedKeyPRG`), so a party
holding one key and the public input learns nothing about alpha or beta.

Implementation notes. A party's tree state is one 128-bit block per element
whose lowest bit is the control bit ``t`` (the rest is the seed); the seed
correction of a level carries the control-bit correction of the chosen side in
that bit, so one XOR corrects both. The tree PRG is
``G_level,side,j(state) = H_T(state)`` with tweak ``T = (instance, level,
side, j)`` (:func:`_at_level` for the level; the final conversion's tweaks
carry another salt): block 0 is the next state, blocks 1.. the level's
value. Every MMO call's tweak is unique per DCF instance too: :func:`gen`
draws one uniform 80-bit nonce per key set from the dealer's
:class:`~ppml.servers.mpc.fast.prg.KeyedPRG` (both parties' keys carry the
same one; it is public between them) and element ``i`` uses instance id
``nonce + i`` (bit layout and the collision bound across key sets:
:mod:`~ppml.servers.mpc.fast.prg`). A key made by :meth:`DCFKey.concat`
keeps each part's nonce and length (``nonces``, ``runs``) and
:meth:`DCFKey.head` trims them, so every element keeps its id when pooled
bundles are joined and cut. The ids are folded into the per-element tweak
table once per call: no extra AES or XOR per level. Arrays are laid out so
that the inner loops run over the ``n`` elements (structure of arrays):
correction words (depth, 2, n), value corrections (depth, k, n), payloads
and outputs (k, n). The AES calls are ``cryptography``'s (OpenSSL, AES-NI);
the element-wise work of a level around them (select the side, correct
under the control bit, accumulate the values, tweak the next level's input)
is one compiled pass (:mod:`~ppml.servers.mpc.fast.dcf_kernels`, numba), and
elements are walked in chunks (:data:`WALK_CHUNK`, :data:`GEN_CHUNK`) so a
level's arrays stay in cache.

Key size per element and party, serialised: ``16 + depth * (17 + P) + P``
bytes with ``P = sum(ceil(b_i / 8))`` (root seed; per level a seed correction,
both control-bit corrections in one byte and a value correction; a final value
correction); ``P = 8k`` for full lanes, and ``16 + depth * 17 + 1`` for one
one-bit lane, whose level values ride in the control-bit byte (with early
termination, below, ``16 + (depth - 7) * 17 + 16``); plus 24 bytes
per key set (nonce and length, :data:`NONCE_BYTES`). The gates use depth 47 by default
(:mod:`~ppml.servers.mpc.fast.gates`). The
correction words and nonces are the same in both parties' keys; only the root seed
differs. Evaluation costs ``depth`` AES calls per chunk of elements, over
``n * (1 + ceil(k/2))`` blocks in all, plus one final call.

One one-bit lane (``lane_bits == (1,)``, the ReLU gate's comparison bit) is
expanded compactly: a level's value bit is bit 1 of the expanded state block
itself (bit 0 is the control bit), cleared from the state before the
correction, so the seed carries 126 fresh bits into the next level and the
value bit is a PRG output bit used nowhere else. One AES block per element
and level instead of two, in evaluation and in key generation alike.

Early termination (one one-bit lane, ``depth > LEAF_LEVELS``). The tree stops
:data:`LEAF_LEVELS` (7) levels above the inputs: a node there covers 128
consecutive inputs, and its converted state is one 128-bit block whose bit
``x mod 128`` is the node's leaf value (as a DPF's leaves are packed, Boyle,
Gilboa, Ishai, "Function Secret Sharing: Improvements and Extensions", CCS
2016). On alpha's path the dealer's leaf correction (``final_cw``, (2, n),
the block's two words) is ``C_0 ^ C_1 ^ L ^ V``, with ``C_b`` party ``b``'s
converted state, ``L`` the block whose bit ``j`` is ``beta * 1{j < alpha mod 128}``
and ``V`` all ones when the parties' level values on alpha's path differ
(``v_alpha`` odd), else 0; a party XORs it in under its control bit and adds
bit ``x mod 128`` of the result to its level values. On alpha's path exactly
one party holds the control bit, so the two leaf bits XOR to ``L``'s bit
plus ``V``, and with the level values the output is ``1{x < alpha}``; off it
both parties' states and control bits are equal, the leaf bits cancel and
the level values already hold the answer. Security is the tree's: each
party's leaf correction is masked by the other party's converted on-path
state, a PRG output it never sees. So a key has ``depth - 7`` levels (17
bytes each) and a 16-byte leaf, 104 bytes less per element, and evaluation
``depth - 6`` AES blocks per element instead of ``depth + 1``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import numpy.typing as npt

from ppml.servers.mpc.fast.prg import (
    U64,
    FixedKeyPRG,
    KeyedPRG,
    Ring,
    instance_start,
    instance_tweaks,
    tweak_table,
)

_ONE = np.uint64(1)
_CLEAR_LSB = np.uint64(0xFFFF_FFFF_FFFF_FFFE)
_VALUE_BIT = np.uint64(1)  # a one-bit payload's level value: bit 1 of the expanded block
_CLEAR_VALUE_BIT = np.uint64(0xFFFF_FFFF_FFFF_FFFD)
_SIDE_BIT = np.uint64(16)  # tweak_table puts the row (the side) at bit 16 of the high word
_LEVEL_SALT = 0  # tweaks of the per-level expansion (side, block)
_FINAL_SALT = 1  # tweaks of the final state-to-group conversion
_LEVEL_SHIFT = np.uint64(1)  # level + 1 in bits 1..7 of the tweak's low word (bit 0: control bit)
NONCE_BYTES = 24  # per key set: its 80-bit nonce (two uint64) and its length (one uint64)
LEAF_LEVELS = 7  # early termination: a one-bit key's last 7 levels are one 128-bit leaf
_LEAF_MASK = np.uint64((1 << LEAF_LEVELS) - 1)
Runs = npt.NDArray[np.int64]


def value_blocks(width: int) -> int:
    """AES blocks needed per expansion for ``width`` ring elements (two per block)."""
    return (width + 1) // 2


def _compact(lane_bits: tuple[int, ...]) -> bool:
    """One one-bit lane: its level values ride in the state block (no value blocks)."""
    return lane_bits == (1,)


def leaf_levels(depth: int, lane_bits: tuple[int, ...]) -> int:
    """Levels a key of ``depth`` and ``lane_bits`` folds into its leaf (module doc)."""
    return LEAF_LEVELS if _compact(lane_bits) and depth > LEAF_LEVELS else 0


@dataclass(frozen=True)
class DCFKey:
    """One party's keys for ``n`` DCF instances of one depth and payload width.

    ``seeds`` (n, 2) uint64 root states (lowest bit = this party's control
    bit); ``seed_cw`` (depth, 2, n) uint64, low and high words of the seed
    corrections; ``t_cw`` (depth, n) uint8 with bit 0 = left and bit 1 = right
    control-bit correction; ``v_cw`` (depth, k, n) int64; ``final_cw`` (k, n);
    ``lane_bits`` the modulus exponent of each payload lane; ``nonces`` (s, 2)
    uint64 the 80-bit instance-id start of each of the ``s`` key sets this key
    joins, ``runs`` (s,) their lengths (positive, summing to n). A key with
    ``leaf`` (``LEAF_LEVELS``, one one-bit lane: early termination) has
    ``depth - leaf`` tree levels and its 128-bit leaf correction as the two
    words of ``final_cw`` (2, n).
    """

    party: int
    seeds: U64
    seed_cw: U64
    t_cw: npt.NDArray[np.uint8]
    v_cw: Ring
    final_cw: Ring
    lane_bits: tuple[int, ...]
    nonces: U64
    runs: Runs
    leaf: int = 0

    @property
    def levels(self) -> int:
        """Tree levels walked: ``depth`` less the levels folded into the leaf."""
        return int(self.seed_cw.shape[0])

    @property
    def depth(self) -> int:
        """Input bits: the inputs lie in ``[0, 2^depth)``."""
        return self.levels + self.leaf

    @property
    def size(self) -> int:
        return int(self.seeds.shape[0])

    @property
    def width(self) -> int:
        return len(self.lane_bits)

    @property
    def nbytes(self) -> int:
        """Serialised bytes: ``size * key_bytes_per_element`` plus ``NONCE_BYTES`` per key set."""
        per = key_bytes_per_element(self.depth, self.lane_bits)
        return self.size * per + NONCE_BYTES * int(self.runs.shape[0])

    @functools.cached_property
    def instance_tweaks(self) -> U64:
        """(n, 2) tweak words of the elements' instance ids (prg module doc; computed once per
        key, which a spline gate evaluates at several points)."""
        return instance_tweaks(self.nonces, self.runs)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Named arrays for serialisation; lane ``i`` keeps only its ``ceil(b_i/8)`` low bytes."""
        out: dict[str, np.ndarray] = {
            f"{prefix}.meta": np.array([self.party, *self.lane_bits], dtype=np.int64),
            f"{prefix}.seeds": self.seeds,
            f"{prefix}.seed_cw": self.seed_cw,
            f"{prefix}.t_cw": self.t_cw,
            f"{prefix}.nonces": self.nonces,
            f"{prefix}.runs": self.runs.astype(np.uint64),
        }
        compact = _compact(self.lane_bits)
        if compact:  # the level's value bit rides in bit 2 of t_cw
            out[f"{prefix}.t_cw"] = self.t_cw | (self.v_cw[:, 0].astype(np.uint8) << np.uint8(2))
        if self.leaf:  # the leaf correction, whole
            out[f"{prefix}.leaf"] = self.final_cw.view(np.uint64)
            return out
        for i, b in enumerate(self.lane_bits):
            if not compact:
                for j, chunk in enumerate(_pack(self.v_cw[:, i], b)):
                    out[f"{prefix}.v_cw{i}.{j}"] = chunk
            for j, chunk in enumerate(_pack(self.final_cw[i], b)):
                out[f"{prefix}.final_cw{i}.{j}"] = chunk
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> DCFKey:
        """Inverse of :meth:`to_arrays`; checks shapes and dtypes."""
        meta = arrays[f"{prefix}.meta"]
        lanes = tuple(int(b) for b in meta[1:])
        t_cw = np.ascontiguousarray(arrays[f"{prefix}.t_cw"], dtype=np.uint8)
        if _compact(lanes):
            if t_cw.size and int(t_cw.max()) >> 3:
                raise ValueError("DCF key t_cw has bits above the value bit")
            v_cw = (t_cw >> np.uint8(2)).astype(np.int64)[:, None]
            t_cw = t_cw & np.uint8(3)
        else:
            v_cw = np.stack([_lane(arrays, f"{prefix}.v_cw{i}", b) for i, b in enumerate(lanes)], 1)
        leaf = 0
        if f"{prefix}.leaf" in arrays:
            leaf = leaf_levels(int(t_cw.shape[0]) + LEAF_LEVELS, lanes)
            if not leaf or arrays[f"{prefix}.leaf"].dtype != np.uint64:
                raise ValueError("DCF key has a leaf but is not a one-bit key, or a bad leaf")
            final_cw = np.ascontiguousarray(arrays[f"{prefix}.leaf"]).view(np.int64)
        else:
            if leaf_levels(int(t_cw.shape[0]), lanes):
                raise ValueError("a one-bit DCF key of this depth needs its leaf")
            final_cw = np.stack(
                [_lane(arrays, f"{prefix}.final_cw{i}", b) for i, b in enumerate(lanes)]
            )
        key = cls(
            party=int(meta[0]),
            seeds=np.ascontiguousarray(arrays[f"{prefix}.seeds"], dtype=np.uint64),
            seed_cw=np.ascontiguousarray(arrays[f"{prefix}.seed_cw"], dtype=np.uint64),
            t_cw=t_cw,
            v_cw=v_cw,
            final_cw=final_cw,
            lane_bits=lanes,
            nonces=np.ascontiguousarray(arrays[f"{prefix}.nonces"], dtype=np.uint64),
            runs=_runs(arrays[f"{prefix}.runs"]),
            leaf=leaf,
        )
        key.check()
        return key

    @classmethod
    def concat(cls, keys: list[DCFKey]) -> DCFKey:
        """Keys for all elements of ``keys`` in order (same party, depth and lanes)."""
        if len({(k.party, k.depth, k.lane_bits, k.leaf) for k in keys}) != 1:
            raise ValueError("can only concatenate keys of one party, depth and lanes")
        return cls(
            keys[0].party,
            np.concatenate([k.seeds for k in keys]),
            np.concatenate([k.seed_cw for k in keys], axis=2),
            np.concatenate([k.t_cw for k in keys], axis=1),
            np.concatenate([k.v_cw for k in keys], axis=2),
            np.concatenate([k.final_cw for k in keys], axis=1),
            keys[0].lane_bits,
            np.concatenate([k.nonces for k in keys]),
            np.concatenate([k.runs for k in keys]),
            keys[0].leaf,
        )

    def head(self, n: int) -> DCFKey:
        """Keys of the first ``n`` instances (views; each keeps its instance id)."""
        return self.take(0, n)

    def take(self, start: int, stop: int) -> DCFKey:
        """Keys of instances ``start .. stop - 1`` (views; each keeps its instance id).

        A key set cut at ``start`` continues from ``nonce + (start - its first)``
        (mod 2^80), so every element's id is what it was in the whole key.
        """
        start, stop = max(0, min(start, self.size)), max(0, min(stop, self.size))
        stop = max(start, stop)
        ends = np.cumsum(self.runs)
        firsts = ends - self.runs
        keep = (ends > start) & (firsts < stop)
        runs = np.minimum(ends[keep], stop) - np.maximum(firsts[keep], start)
        skipped = (np.maximum(firsts[keep], start) - firsts[keep]).astype(np.uint64)
        nonces = self.nonces[keep].copy()
        low = nonces[:, 0] + skipped  # wraps mod 2^64: carry into the top 16 bits
        nonces[:, 1] = (nonces[:, 1] + (low < nonces[:, 0]).astype(np.uint64)) & np.uint64(0xFFFF)
        nonces[:, 0] = low
        return DCFKey(
            self.party,
            self.seeds[start:stop],
            self.seed_cw[:, :, start:stop],
            self.t_cw[:, start:stop],
            self.v_cw[:, :, start:stop],
            self.final_cw[:, start:stop],
            self.lane_bits,
            nonces,
            runs.astype(np.int64),
            self.leaf,
        )

    def check(self) -> None:
        """Raise ValueError unless the arrays have consistent shapes."""
        d, n, k = self.levels, self.size, self.width
        if self.party not in (0, 1):
            raise ValueError("DCF key party must be 0 or 1")
        if self.leaf != leaf_levels(self.depth, self.lane_bits):
            raise ValueError("DCF key's leaf does not match its depth and lanes")
        if len(self.lane_bits) != k or not all(1 <= b <= 64 for b in self.lane_bits):
            raise ValueError("DCF key needs one lane width in 1..64 per payload element")
        shapes = {
            "seeds": (self.seeds.shape, (n, 2)),
            "seed_cw": (self.seed_cw.shape, (d, 2, n)),
            "t_cw": (self.t_cw.shape, (d, n)),
            "v_cw": (self.v_cw.shape, (d, k, n)),
            "final_cw": (self.final_cw.shape, (2 if self.leaf else k, n)),
            "nonces": (self.nonces.shape, (self.runs.shape[0], 2)),
        }
        for name, (got, want) in shapes.items():
            if got != want:
                raise ValueError(f"DCF key {name} has shape {got}, expected {want}")
        runs = self.runs
        if runs.ndim != 1 or runs.size > n or np.any((runs < 1) | (runs > n)) or runs.sum() != n:
            raise ValueError(f"DCF key runs must be positive and sum to its {n} elements")
        if self.nonces.size and int(self.nonces[:, 1].max()) >> 16:
            raise ValueError("DCF key nonces must be 80-bit")


def _runs(raw: np.ndarray) -> Runs:
    """Key-set lengths from the wire (uint64): each must be below 2^62, so sums stay exact."""
    raw = np.asarray(raw)
    if raw.dtype != np.uint64 or raw.ndim != 1 or (raw.size and int(raw.max()) >> 62):
        raise ValueError("DCF key runs must be a vector of uint64 lengths")
    return raw.astype(np.int64)


def key_bytes_per_element(depth: int, lane_bits: tuple[int, ...]) -> int:
    """Serialised bytes per element of one party's key (see the module docstring)."""
    payload = sum((b + 7) // 8 for b in lane_bits)
    level = 0 if _compact(lane_bits) else payload  # a one-bit value rides in the t_cw byte
    leaf = leaf_levels(depth, lane_bits)
    if leaf:  # early termination: 16 bytes of leaf instead of the last levels and the final
        return 16 + (depth - leaf) * (16 + 1) + 16
    return 16 + depth * (16 + 1 + level) + payload


def _lane_masks(lane_bits: tuple[int, ...]) -> U64:
    """(k, 1) masks ``2^b_i - 1`` as uint64."""
    return np.array([(1 << b) - 1 for b in lane_bits], dtype=np.uint64)[:, None]


_CHUNK_DTYPES = {8: np.uint64, 4: np.uint32, 2: np.uint16, 1: np.uint8}


def _chunks(bits: int) -> list[int]:
    """Byte widths (8, 4, 2 or 1), low bytes first, that hold ``bits`` bits: 48 -> [4, 2]."""
    left, out = (bits + 7) // 8, []
    for width in (8, 4, 2, 1):
        while left >= width:
            out.append(width)
            left -= width
    return out


def _pack(values: Ring, bits: int) -> list[npt.NDArray[np.unsignedinteger]]:
    """int64 array -> its low ``ceil(bits/8)`` bytes as a few unsigned arrays (plain casts)."""
    u = np.ascontiguousarray(values).view(np.uint64)
    out, shift = [], 0
    for width in _chunks(bits):
        out.append((u >> np.uint64(shift)).astype(_CHUNK_DTYPES[width]))
        shift += 8 * width
    return out


def _unpack(chunks: list[npt.NDArray[np.unsignedinteger]]) -> Ring:
    """Inverse of :func:`_pack` (values were reduced mod 2^bits, so high bytes are 0)."""
    acc = chunks[0].astype(np.uint64)
    shift = 8 * chunks[0].itemsize
    for chunk in chunks[1:]:
        acc |= chunk.astype(np.uint64) << np.uint64(shift)
        shift += 8 * chunk.itemsize
    return acc.view(np.int64)


def _lane(arrays: dict[str, np.ndarray], name: str, bits: int) -> Ring:
    """One lane's values from the chunks :meth:`DCFKey.to_arrays` wrote; ValueError if off."""
    if not 1 <= bits <= 64:
        raise ValueError("DCF key needs one lane width in 1..64 per payload element")
    widths = _chunks(bits)
    chunks = [arrays[f"{name}.{j}"] for j in range(len(widths))]
    if any(c.dtype != _CHUNK_DTYPES[w] or c.shape != chunks[0].shape
           for c, w in zip(chunks, widths, strict=True)):  # fmt: skip
        raise ValueError(f"DCF key {name} has chunks of the wrong type or shape")
    return _unpack(chunks)


def _check_domain(x: U64, depth: int, what: str) -> U64:
    x = np.ascontiguousarray(x, dtype=np.uint64).reshape(-1)
    if not 1 <= depth <= 64:
        raise ValueError("DCF depth must be in 1..64")
    if depth < 64 and x.size and int(x.max()) >> depth:
        raise ValueError(f"{what} must lie in [0, 2^{depth})")
    return x


def _kernels() -> ModuleType:
    """:mod:`~ppml.servers.mpc.fast.dcf_kernels`, imported on first use (numba costs ~0.7 s)."""
    from ppml.servers.mpc.fast import dcf_kernels

    return dcf_kernels


def warm() -> None:
    """Load (or, on a fresh checkout, compile) the kernels now rather than at the first use.

    A process that will evaluate DCFs soon calls it at start-up: importing numba costs
    about 0.7 s per process and compiling, once per checkout, a few seconds.
    """
    for lanes in ((1,), (64, 64, 64)):
        beta = np.zeros((len(lanes), 1), dtype=np.int64)
        key, _ = gen(np.zeros(1, dtype=np.uint64), beta, 2, KeyedPRG(), None, lanes)
        evaluate(key, np.zeros(1, dtype=np.uint64))


def _tweaks(sides: int, blocks: int, ids: U64, salt: int) -> U64:
    """Tweak table XOR each element's instance tweak ``ids`` (n, 2): (sides, blocks, n, 2)."""
    table = tweak_table(sides, blocks, salt)
    out = np.empty((sides, blocks, *ids.shape), dtype=np.uint64)
    out[...] = ids
    out[..., 1] ^= table[..., 1][..., None]
    return out


def _at_level(state: U64, level: int) -> U64:
    """``state`` (..., 2) with level ``level``'s tweak XORed into its low word (a copy).

    Tree level ``i`` (0-based) gets ``(i + 1) << 1``: its expansions use tweaks
    no other level, and not the final conversion (0 there), uses; bit 0, the
    control bit, is untouched. Keys are unchanged in form: only the PRG differs.
    """
    tweaked = state.copy()
    tweaked[..., 0] ^= np.uint64(level + 1) << _LEVEL_SHIFT
    return tweaked


def _words(blocks: U64, width: int) -> U64:
    """(..., nv, n, 2) blocks to (..., width, n) words: word w is block w // 2, half w % 2."""
    return np.stack([blocks[..., w // 2, :, w % 2] for w in range(width)], axis=-2)


def _convert(prg: FixedKeyPRG, states: U64, width: int, ids: U64) -> Ring:
    """Map 128-bit states (..., n, 2) to ``width`` ring elements each: (..., width, n)."""
    nv = value_blocks(width)
    tw = _tweaks(1, nv, ids, _FINAL_SALT)[0]  # (nv, n, 2)
    out = prg.mmo(states[..., None, :, :] ^ tw)  # (..., nv, n, 2)
    return _words(out, width).view(np.int64)


GEN_CHUNK = 2048  # elements the dealer walks together: a level's arrays stay in L2


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
    table_hi = np.ascontiguousarray(tweak_table(2, 1 + nv, _LEVEL_SALT)[..., 1])  # (side, block)
    state[0, :, 0] &= _CLEAR_LSB  # t_0 = 0
    state[1, :, 0] |= _ONE  # t_1 = 1
    roots = state.copy()
    leaf = leaf_levels(depth, lanes)
    levels = depth - leaf
    v_alpha = np.zeros((k, n), dtype=np.int64)
    seed_cw = np.empty((levels, 2, n), dtype=np.uint64)
    t_cw = np.empty((levels, n), dtype=np.uint8)
    v_cw = np.empty((levels, k, n), dtype=np.int64)
    kernels = _kernels()
    flat_state, flat_ids = state.reshape(2, 2 * n), np.ascontiguousarray(ids).reshape(-1)
    beta = np.ascontiguousarray(beta)
    lane_masks = np.ascontiguousarray(masks[:, 0])
    scratch = np.empty((2, min(n, GEN_CHUNK)), dtype=np.int64)
    with np.errstate(over="ignore"):
        for j0 in range(0, n, GEN_CHUNK):
            m = min(GEN_CHUNK, n - j0)
            inp = np.empty((2, 2, 1 + nv, m, 2), dtype=np.uint64)  # (party, side, block, m, 2)
            flat_inp = inp.reshape(2, 2, 1 + nv, 2 * m)
            kernels.gen_prepare(flat_state, j0, flat_ids, table_hi, flat_inp)
            for i in range(levels):
                out = prg.mmo(inp)
                kernels.gen_level(
                    out.reshape(2, 2, 1 + nv, 2 * m), flat_state, alpha, depth, i, j0, beta,
                    lane_masks, compact, v_alpha, seed_cw, t_cw, v_cw, flat_ids, table_hi,
                    flat_inp, scratch,
                )  # fmt: skip
        if leaf:
            final_cw = leaf_correction(prg, state, alpha, beta[0], v_alpha[0], ids)
        else:
            conv = _convert(prg, state, k, ids)  # (party, k, n)
            sign = 1 - 2 * (state[1, :, 0] & _ONE).view(np.int64)
            final_cw = (sign * (conv[1] - conv[0] - v_alpha)) & masks
    return tuple(  # type: ignore[return-value]
        DCFKey(b, roots[b], seed_cw, t_cw, v_cw, final_cw, lanes, nonces, runs, leaf)
        for b in (0, 1)
    )


def leaf_correction(
    prg: FixedKeyPRG, state: U64, alpha: U64, beta: Ring, v_alpha: Ring, ids: U64
) -> Ring:
    """The dealer's leaf corrections (2, n): ``C_0 ^ C_1 ^ L ^ V`` (module doc, early termination).

    ``state`` (party, n, 2): both parties' states at alpha's node; ``beta`` (n,) the
    one-bit payloads (``L`` is 0 where it is even); ``v_alpha`` (n,) the difference of
    the parties' level values there (only the parities matter).
    """
    conv = _convert(prg, state, 2, ids).view(np.uint64)  # (party, 2, n): each state's block
    low = alpha & _LEAF_MASK  # L: bits 0 .. low - 1 set
    below = np.empty((2, low.size), dtype=np.uint64)
    for w in range(2):
        bits = np.clip(low.astype(np.int64) - 64 * w, 0, 64).astype(np.uint64)
        full = bits == np.uint64(64)
        shifted = np.left_shift(_ONE, np.where(full, np.uint64(0), bits)) - _ONE
        below[w] = np.where(full, ~np.uint64(0), shifted)
    below &= np.uint64(0) - (beta.view(np.uint64) & _ONE)  # beta even: the leaf holds 0s
    differ = np.uint64(0) - (v_alpha.view(np.uint64) & _ONE)  # all ones if v_alpha is odd
    out: Ring = (conv[0] ^ conv[1] ^ below ^ differ).view(np.int64)
    return out


def add_leaf_bits(prg: FixedKeyPRG, key: DCFKey, state: U64, x: U64, ids: U64, acc: Ring) -> None:
    """``acc`` (n,) ``+=`` this party's leaf bits: bit ``x mod 128`` of its converted state
    (``_convert``'s one block), corrected under its control bit; two compiled passes
    (:func:`~ppml.servers.mpc.fast.dcf_kernels.leaf_prepare`, ``leaf_bits``) around one AES
    call."""
    kernels = _kernels()
    flat_state = np.ascontiguousarray(state).reshape(-1)
    inp = np.empty((1, *state.shape), dtype=np.uint64)  # one block per element
    flat_inp = inp.reshape(-1)
    table_hi = tweak_table(1, 1, _FINAL_SALT)[0, 0, 1]
    kernels.leaf_prepare(flat_state, np.ascontiguousarray(ids).reshape(-1), table_hi, flat_inp)
    out = prg.aes_into(inp, np.empty(inp.nbytes + 16, dtype=np.uint8)).reshape(-1)
    final_cw = np.ascontiguousarray(key.final_cw).view(np.uint64)
    kernels.leaf_bits(out, flat_inp, flat_state, final_cw, np.ascontiguousarray(x), acc)


WALK_CHUNK = 4096  # elements walked together: a level's arrays (~150 B each) stay in L2


def evaluate(key: DCFKey, x: U64, prg: FixedKeyPRG | None = None) -> Ring:
    """This party's shares (k, n) of ``beta * 1{x < alpha}`` at the public points ``x`` (n,).

    Lane ``i`` is reduced to ``[0, 2^b_i)``; only its residue mod ``2^b_i`` is meaningful.
    """
    x = _check_domain(x, key.depth, "x")
    if x.size != key.size:
        raise ValueError(f"{x.size} inputs for {key.size} DCF keys")
    k = key.width
    prg = prg or FixedKeyPRG()
    ids = key.instance_tweaks
    with np.errstate(over="ignore"):
        state, acc = _walk(key, x, prg, ids)
        if key.leaf:
            add_leaf_bits(prg, key, state, x, ids, acc[0])
        else:
            acc += _convert(prg, state, k, ids)
            acc += key.final_cw * (state[:, 0] & _ONE).view(np.int64)
        if key.party == 1:
            np.negative(acc, out=acc)
        if any(b < 64 for b in key.lane_bits):
            acc &= _lane_masks(key.lane_bits).view(np.int64)
    return acc


def _walk(key: DCFKey, x: U64, prg: FixedKeyPRG, ids: U64) -> tuple[U64, Ring]:
    """The tree walk: the final states (n, 2) and the levels' value shares (k, n).

    Elements go in chunks of :data:`WALK_CHUNK`, each walked from root to leaf:
    per level one AES call over the chunk's input blocks (block, m, 2) and one
    compiled pass (:func:`~ppml.servers.mpc.fast.dcf_kernels.eval_level`) that
    completes the MMO (XORs the input into the AES output), absorbs it and
    writes the next level's input, so a level's arrays stay in the core's cache.
    """
    n, k = key.size, key.width
    compact = _compact(key.lane_bits)
    nv = 0 if compact else value_blocks(k)
    block_hi = np.ascontiguousarray(tweak_table(1, 1 + nv, _LEVEL_SALT)[0, :, 1])
    state = np.array(key.seeds, dtype=np.uint64, order="C")
    flat_state, flat_ids = state.reshape(-1), np.ascontiguousarray(ids).reshape(-1)
    seed_cw, t_cw, v_cw = (np.ascontiguousarray(a) for a in (key.seed_cw, key.t_cw, key.v_cw))
    acc = np.zeros((k, n), dtype=np.int64)
    tmask = np.empty(min(n, WALK_CHUNK), dtype=np.int64)
    kernels = _kernels()
    buf = np.empty((1 + nv) * min(n, WALK_CHUNK) * 16 + 16, dtype=np.uint8)  # AES output
    for j0 in range(0, n, WALK_CHUNK):
        m = min(WALK_CHUNK, n - j0)
        inp = np.empty((1 + nv, m, 2), dtype=np.uint64)
        flat_inp = inp.reshape(1 + nv, 2 * m)
        kernels.eval_prepare(flat_state, x, key.depth, j0, flat_ids, block_hi, flat_inp)
        for i in range(key.levels):
            out = prg.aes_into(inp, buf)  # (block, m, 2); the kernel XORs inp in (MMO)
            kernels.eval_level(
                out.reshape(1 + nv, 2 * m), flat_state, x, key.depth, i, j0, seed_cw, t_cw,
                v_cw, compact, acc, flat_ids, block_hi, flat_inp, tmask,
            )  # fmt: skip
    return state, acc
