"""FSS gates on masked wires: fused ReLU + truncation, and truncation alone (by f or 2f).

Wire convention. A linear layer leaves the two parties with additive shares
``z_0 + z_1 = z (mod 2^64)`` of a pre-activation at scale ``2^(2f)``. The
dealer drew a uniform mask ``r`` for this wire and gave each party a share of
it (:attr:`GateKey.mask`); the parties open ``o = z + r (mod 2^64)`` (one
round, done by the engine). A gate maps the public ``o`` and its key to
additive shares of its output at scale ``2^f``; the engine then adds shares of
the next wire's mask and opens again.

Parameters (:class:`GateParams`): ``f`` fractional bits, ``n`` the depth of
the comparison. Supported input range: ``z`` in ``[-2^(n+f), 2^(n+f) - 2^f]``,
i.e. real pre-activations in ``[-2^(n-f), 2^(n-f) - 2^-f]``. Default ``n =
47``, ``f = 16``, so ``L = n + 1 + f = 64`` and the range is the whole ring:
every ``z`` in ``[-2^63, 2^63 - 2^16]``, i.e. ``|v| < 2^31`` (the largest
pre-activation a fixed-point product at scale ``2^32`` can hold; a linear
layer whose true output is larger has already wrapped the ring, in any
engine). A smaller ``n`` shrinks keys and evaluation but makes values
outside ``|v| < 2^(n-f)`` wrong (not insecure) without an error.

Truncation (both gates), with ``L = n + 1 + f``, ``u = z + 2^(n+f)`` in
``[0, 2^L)``, ``x = (o + 2^(n+f)) mod 2^L = (u + r) mod 2^L``, ``a = x >> f``,
``c = (r mod 2^L) >> f``: the high parts give ``V = (a - c) mod 2^(n+1)``, which
equals ``(u >> f) + carry`` with ``carry = 1{x mod 2^f < r mod 2^f}``, and never
wraps inside the range. So ``T = V - 2^n = floor(z / 2^f) + carry``. We do not
remove the carry: given the uniform mask, ``carry`` is 1 with probability
``(z mod 2^f) / 2^f``, so ``T`` is z / 2^f *stochastically rounded*: unbiased,
``|T - z / 2^f| < 1`` ulp, always, with no large-error event (the range
assumption, not a 2^-k chance, rules out the wrap that makes SecureML-style
local truncation fail). Exact floor would need a second DCF on the low ``f``
bits and, fused with ReLU, a product of two DCF outputs (one more round).

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

Truncation alone uses a DCF with payload ``(1 - m, m)`` and constants
``(c, m)``, and no further round.

Truncation from one bit (:class:`TruncBit`, for large layers). The same
``T``, with ``B`` as XOR shares from a one-bit DCF (early-terminated, as
ReLU's) turned into additive shares as ReLU turns ``D``: the dealer adds a
uniform bit ``rho`` and shares ``c, m, rho, m rho``; the parties open ``e = B
XOR rho`` (one round, one bit per element), then ``B = e + (1 - 2e) rho`` and
``m B = e m + (1 - 2e) m rho`` are local and ``w`` is affine in them as above.
One more round than :class:`Trunc`, for a key of 8 + 32 + 712 = 752 bytes at
``n = 47`` instead of 1,031 and about half the evaluation (one AES block per
level instead of two, 41 levels instead of 48). Its opened ``e`` is uniform
(``rho`` is fresh), so a party's view stays independent of ``z``.

Output width. A gate feeding another layer only needs its output correct mod
``2^L``: the next layer is linear over the ring and the next gate reads only
``o mod 2^L``; the opened ``y + r`` stays uniform because the next mask ``r``
is uniform over all 64 bits. So gates take ``out_bits`` (``L`` between
layers, 64 for the model output) and the DCF lanes carry only what that
needs: truncation ``(out - n - 1)`` bits twice (its terms are multiples of
``K = 2^(n+1)``); ReLU's one-bit lane needs nothing more. This shrinks a key,
not the computation.

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
s c, m)`` that needed no second round); truncation at the output (lanes 16,
16: 4 bytes) 8 + 16 + 1007 = 1031 bytes. (At ``n = 31``, range ``|v| <
2^15``: 488 and 823 bytes.) Plus, per key set (one gate
of one bundle), the DCF's nonce: :data:`~ppml.servers.mpc.fast.dcf.NONCE_BYTES`.
Online, ReLU costs two rounds (the opening of ``o`` and of ``e``, ``n / 8``
bytes), truncation one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from ppml.servers.mpc.fast import dcf
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
        """DCF lane widths of gate ``kind`` whose output is needed mod ``2^out_bits``."""
        if not self.low_bits <= out_bits <= 64:
            raise ValueError("out_bits must lie in [low_bits, 64]")
        if kind == "relu":
            return (1,)  # XOR shares of the comparison bit B
        wrap = max(1, out_bits - self.depth - 1)  # lanes multiplied by K = 2^(n+1)
        return (wrap, wrap)

    @property
    def real_bound(self) -> float:
        """Pre-activations (real units) must lie in ``[-bound, bound - 2^-f]``."""
        return float(2.0 ** (self.depth - self.frac_bits))


@dataclass(frozen=True)
class GateKey:
    """One party's material for ``n`` gate instances.

    ``mask``: (n,) share of the input-wire mask r; ``consts``: (n, c) shares of
    dealer-known constants; ``dcf``: DCF keys for the n instances.
    """

    kind: str
    mask: Ring
    consts: Ring
    dcf: dcf.DCFKey

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def nbytes(self) -> int:
        return self.mask.nbytes + self.consts.nbytes + self.dcf.nbytes

    def head(self, n: int) -> GateKey:
        """The material of the first ``n`` instances (views)."""
        return self.take(0, n)

    def take(self, start: int, stop: int) -> GateKey:
        """The material of instances ``start .. stop - 1`` (views)."""
        return GateKey(
            self.kind, self.mask[start:stop], self.consts[start:stop], self.dcf.take(start, stop)
        )

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}.kind": np.frombuffer(self.kind.encode(), dtype=np.uint8).copy(),
            f"{prefix}.mask": self.mask,
            f"{prefix}.consts": self.consts,
            **self.dcf.to_arrays(f"{prefix}.dcf"),
        }

    @classmethod
    def concat(cls, keys: list[GateKey]) -> GateKey:
        """Material for all elements of ``keys`` in order (one kind)."""
        if len({k.kind for k in keys}) != 1:
            raise ValueError("can only concatenate gate keys of one kind")
        return cls(
            keys[0].kind,
            np.concatenate([k.mask for k in keys]),
            np.concatenate([k.consts for k in keys]),
            dcf.DCFKey.concat([k.dcf for k in keys]),
        )

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> GateKey:
        return cls(
            kind=bytes(arrays[f"{prefix}.kind"].astype(np.uint8)).decode(),
            mask=np.ascontiguousarray(arrays[f"{prefix}.mask"], dtype=np.int64),
            consts=np.ascontiguousarray(arrays[f"{prefix}.consts"], dtype=np.int64),
            dcf=dcf.DCFKey.from_arrays(arrays, f"{prefix}.dcf"),
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

    @staticmethod
    def gen(
        p: GateParams, n: int, rng: KeyedPRG, prg: FixedKeyPRG | None = None, out_bits: int = 64
    ) -> tuple[GateKey, GateKey]:
        """Dealer: keys for ``n`` gates with fresh uniform masks, output needed mod 2^out_bits."""
        r = rng.ring(n)
        q = _mask_parts(p, r)
        rho = (rng.uint64(n) & np.uint64(1)).astype(np.int64)
        with np.errstate(over="ignore"):
            consts = np.stack([q.m, q.c, rho, rho * q.c, rho * q.m], axis=1)
        beta = np.ones((1, n), dtype=np.int64)
        k0, k1 = dcf.gen(q.alpha, beta, p.depth, rng, prg, p.lanes("relu", out_bits))
        (r0, r1), (c0, c1) = split(r, rng), split(consts, rng)
        return GateKey("relu", r0, c0, k0), GateKey("relu", r1, c1, k1)

    @staticmethod
    def eval(
        p: GateParams,
        key: GateKey,
        opened: Ring,
        prg: FixedKeyPRG | None = None,
        exchange: Exchange | None = None,
    ) -> Ring:
        """Party: shares (n,) of ``ReLU(T)`` from the opened ``o = z + r``; one exchange."""
        if exchange is None:
            raise ValueError("the ReLU gate opens a bit: it needs the exchange with the peer")
        u = _public(p, opened)
        b = dcf.evaluate(key.dcf, u.low, prg)[0]
        mu, gamma, rho, rho_c, rho_m = key.consts.T
        first = key.dcf.party == 0
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


class Trunc:
    """``y = T`` = z / 2^f stochastically rounded (module doc). One DCF, width 2."""

    kind: ClassVar[str] = "trunc"
    width: ClassVar[int] = 2
    rounds: ClassVar[int] = 0

    @staticmethod
    def gen(
        p: GateParams, n: int, rng: KeyedPRG, prg: FixedKeyPRG | None = None, out_bits: int = 64
    ) -> tuple[GateKey, GateKey]:
        """Dealer: keys for ``n`` gates with fresh uniform masks, output needed mod 2^out_bits."""
        r = rng.ring(n)
        q = _mask_parts(p, r)
        beta = np.stack([1 - q.m, q.m])
        consts = np.stack([q.c, q.m], axis=1)
        k0, k1 = dcf.gen(q.alpha, beta, p.depth, rng, prg, p.lanes("trunc", out_bits))
        (r0, r1), (c0, c1) = split(r, rng), split(consts, rng)
        return GateKey("trunc", r0, c0, k0), GateKey("trunc", r1, c1, k1)

    @staticmethod
    def eval(
        p: GateParams,
        key: GateKey,
        opened: Ring,
        prg: FixedKeyPRG | None = None,
        exchange: Exchange | None = None,
    ) -> Ring:
        """Party: shares (n,) of ``T`` from the opened ``o = z + r``; no exchange."""
        u = _public(p, opened)
        out = dcf.evaluate(key.dcf, u.low, prg)
        gamma, mu = key.consts[:, 0], key.consts[:, 1]
        e = 1 if key.dcf.party == 0 else 0
        h, big_k = 1 << p.depth, 1 << (p.depth + 1)
        with np.errstate(over="ignore"):
            w = np.where(u.high, out[1], mu + out[0])
            return e * (u.a - h) - gamma + big_k * w


class TruncBit:
    """``y = T`` = z / 2^f stochastically rounded, from a one-bit DCF (module doc: from one bit).

    Trunc's arithmetic with the comparison bit ``B`` as XOR shares from a
    one-bit DCF (early-terminated, as the ReLU gate's) and turned into additive
    shares with one opening of ``B XOR rho``: a smaller key and about half the
    evaluation of :class:`Trunc` (one AES block per level, not two), for one
    more round. Constants ``c, m, rho, m rho``.
    """

    kind: ClassVar[str] = "trunc_bit"
    width: ClassVar[int] = 1
    rounds: ClassVar[int] = 1  # beyond the opening of ``o``

    @staticmethod
    def gen(
        p: GateParams, n: int, rng: KeyedPRG, prg: FixedKeyPRG | None = None, out_bits: int = 64
    ) -> tuple[GateKey, GateKey]:
        """Dealer: keys for ``n`` gates with fresh uniform masks (any ``out_bits``: one bit)."""
        p.lanes("trunc", out_bits)  # the same range check as Trunc
        r = rng.ring(n)
        q = _mask_parts(p, r)
        rho = (rng.uint64(n) & np.uint64(1)).astype(np.int64)
        consts = np.stack([q.c, q.m, rho, rho * q.m], axis=1)
        beta = np.ones((1, n), dtype=np.int64)
        k0, k1 = dcf.gen(q.alpha, beta, p.depth, rng, prg, (1,))
        (r0, r1), (c0, c1) = split(r, rng), split(consts, rng)
        return GateKey(TruncBit.kind, r0, c0, k0), GateKey(TruncBit.kind, r1, c1, k1)

    @staticmethod
    def eval(
        p: GateParams,
        key: GateKey,
        opened: Ring,
        prg: FixedKeyPRG | None = None,
        exchange: Exchange | None = None,
    ) -> Ring:
        """Party: shares (n,) of ``T`` from the opened ``o = z + r``; one exchange (bits)."""
        if exchange is None:
            raise ValueError("this truncation opens a bit: it needs the exchange with the peer")
        u = _public(p, opened)
        b = dcf.evaluate(key.dcf, u.low, prg)[0]
        gamma, mu, rho, rho_m = key.consts.T
        first = key.dcf.party == 0
        mine = (b ^ rho).astype(np.uint8) & np.uint8(1)  # XOR share of B XOR rho
        e = open_bits(mine, exchange).astype(np.int64)
        flip = 1 - 2 * e
        h, big_k = 1 << p.depth, 1 << (p.depth + 1)
        with np.errstate(over="ignore"):
            bits = flip * rho + (e if first else 0)  # B
            mb = e * mu + flip * rho_m  # m B
            w = np.where(u.high, mb, mu + bits - mb)
            return (u.a - h if first else 0) - gamma + big_k * w


class WideTrunc:
    """``y = z / 2^(2f)`` stochastically rounded: the truncation gate ``base`` at ``f' = 2f``,
    ``n' = 63 - 2f`` (``trunc_wide`` on :class:`Trunc`, ``trunc_wide_bit`` on :class:`TruncBit`).

    After a quadratic spline gate (spline.py), whose output is at ``2^(3f)``.
    ``L' = n' + 1 + f' = 64``: the range is the whole ring, ``z`` in ``[-2^63,
    2^63 - 2^(2f)]`` (real ``|v| < 2^(63 - 3f)``, 2^15 at ``f = 16``: every
    value the ring holds at that scale), read in full, so the input must be
    right mod ``2^64`` (graph.py marks its sources full-width) and the lanes
    are full-width whatever ``out_bits``. Error, security and rounds as the
    base gate's (``< 2^-f``, stochastic rounding, no large-error event); its
    DCF has depth ``63 - 2f`` (31 at ``f = 16``, against 47 for a truncation
    by ``f``): 25 AES blocks per element from one bit, 63 with two lanes.
    """

    def __init__(self, base: type[Trunc] | type[TruncBit], kind: str) -> None:
        self.base = base
        self.kind = kind
        self.width = base.width
        self.rounds = base.rounds

    @staticmethod
    def params(p: GateParams) -> GateParams:
        return GateParams(2 * p.frac_bits, 63 - 2 * p.frac_bits)

    def gen(
        self,
        p: GateParams,
        n: int,
        rng: KeyedPRG,
        prg: FixedKeyPRG | None = None,
        out_bits: int = 64,
    ) -> tuple[GateKey, GateKey]:
        """Dealer: keys for ``n`` gates with fresh uniform masks (64-bit output lanes)."""
        keys = self.base.gen(self.params(p), n, rng, prg, 64)
        return replace(keys[0], kind=self.kind), replace(keys[1], kind=self.kind)

    def eval(
        self,
        p: GateParams,
        key: GateKey,
        opened: Ring,
        prg: FixedKeyPRG | None = None,
        exchange: Exchange | None = None,
    ) -> Ring:
        """Party: shares (n,) of ``z / 2^(2f)`` from the opened ``o = z + r``."""
        if key.dcf.depth != self.params(p).depth:
            raise ValueError(f"a {self.kind} key of depth {key.dcf.depth}")
        return self.base.eval(self.params(p), key, opened, prg, exchange)


TRUNC_WIDE = WideTrunc(Trunc, "trunc_wide")
TRUNC_WIDE_BIT = WideTrunc(TruncBit, "trunc_wide_bit")  # large layers (graph.py)


FixedGate = type[ReluTrunc] | type[Trunc] | type[TruncBit] | WideTrunc
GATES: dict[str, FixedGate] = {
    g.kind: g for g in (ReluTrunc, Trunc, TruncBit, TRUNC_WIDE, TRUNC_WIDE_BIT)
}
