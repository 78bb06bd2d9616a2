"""FSS gates on masked wires: fused ReLU + truncation, and truncation alone (by f or 2f).

Wire convention. A linear layer leaves the two parties with additive shares
``z_0 + z_1 = z (mod 2^64)`` of a pre-activation at scale ``2^(2f)``. The
dealer drew a uniform mask ``r`` for this wire and gave each party a share of
it (:attr:`GateKey.mask`); the parties open ``o = z + r (mod 2^64)`` (one
round, done by the engine). A gate maps the public ``o`` and its key to
additive shares of its output at scale ``2^f``; the engine then adds shares of
the next wire's mask and opens again.

Parameters (:class:`GateParams`): ``f`` fractional bits, ``n`` the depth of
the comparison, ``L = n + 1 + f``. ReLU's input range: ``z`` in ``[-2^(n+f),
2^(n+f) - 2^f]``, i.e. real pre-activations in ``[-2^(n-f), 2^(n-f) -
2^-f]``. Default ``n = 47``, ``f = 16``, so ``L = 64`` and the range is the
whole ring: every ``z`` in ``[-2^63, 2^63 - 2^16]``, i.e. ``|v| < 2^31`` (the
largest pre-activation a fixed-point product at scale ``2^32`` can hold; a
linear layer whose true output is larger has already wrapped the ring, in
any engine). A smaller ``n`` shrinks keys and evaluation but makes values
outside ``|v| < 2^(n-f)`` wrong (not insecure) without an error. Truncation
alone (:class:`TruncTop`) takes half that range: ``z`` in ``[-2^(L-2),
2^(L-2))``, ``|v| < 2^30`` at the default.

ReLU's truncation, with ``u = z + 2^(n+f)`` in ``[0, 2^L)``, ``x = (o +
2^(n+f)) mod 2^L = (u + r) mod 2^L``, ``a = x >> f``, ``c = (r mod 2^L) >>
f``: the high parts give ``V = (a - c) mod 2^(n+1)``, which equals ``(u >>
f) + carry`` with ``carry = 1{x mod 2^f < r mod 2^f}``, and never wraps
inside the range. So ``T = V - 2^n = floor(z / 2^f) + carry``. We do not
remove the carry: given the uniform mask, ``carry`` is 1 with probability
``(z mod 2^f) / 2^f``, so ``T`` is z / 2^f *stochastically rounded*:
unbiased, ``|T - z / 2^f| < 1`` ulp, always, with no large-error event (the
range assumption, not a 2^-k chance, rules out the wrap that makes
SecureML-style local truncation fail). Exact floor would need a second DCF
on the low ``f`` bits and a product of two DCF outputs (one more round).

Comparison: ``T >= 0`` iff bit ``n`` of ``V`` is set, and that bit is
``msb(a) XOR msb(c) XOR B`` with ``B = 1{a mod 2^n < c mod 2^n}``: one DCF of
depth ``n`` with ``alpha = c mod 2^n`` evaluated at the public ``a mod 2^n``.
The wrap ``w = 1{a < c}`` (``V = a - c + 2^(n+1) w``) is also affine in ``B``
given ``msb(a)`` (public) and ``m = msb(c)`` (dealer): ``w = m + (1 - m) B`` if
``msb(a) = 0``, ``w = m B`` if ``msb(a) = 1``.

ReLU: ``y = D T`` with ``D = 1{T >= 0} = msb(a) XOR m XOR B``, so ``y =
ReLU(T)``, equal to ``ReLU(z / 2^f)`` within 1 ulp (0 for every ``z < 0``).
The DCF here has a one-bit payload (``beta = 1`` in ``Z_2``): the parties get
XOR shares of ``B`` only, and select with one more opening. The dealer draws
a uniform bit ``rho`` per element and shares, additively over ``Z_2^64``,
``m, c, rho, rho c, rho m``. The low bit of an additive share is an XOR share
of the value's low bit, so each party knows XOR shares of ``m`` and ``rho``
without extra material, and the parties open ``e = D XOR rho`` (one round,
one bit per element). Then ``D = e + (1 - 2e) rho`` and likewise ``D c`` and
``m D`` are local. With ``h = 2^n``, ``K = 2^(n+1)`` and the carry facts
above (``msb(a) = 0``: ``D w = D``; ``msb(a) = 1``: ``D w = m B = m D``)::

    msb(a) = 0:  y = (a - h + K) D - D c
    msb(a) = 1:  y = (a - h) D - D c + K m D

Truncation from the top bit (:class:`TruncTop`: ``trunc_top`` by ``s = f``
reading ``o mod 2^L``, ``trunc_top_wide`` by ``s = 2f`` after a quadratic
spline, reading all 64 bits). No comparison is needed when the input leaves
one bit of headroom, as in Dalskov, Escudero and Keller's truncation for
``Z_2^k`` (and the replicated engine's, rep3/trunc.py). With ``u = z +
2^(L-2)`` in ``[0, 2^(L-1))``, ``R = r mod 2^L``, ``R' = R mod 2^(L-1)``, ``t``
= bit ``L - 1`` of ``R``, and ``x = (o + 2^(L-2)) mod 2^L = (u + R) mod 2^L``:
``u + R' < 2^L``, so with ``b = 1{u + R' >= 2^(L-1)}`` the public bit ``L -
1`` of ``x`` is ``s_x = b XOR t`` and ``x' = x mod 2^(L-1) = u + R' - 2^(L-1)
b``. Hence ``b = s_x + t - 2 s_x t`` is affine in shares of ``t``, and::

    T = (x' >> s) - (R' >> s) + 2^(L-1-s) b - 2^(L-2-s) = floor(z / 2^s) + carry

with ``carry = 1{x' mod 2^s < R' mod 2^s}``: the same stochastic rounding as
ReLU's, ``|T - z / 2^s| < 1`` ulp, no large-error event inside the range.
The dealer shares ``c = R' >> s`` and ``t``; party 0 adds the public terms.
``T`` is an integer combination of exact shares, so it is right mod ``2^64``
whatever ``out_bits``. No DCF and no round beyond the opening of ``o``: 24
bytes per element (mask and two constants), against 752 to 1,031 for the
DCF truncations it replaced (one-bit or two-lane, one round more or none).

Output width. A gate feeding another layer only needs its output correct mod
``2^L``: the next layer is linear over the ring and the next gate reads only
``o mod 2^L``; the opened ``y + r`` stays uniform because the next mask ``r``
is uniform over all 64 bits. So gates take ``out_bits`` (``L`` between
layers, 64 for the model output); ReLU's one-bit lane needs nothing more.

Security (per party): the opened ``o`` is uniform because ``r`` is uniform and
fresh; the opened ``e`` is uniform because ``rho`` is a fresh uniform bit that
appears nowhere else; the DCF key reveals nothing about ``alpha, beta`` (DCF
security); the constant shares are uniform (the other party's share is a
fresh uniform value). So a party's view of a gate is independent of ``z``.

Key size per element and party: 8 (mask) + 8 * consts + DCF key
(:func:`~ppml.servers.mpc.fast.dcf.key_bytes_per_element`); at the default
``n = 47`` (``L = 64``, so ``out_bits`` is 64 everywhere): ReLU (5 constants,
one one-bit lane, its DCF terminated 7 levels early) 8 + 40 + 712 = 760 bytes
(864 before early termination, 1,711 for the former three-lane payload ``(s,
s c, m)`` that needed no second round), 488 at ``n = 31`` (range ``|v| <
2^15``); truncation 24 bytes. Plus, per key set (one ReLU gate of one
bundle), the DCF's nonce: :data:`~ppml.servers.mpc.fast.dcf.NONCE_BYTES`.
Online, ReLU costs two rounds (the opening of ``o`` and of ``e``, ``n / 8``
bytes), truncation one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from ppml.servers.mpc.fast import dcf
from ppml.servers.mpc.fast.dcf import DCFKey
from ppml.servers.mpc.fast.prg import U64, FixedKeyPRG, KeyedPRG, Ring


@dataclass(frozen=True)
class GateParams:
    """Fixed-point parameters: ``frac_bits`` f and comparison depth ``depth`` n (see module doc)."""

    frac_bits: int = 16
    depth: int = 47

    def __post_init__(self) -> None:
        if self.frac_bits < 0 or self.depth < 1 or self.low_bits > 64:
            raise ValueError("need frac_bits >= 0, depth >= 1 and depth + 1 + frac_bits <= 64")

    @property
    def low_bits(self) -> int:
        """L = n + 1 + f: the parties only use ``o mod 2^L``."""
        return self.depth + 1 + self.frac_bits

    def lanes(self, kind: str, out_bits: int) -> tuple[int, ...]:
        """DCF lane widths of gate ``kind`` (``relu``) whose output is needed mod ``2^out_bits``."""
        if not self.low_bits <= out_bits <= 64:
            raise ValueError("out_bits must lie in [low_bits, 64]")
        if kind != "relu":
            raise ValueError(f"no DCF lanes for a {kind} gate")
        return (1,)  # XOR shares of the comparison bit B

    @property
    def real_bound(self) -> float:
        """Pre-activations (real units) must lie in ``[-bound, bound - 2^-f]``."""
        return float(2.0 ** (self.depth - self.frac_bits))


@dataclass(frozen=True)
class GateKey:
    """One party's material for ``n`` gate instances.

    ``mask``: (n,) share of the input-wire mask r; ``consts``: (n, c) shares of
    dealer-known constants; ``dcf``: DCF keys for the n instances, or None for
    a gate that compares nothing (:class:`TruncTop`), whose key then names its
    party in ``owner``.
    """

    kind: str
    mask: Ring
    consts: Ring
    dcf: DCFKey | None
    owner: int = -1

    @property
    def party(self) -> int:
        return self.dcf.party if self.dcf is not None else self.owner

    @property
    def fss(self) -> DCFKey:
        """The DCF keys of a gate that compares (every kind but :class:`TruncTop`)."""
        if self.dcf is None:
            raise ValueError(f"a {self.kind} key without DCF keys")
        return self.dcf

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def nbytes(self) -> int:
        return self.mask.nbytes + self.consts.nbytes + (self.dcf.nbytes if self.dcf else 0)

    def head(self, n: int) -> GateKey:
        """The material of the first ``n`` instances (views)."""
        return self.take(0, n)

    def take(self, start: int, stop: int) -> GateKey:
        """The material of instances ``start .. stop - 1`` (views)."""
        return GateKey(
            self.kind,
            self.mask[start:stop],
            self.consts[start:stop],
            self.dcf.take(start, stop) if self.dcf is not None else None,
            self.owner,
        )

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {
            f"{prefix}.kind": np.frombuffer(self.kind.encode(), dtype=np.uint8).copy(),
            f"{prefix}.mask": self.mask,
            f"{prefix}.consts": self.consts,
        }
        if self.dcf is None:
            return {**out, f"{prefix}.owner": np.array([self.owner], dtype=np.int64)}
        return {**out, **self.dcf.to_arrays(f"{prefix}.dcf")}

    @classmethod
    def concat(cls, keys: list[GateKey]) -> GateKey:
        """Material for all elements of ``keys`` in order (one kind)."""
        if len({k.kind for k in keys}) != 1 or len({k.party for k in keys}) != 1:
            raise ValueError("can only concatenate gate keys of one kind and party")
        fss = [k.dcf for k in keys if k.dcf is not None]
        if fss and len(fss) != len(keys):
            raise ValueError("can only concatenate gate keys all with or all without DCF keys")
        return cls(
            keys[0].kind,
            np.concatenate([k.mask for k in keys]),
            np.concatenate([k.consts for k in keys]),
            DCFKey.concat(fss) if fss else None,
            keys[0].owner,
        )

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> GateKey:
        owner = arrays.get(f"{prefix}.owner")
        if owner is not None and (owner.shape != (1,) or int(owner[0]) not in (0, 1)):
            raise ValueError(f"{prefix}: a gate key's owner must be party 0 or 1")
        return cls(
            kind=bytes(arrays[f"{prefix}.kind"].astype(np.uint8)).decode(),
            mask=np.ascontiguousarray(arrays[f"{prefix}.mask"], dtype=np.int64),
            consts=np.ascontiguousarray(arrays[f"{prefix}.consts"], dtype=np.int64),
            dcf=None if owner is not None else DCFKey.from_arrays(arrays, f"{prefix}.dcf"),
            owner=-1 if owner is None else int(owner[0]),
        )


def split(value: Ring, rng: KeyedPRG) -> tuple[Ring, Ring]:
    """Additive shares ``(value - u, u)`` with ``u`` uniform from ``rng``; they sum to ``value``."""
    other = rng.ring(value.shape)
    with np.errstate(over="ignore"):
        return value - other, other


@dataclass(frozen=True)
class _MaskParts:
    """Dealer-side decomposition of a mask r (see module doc)."""

    c: Ring  # (r mod 2^L) >> f, in [0, 2^(n+1))
    m: Ring  # bit n of c
    alpha: U64  # c mod 2^n


@dataclass(frozen=True)
class _Public:
    """Party-side decomposition of the opened value o."""

    a: Ring  # x >> f, in [0, 2^(n+1))
    high: np.ndarray  # bool: bit n of a
    low: U64  # a mod 2^n: the DCF input


def _low_mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def _mask_parts(p: GateParams, r: Ring) -> _MaskParts:
    rl = r.view(np.uint64) & _low_mask(p.low_bits)
    c = rl >> np.uint64(p.frac_bits)
    return _MaskParts(
        c=c.astype(np.int64),
        m=(c >> np.uint64(p.depth)).astype(np.int64),
        alpha=c & _low_mask(p.depth),
    )


def _public(p: GateParams, opened: Ring) -> _Public:
    offset = np.uint64(1 << (p.depth + p.frac_bits))
    x = (opened.reshape(-1).view(np.uint64) + offset) & _low_mask(p.low_bits)
    a = x >> np.uint64(p.frac_bits)
    return _Public(
        a=a.astype(np.int64),
        high=(a >> np.uint64(p.depth)).astype(bool),
        low=a & _low_mask(p.depth),
    )


Exchange = Callable[[Ring], Ring]


def open_bits(mine: npt.NDArray[np.uint8], exchange: Exchange) -> npt.NDArray[np.uint8]:
    """XOR-open a vector of bits in one round: packed eight to a byte, sent as int64 words."""
    packed = np.packbits(mine)
    words = np.zeros(-(-packed.size // 8) * 8, dtype=np.uint8)
    words[: packed.size] = packed
    peer = exchange(words.view(np.int64)).view(np.uint8)
    return np.unpackbits(peer, count=mine.size) ^ mine


class ReluTrunc:
    """``y = ReLU(T)``, ``T`` = z / 2^f stochastically rounded (module doc).

    One DCF with a one-bit payload, then one opening of the masked sign bit.
    """

    kind: ClassVar[str] = "relu"
    width: ClassVar[int] = 1
    rounds: ClassVar[int] = 1  # beyond the opening of ``o``
    range_bits: ClassVar[int | None] = None  # the plan's range (``p.depth``), or this if narrower

    @classmethod
    def params(cls, p: GateParams) -> GateParams:
        """``p``, its depth capped at ``range_bits + f`` when the gate states a range."""
        if cls.range_bits is None or cls.range_bits + p.frac_bits >= p.depth:
            return p
        return GateParams(p.frac_bits, cls.range_bits + p.frac_bits)

    @classmethod
    def gen(
        cls,
        p: GateParams,
        n: int,
        rng: KeyedPRG,
        prg: FixedKeyPRG | None = None,
        out_bits: int = 64,
    ) -> tuple[GateKey, GateKey]:
        """Dealer: keys for ``n`` gates with fresh uniform masks, output needed mod 2^out_bits."""
        p = cls.params(p)
        r = rng.ring(n)
        q = _mask_parts(p, r)
        rho = (rng.uint64(n) & np.uint64(1)).astype(np.int64)
        with np.errstate(over="ignore"):
            consts = np.stack([q.m, q.c, rho, rho * q.c, rho * q.m], axis=1)
        beta = np.ones((1, n), dtype=np.int64)
        k0, k1 = dcf.gen(q.alpha, beta, p.depth, rng, prg, p.lanes("relu", out_bits))
        (r0, r1), (c0, c1) = split(r, rng), split(consts, rng)
        return GateKey(cls.kind, r0, c0, k0), GateKey(cls.kind, r1, c1, k1)

    @classmethod
    def eval(
        cls,
        p: GateParams,
        key: GateKey,
        opened: Ring,
        prg: FixedKeyPRG | None = None,
        exchange: Exchange | None = None,
    ) -> Ring:
        """Party: shares (n,) of ``ReLU(T)`` from the opened ``o = z + r``; one exchange."""
        if exchange is None:
            raise ValueError("the ReLU gate opens a bit: it needs the exchange with the peer")
        p = cls.params(p)
        if key.fss.depth != p.depth:
            raise ValueError(f"a {cls.kind} key of depth {key.fss.depth} (need {p.depth})")
        u = _public(p, opened)
        b = dcf.evaluate(key.fss, u.low, prg)[0]
        mu, gamma, rho, rho_c, rho_m = key.consts.T
        first = key.party == 0
        mine = (b ^ rho ^ mu).astype(np.uint8) & np.uint8(1)  # XOR share of D XOR rho
        if first:
            mine ^= u.high.astype(np.uint8)
        e = open_bits(mine, exchange).astype(np.int64)
        flip = 1 - 2 * e
        big_k = 1 << (p.depth + 1)
        with np.errstate(over="ignore"):
            d = flip * rho + (e if first else 0)
            dc = e * gamma + flip * rho_c
            md = e * mu + flip * rho_m
            a1 = u.a - (1 << p.depth)
            return np.where(u.high, a1 * d - dc + big_k * md, (a1 + big_k) * d - dc)


class RowMaxRelu(ReluTrunc):
    """The ReLU gate of a softmax row's maximum (``max(a, b) = b + ReLU(a - b)``) on the row's
    range: ``|a - b| < 2^13``, twice the row spread of 4096 that the exp table takes
    (activations.py), so its DCF is 29 levels deep instead of 47 (module doc, Parameters).
    Beyond it the comparison is wrong (never the view), and so is that row's softmax, as it
    already is past exp's range."""

    kind: ClassVar[str] = "relu_row"
    range_bits: ClassVar[int | None] = 13


class TruncTop:
    """``y = T`` = z / 2^s stochastically rounded with no DCF: the wrap from the mask's top bit
    (module doc: truncation from the top bit). ``s = f`` (``trunc_top``) or ``2f``
    (``trunc_top_wide``, after a quadratic spline, reading all 64 bits).

    Key per element: the mask share and shares of ``c = (r mod 2^(L-1)) >> s`` and
    ``t`` = bit ``L - 1`` of ``r``: 24 bytes. No round beyond the opening of ``o``.
    """

    width: ClassVar[int] = 0
    rounds: ClassVar[int] = 0

    def __init__(self, kind: str, wide: bool) -> None:
        self.kind = kind
        self.wide = wide

    def shift_and_bits(self, p: GateParams) -> tuple[int, int]:
        """``(s, L)``: the shift, and the low bits of ``o`` read (64 when wide)."""
        return (2 * p.frac_bits, 64) if self.wide else (p.frac_bits, p.low_bits)

    def gen(
        self,
        p: GateParams,
        n: int,
        rng: KeyedPRG,
        prg: FixedKeyPRG | None = None,
        out_bits: int = 64,
    ) -> tuple[GateKey, GateKey]:
        """Dealer: keys for ``n`` gates with fresh uniform masks (output right mod 2^64)."""
        s, bits = self.shift_and_bits(p)
        if not 0 <= s <= bits - 2:
            raise ValueError(f"{self.kind}: shift {s} does not fit {bits} bits")
        r = rng.ring(n)
        low = r.view(np.uint64) & _low_mask(bits - 1)
        top = (r.view(np.uint64) >> np.uint64(bits - 1)) & np.uint64(1)
        consts = np.stack([(low >> np.uint64(s)).astype(np.int64), top.astype(np.int64)], axis=1)
        (r0, r1), (c0, c1) = split(r, rng), split(consts, rng)
        return GateKey(self.kind, r0, c0, None, 0), GateKey(self.kind, r1, c1, None, 1)

    def eval(
        self,
        p: GateParams,
        key: GateKey,
        opened: Ring,
        prg: FixedKeyPRG | None = None,
        exchange: Exchange | None = None,
    ) -> Ring:
        """Party: shares (n,) of ``T`` from the opened ``o = z + r``; no exchange, no AES."""
        s, bits = self.shift_and_bits(p)
        from ppml.servers.mpc.fast import trunc_kernel  # numba: imported on first use

        o = np.ascontiguousarray(opened, dtype=np.int64).reshape(-1).view(np.uint64)
        consts = np.ascontiguousarray(key.consts, dtype=np.int64)
        out: Ring = np.empty(o.size, dtype=np.int64)
        trunc_kernel.trunc_top(o, consts, bits, s, key.party == 0, out)
        return out


TRUNC_TOP = TruncTop("trunc_top", wide=False)
TRUNC_TOP_WIDE = TruncTop("trunc_top_wide", wide=True)


FixedGate = type[ReluTrunc] | TruncTop
GATES: dict[str, FixedGate] = {
    g.kind: g for g in (ReluTrunc, RowMaxRelu, TRUNC_TOP, TRUNC_TOP_WIDE)
}
