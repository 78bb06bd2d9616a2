"""A piecewise-polynomial FSS spline gate on masked wires (after BCG+21's spline gates).

Function. A public spline of degree ``m`` (1 or 2) with breakpoints ``b_1 <
... < b_k`` and ``k + 1`` pieces, polynomials ``P_i`` of degree at most ``m``:
``g(x) = P_i(x)`` on ``[b_i, b_(i+1))`` (``b_0 = -inf``, ``b_(k+1) = +inf``).
Degree 1: ``P_i(x) = s_i x + c_i``; degree 2: ``P_i(x) = a_i x^2 + s_i x +
c_i``. In the ring (:meth:`Spline.fixed`): ``B_j = round(b_j 2^f)`` and the
coefficient of ``x^t`` at ``2^((m + 1 - t) f)``: degree 1, ``S_i = round(s_i
2^f)``, ``C_i = round(c_i 2^(2f))``, so for an input ``x`` at scale ``2^f``
the output ``S_i x + C_i`` is at ``2^(2f)`` and the plan's lazy truncation
applies (graph.py); degree 2, ``A_i = round(a_i 2^f)``, ``S_i = round(s_i
2^(2f))``, ``C_i = round(c_i 2^(3f))``, output ``A_i x^2 + S_i x + C_i`` at
``2^(3f)``, which the plan truncates by ``2f`` at once (gates.py,
:class:`~.gates.TruncTop`, ``trunc_top_wide``). A quadratic piece covers a far wider interval
than a line within the same bound, so a table needs far fewer breakpoints
(activations.py: exp 5 instead of 17, GELU 4 instead of 8), and the gate's
work is one DCF evaluation per breakpoint (below).

Wire. The parties hold shares of ``x`` at ``2^f`` (the plan truncates a
``2^(2f)`` value first), add shares of the key's fresh uniform mask ``r`` and
open ``o = x + r (mod 2^64)`` (the engine's one round). With ``n`` the gate
depth, ``d = n + 2`` (the input's ``n + 1`` bits and one of headroom,
Comparisons), ``h = 2^n``: inputs must satisfy ``x in [-2^n, 2^n)``, i.e.
real ``|v| < 2^(n-f)``; breakpoints must too.

Range. Each table states its own (:attr:`Spline.range_bits` ``R``, set once in
activations.py: real inputs ``|v| < 2^R``), so ``n = R + f``
(:meth:`Spline.depth`), or the plan's ReLU depth ``p.depth`` if that is
smaller (values are only right mod ``2^L``, gates.py). Dealer and parties
derive ``n`` from the same public table and :class:`~.gates.GateParams`; a
party refuses a key of another depth (and one whose ``n + 2`` bits exceed
``L``: :func:`_check_headroom`). Outside the range nothing is promised, and
exactly this happens: the comparisons see ``x`` mod ``2^d`` only. If ``x``'s
representative ``x'`` in ``[-2^n, 3 2^n)`` (``x' = x mod 2^d``) lies in the
range, the gate selects its piece ``i`` and outputs ``P_i`` of the true
``x``; if ``x'`` lies above it, the wrap read from the top bits (Comparisons)
may be the wrong one, and the gate outputs the last piece ``P_k(x)`` or,
under some masks, the first ``P_0(x)`` (each comparison is still 0 or 1: the
wrong wrap reads 0 where it is 1, and ``x'`` is above every breakpoint). So
GELU of ``4096 + t`` for small ``t > 0`` is ``4096 + t`` or 0, of ``-4096 -
t`` ``-4096 - t`` or 0; exp of ``x - max < -4096`` can be any of its pieces
applied to ``x``, a large negative value included. A quadratic piece is
applied in the ring: ``A_i x^2`` of a large ``x`` wraps mod ``2^64``, so such
an output is some ring value, as meaningless as the linear case's. Which
piece may depend on the mask there, but the party's view is unchanged
(Security).

Comparisons (one DCF, evaluated at ``k`` public points). Let ``u = x + h``
in ``[0, 2^(d-1))``, ``r' = r mod 2^d``, ``o' = (o + h) mod 2^d = (u + r') mod
2^d`` (public), ``beta_j = B_j + h`` and ``v_j = (o' - beta_j) mod 2^d``
(public). Then::

    1{x < b_j} = 1{u < beta_j} = 1{v_j < r'} - 1{o' < r'} + 1{o' < beta_j}

Argument: ``u + r' = o' + 2^d w`` with ``w = 1{o' < r'}`` (the wrap of the
masked input: ``o' < r'`` iff ``u + r'`` passed ``2^d``), and ``o' - beta_j =
v_j - 2^d 1{o' < beta_j}``. So ``u - beta_j = (v_j - r') - 2^d (1{o' <
beta_j} - w)``; writing ``v_j - r' = m - 2^d 1{v_j < r'}`` with ``m = (v_j -
r') mod 2^d`` in ``[0, 2^d)``, ``u - beta_j = m - 2^d t`` with ``t = 1{v_j <
r'} - w + 1{o' < beta_j}``. As ``u - beta_j`` lies in ``(-2^d, 2^d)``, ``t``
is 0 or 1, and ``u < beta_j`` iff ``t = 1``. Every wrap case (of ``u + r'``, of
``o' - beta_j``, of ``v_j - r'``) is one of these indicators. The dealer's key
is one DCF of depth ``d`` with threshold ``r'`` and payload ``(1, r, ..,
r^m)`` (all mod ``2^64``): the parties get shares of ``r^t 1{p < r'}``, ``t
<= m``, at any public ``p``; the public indicator ``1{o' < beta_j}``
multiplies shares of ``(1, r, .., r^m)`` that each party already has
(``(1, r_0)`` and ``(0, r_1)`` from its mask share; ``r^2``'s shares are the
key's one constant, degree 2 only). So ``e_j = 1{x < b_j}`` and ``r^t e_j``
are shared.

The wrap ``w = 1{o' < r'}`` needs no DCF evaluation of its own: as ``u <
2^(d-1)`` (the headroom bit), ``w = T (1 - O)`` with ``T`` the top bit of
``r'`` and ``O`` that of ``o'`` (public). Argument: if ``T = 0``, ``u + r' <
2^(d-1) + 2^(d-1)``, so ``w = 0``; if ``T = 1``, ``u + r' >= 2^(d-1)``, and
``w = 1`` gives ``o' = u + r' - 2^d < 2^(d-1)`` (``O = 0``) while ``w = 0``
gives ``o' = u + r' >= 2^(d-1)`` (``O = 1``). The dealer adds shares of ``T
r^t`` (``t <= m``) to the key's constants, and ``r^t w = (1 - O) T r^t`` is
linear in them. The headroom bit makes each of the ``k`` evaluations one
level deeper and saves the ``(k + 1)``-th: GELU's 5 walks of 19 levels
become 4 of 20, exp's 6 of 21 become 5 of 22 (about 12 % less evaluation
per gate, measured).

Resolution (a table's :attr:`Spline.comparison_bits` ``c``; ``s = f - c``,
:meth:`Spline.shift`, when ``c < f``). The comparisons need not read the
input's low ``s`` bits when every breakpoint lies on the ``2^-c`` grid (all
of activations.py's but rsqrt's do): they run on the top ``d - s`` bits,
with ``o'_h = o' >> s``, ``r'_h = r' >> s`` (the DCF's threshold, depth ``d
- s``) and ``beta_j >> s`` (exact: ``beta_j``'s low ``s`` bits are 0), the
same formula (``T`` and ``O`` are the top bits of ``r'_h`` and ``o'_h``).
As ``u + r' = o' + 2^d w``, ``o'_h - r'_h = floor(u / 2^s) + c - 2^(d-s)
w`` with ``c`` the carry out of the low bits (``c = 1`` iff ``(u mod 2^s) +
(r' mod 2^s) >= 2^s``), so the formula compares ``u_h = floor(u / 2^s) + c``
(at most ``2^(d-1-s)``: the wrap argument above holds for it) with ``beta_j /
2^s``: that is
``1{u < beta_j}`` unless ``c = 1`` and ``floor(u / 2^s) = beta_j / 2^s -
1``, i.e. ``x`` in ``[b_j - 2^s, b_j)`` (real ``[b_j - 2^-c, b_j)``), where
it is 0: there the gate applies piece ``j + 1``, the right neighbour,
instead of piece ``j``, as the mask's low bits fall (each table's bound
holds for the neighbour on these windows too: activations.py, measured in
tests/unit/test_fast_spline.py). With the headroom bit ``u_h`` never wraps:
the range's top ``2^s`` keeps its own pieces (the whole ``[-2^n, 2^n)``, for
GELU ``[-4096, 4096)``). The output is otherwise as below. The DCF is ``s``
levels shallower: GELU's 30 become 20 (``c = 6``), exp's 22 (``c = 8``).
Security is unchanged: the threshold
``r'_h`` is a function of ``r``, hidden by the DCF, and which piece a window
gets changes nothing a party sees.

Comparisons from bits (:class:`SplineBitGate`, kind ``<name>_bit``, for large
layers, graph.py). The same comparisons from a *one-bit* DCF with threshold
``r'`` (payload 1, early-terminated, dcf.py): the parties get XOR shares of
``c_p = 1{p < r'}`` at each of the ``k`` points. For each point the
dealer also shares a fresh uniform bit ``rho_p`` and ``rho_p r^t`` (``t <=
m``); the parties open ``e_p = c_p XOR rho_p`` (all points in one round, a
bit each; XOR shares of ``rho_p`` are the low bits of its additive shares)
and then ``r^t c_p = e_p r^t + (1 - 2 e_p) rho_p r^t`` is linear in shares
they hold: the same shares of ``r^t 1{p < r'}`` as the payload gives, and
the rest of the gate is unchanged (the output is the same ring value). Each
``e_p`` is uniform (``rho_p`` is fresh and used once), so the view stays
independent of ``x``. Cost: one more round and ``8 k (m + 1)`` bytes of
constants per element, for a DCF key of ``16 + (d - 7) 17 + 16`` bytes (253
at GELU's ``d = 20``, against 860 for a quadratic table's three 64-bit lanes)
and ``d - 6`` AES blocks per point instead of ``3 d + 1``: GELU 8 + 8 + 24 +
96 + 253 = 389 bytes per element instead of 900, and about a quarter of the
evaluation.

Output. ``g(x) = P_k(x) - sum_j e_j dP_j(x)`` with ``dP_j = P_j - P_(j-1)``
(coefficient differences): the active piece as differences at the
breakpoints (one compiled pass over the elements,
:mod:`~ppml.servers.mpc.fast.spline_kernels`). With ``x = o - r (mod
2^64)``, ``x^t = sum_u C(t, u) o^(t-u) (-r)^u``, so ``e_j dP_j(x)`` is a sum
of public multiples (powers of ``o`` times ``dP_j``'s coefficients) of the
shares of ``r^u e_j``; degree 1: ``dS_j (o e_j - r e_j) + dC_j e_j``; degree
2 adds ``dA_j (o^2 e_j - 2 o r e_j + r^2 e_j)``; and ``P_k(x)`` itself is
the same with ``e = 1`` (party 0's constant 1). Linear in the shares: one
opening, no further round. The result is exact in the ring: it equals
``P_i(X) mod 2^64`` for the ring input ``X`` in piece ``i`` (the telescoping
sum is exact mod ``2^64`` whatever its terms), and is ``P_i(X)`` itself
while ``|P_i(X)| < 2^63``, which holds for the tables here on their ranges:
degree 1 (activations.py: each outer piece is ``x``, a constant of size at
most 1, or has ``|slope| <= 0.985`` and ``|intercept| <= 2`` (the
reciprocal's first), so ``|g| < 2^31`` real on the whole range, below
``2^63`` at scale ``2^32``; the inner pieces have ``|x| <= 64``); degree 2
at ``2^(3f)`` (``2^48``: ``|g| < 2^15`` real): GELU's outer pieces are ``0``
and ``x`` with ``|x| < 4096``, exp's first is 0 and its last is used on its
domain ``[-0.515625, 0]`` only (``x - max <= 0``: for ``x > 0``, off its
domain, the parabola would exceed the ring), the inner pieces have ``|x| <=
7`` and ``|a|, |s|, |c| < 1.3``; graph.py refuses a quadratic table whose
range would not fit (``R + 3f > 62``). If the input is only right mod
``2^L`` (a gate output between layers, gates.py) so is the output, and that
is all a degree-1 gate's readers use; a quadratic gate's output is truncated
by ``2f`` on all 64 bits, so graph.py gives the gates feeding it full-width
lanes (its input is then right mod ``2^64``).

Error. The spline's own approximation error (activations.py, per function;
on the resolution's windows, the right neighbour's) plus the coefficients'
rounding: degree 1, ``|S_i 2^-f - s_i| <= 2^-(f+1)``
times ``|x|`` (0 where the table's slopes are multiples of ``2^-f``: the
outer pieces' 0 and 1, and every slope of the reciprocals; ``<= 5 * 2^-17``
on tanh's and sigmoid's inner pieces) and ``2^-(2f+1)`` for the intercept;
degree 2: 0 for ``a`` (the tables' ``a`` are multiples of ``2^-16``, exact
at ``f = 16``), ``2^-(2f+1) |x|`` for the slope and ``2^-(3f+1)`` for the
intercept, below ``1e-9``; tests/unit/test_fast_spline.py checks the rounded table
itself; then the truncation after it, stochastic rounding ``< 2^-f`` (by
``f`` or, degree 2, by ``2f``: the same bound). At full resolution the
comparisons are exact (no carry: they run on the input's full ``d`` bits);
at ``2^-c`` only the windows below the breakpoints may get the neighbour,
and a point exactly at a breakpoint still gets its own piece.

Key size per element and party: 8 (mask) + ``8 (m - 1)`` (shares of
``r^2``) + ``8 (m + 1)`` (shares of ``T r^t``) + a DCF of depth ``d`` (less
``s``) with ``m + 1`` 64-bit lanes, ``16 + d * (17 + 8 (m + 1)) + 8 (m +
1)`` bytes (dcf.py), whatever the number of breakpoints (the dealer's key
depends only on ``r``, the range, the resolution and the degree, not on the
function); plus the DCF's per-key-set nonce. At ``f = 16``: 848 bytes for
tanh and sigmoid (``R = 12``, ``c = 10``: ``d = 24``), 900 for GELU (``d =
20``) and 982 for exp (``d = 22``), 980 for rsqrt (full resolution, ``d =
28``), 716 for the row reciprocal (``d = 20``), 683 for the reciprocal
(``d = 19``). Evaluation: ``k`` DCF
evaluations of depth ``d`` per element (for few elements in one call over
copies of the key, :func:`_evaluate`), each ``1 + ceil((m + 1) / 2)`` AES
blocks per level (2 for degree 1, 3 for degree 2, dcf.py): exp's ``18 * 2``
blocks per level and element become ``6 * 3``, GELU's ``9 * 2`` become ``5 *
3``; and the truncation after a quadratic gate walks ``63 - 2f`` levels (31)
instead of 47.

Security (per party): the opened ``o`` is uniform (``r`` fresh and uniform
over ``Z_2^64``, whatever the depth: only the DCF's threshold is ``r mod
2^d``); the DCF key reveals nothing about its threshold ``r'`` or its payload
``(1, r, .., r^m)`` (DCF security, dcf.py), and evaluating it at several public
points is something any key holder can do; the mask share and the shares of
``r^2`` and ``T r^t`` are uniform (the other share is fresh). Nothing else
is received, so a party's view is independent of ``x``, in the range or not.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from itertools import pairwise
from types import ModuleType
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from ppml.servers.mpc.fast import dcf
from ppml.servers.mpc.fast.gates import Exchange, GateKey, GateParams, open_bits, split
from ppml.servers.mpc.fast.prg import FixedKeyPRG, KeyedPRG, Ring

MAX_DEGREE = 2  # quadratic pieces at most: their values are at 2^(3f), x^3 would need 2^(4f)


@dataclass(frozen=True)
class FixedSpline:
    """A spline of degree ``m`` in the ring: breakpoints at ``2^f``; piece ``i``'s coefficient of
    ``x^k`` (``pieces[i][m - k]``, highest degree first) at ``2^((m + 1 - k) f)``, so for an
    input at ``2^f`` every piece's value is at ``2^((m + 1) f)`` (:attr:`scale`, in units of f).
    """

    breakpoints: tuple[int, ...]
    pieces: tuple[tuple[int, ...], ...]

    @property
    def degree(self) -> int:
        return len(self.pieces[0]) - 1

    @property
    def scale(self) -> int:
        return self.degree + 1

    def at(self, i: int, x: int) -> int:
        """Piece ``i`` at the ring input ``x``, in exact integers (Horner)."""
        out = 0
        for c in self.pieces[i]:
            out = out * x + c
        return out


@dataclass(frozen=True)
class Spline:
    """A public piecewise-polynomial function: ``pieces[i]`` on ``[b_i, b_(i+1))``.

    Each piece is its coefficients, highest degree first: ``(slope, intercept)``
    (degree 1) or ``(a, slope, intercept)`` for ``a x^2 + slope x + intercept``
    (degree 2; an outer piece must have ``a = 0`` unless ``domain`` ends on
    its side, so inputs far out, up to the range, get an exact line, module
    doc). ``bound``: the documented absolute error against the function it
    approximates on ``domain`` (closed interval; approximation and fixed-point
    rounding, before the truncation that follows). Outside ``domain`` the
    outer pieces extend and nothing is promised. ``range_bits`` R: the gate's
    inputs must satisfy ``|x| < 2^R`` (module doc, Range); breakpoints and the
    domain's finite ends lie inside it.
    """

    name: str
    breakpoints: tuple[float, ...]
    pieces: tuple[tuple[float, ...], ...]
    bound: float
    domain: tuple[float, float] = (-math.inf, math.inf)
    range_bits: int = 31
    comparison_bits: int | None = None

    def __post_init__(self) -> None:
        b = self.breakpoints
        if len(self.pieces) != len(b) + 1 or any(x >= y for x, y in pairwise(b)):
            raise ValueError("a spline needs increasing breakpoints and one more piece")
        m = self.degree
        if not 1 <= m <= MAX_DEGREE or any(len(c) != m + 1 for c in self.pieces):
            raise ValueError(f"{self.name}: pieces of one degree, 1 to {MAX_DEGREE}")
        unbounded = (self.pieces[0], self.domain[0]), (self.pieces[-1], self.domain[1])
        if m > 1 and any(c[0] != 0 and math.isinf(end) for c, end in unbounded):
            raise ValueError(f"{self.name}: an outer piece must be a line unless its side ends")
        edge = 2.0**self.range_bits
        ends = [e for e in self.domain if math.isfinite(e)]
        if not 0 <= self.range_bits <= 62 or any(not -edge <= x < edge for x in (*b, *ends)):
            raise ValueError(f"{self.name}: breakpoints or domain outside its range")
        c = self.comparison_bits
        if c is not None and (c < 0 or any((x * 2.0**c) % 1 for x in b)):
            raise ValueError(f"{self.name}: breakpoints off the comparisons' grid of 2^-{c}")

    @property
    def degree(self) -> int:
        return len(self.pieces[0]) - 1

    def depth(self, p: GateParams) -> int:
        """The gate's ``n`` under ``p``: the table's range at ``2^f``, or ``p``'s if narrower."""
        return min(p.depth, self.range_bits + p.frac_bits)

    def shift(self, p: GateParams) -> int:
        """The low input bits the comparisons drop under ``p`` (module doc, Resolution)."""
        c = self.comparison_bits
        return 0 if c is None else max(0, p.frac_bits - c)

    def key_depth(self, p: GateParams) -> int:
        """The DCF's depth: the input's ``n + 1`` bits and one of headroom (module doc,
        Comparisons), less those the comparisons drop."""
        return self.depth(p) + 2 - self.shift(p)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The spline in float64 (a reference; the gate computes :meth:`fixed`)."""
        i = np.searchsorted(np.asarray(self.breakpoints), x, side="right")
        out = np.zeros(np.shape(x))
        for c in zip(*self.pieces, strict=True):
            out = out * x + np.asarray(c)[i]
        return out

    def fixed(self, frac_bits: int) -> FixedSpline:
        """The ring coefficients at ``frac_bits`` fractional bits (rounded to nearest)."""
        one = 1 << frac_bits
        return FixedSpline(
            tuple(round(b * one) for b in self.breakpoints),
            tuple(tuple(round(c * one ** (i + 1)) for i, c in enumerate(p)) for p in self.pieces),
        )


def deal(
    n: int,
    r: Ring,
    rng: KeyedPRG,
    prg: FixedKeyPRG | None,
    kind: str,
    degree: int = 1,
    shift: int = 0,
) -> tuple[GateKey, GateKey]:
    """Keys for masks ``r`` (n,): a DCF ``p -> (1, r, .., r^m) 1{p < r'}`` with ``r' = (r mod
    2^(n + 2)) >> shift`` of depth ``n + 2 - shift`` (``m`` the degree), and shares of ``r^2 ..
    r^m`` and of ``T r^t`` (``t <= m``, ``T`` the top bit of ``r'``) (the key's constants)."""
    depth = n + 2 - shift
    low = _threshold(r, n, shift)
    powers, wrap = _powers(r, degree, low, depth)
    k0, k1 = dcf.gen(low, np.stack(powers), depth, rng, prg, (64,) * (degree + 1))
    r0, r1 = split(r, rng)
    c0, c1 = split(np.stack([*powers[2:], *wrap], axis=1), rng)
    return GateKey(kind, r0, c0, k0), GateKey(kind, r1, c1, k1)


class SplineGate:
    """The gate of one public spline (module doc): one opening, no further round."""

    rounds: ClassVar[int] = 0

    def __init__(self, spline: Spline) -> None:
        self.spline = spline
        self.kind = spline.name
        self.width = spline.degree + 1
        self._dcf_width = self.width  # the DCF's payload lanes: (1, r, .., r^m)

    def gen(
        self,
        p: GateParams,
        n: int,
        rng: KeyedPRG,
        prg: FixedKeyPRG | None = None,
        out_bits: int = 64,
    ) -> tuple[GateKey, GateKey]:
        """Dealer: keys for ``n`` gates, fresh uniform masks (full lanes whatever ``out_bits``)."""
        s = self.spline
        _check_headroom(s, p)
        return deal(s.depth(p), rng.ring(n), rng, prg, self.kind, s.degree, s.shift(p))

    def eval(
        self,
        p: GateParams,
        key: GateKey,
        opened: Ring,
        prg: FixedKeyPRG | None = None,
        exchange: Exchange | None = None,
    ) -> Ring:
        """Party: shares (n,) of piece ``i`` at ``x``, at ``2^((m + 1) f)``, from ``o = x + r``."""
        if key.kind != self.kind:
            raise ValueError(f"a {key.kind} key for the {self.kind} gate")
        fx, depth = self.spline.fixed(p.frac_bits), self.spline.depth(p)
        h, shift, bits = 1 << depth, self.spline.shift(p), self.spline.key_depth(p)
        if any(not -h <= b < h or b % (1 << shift) for b in fx.breakpoints):
            raise ValueError(f"{self.kind}: breakpoints outside the gate's range 2^{depth}")
        if key.fss.depth != bits or key.fss.width != self._dcf_width:
            raise ValueError(f"a {self.kind} key of depth {key.fss.depth} (need {bits})")
        _check_headroom(self.spline, p)
        m, k = self.spline.degree, len(fx.breakpoints)
        if key.consts.shape != (key.mask.size, self._constants(m, k)):
            raise ValueError(f"a {self.kind} key with {key.consts.shape[-1]} constants per gate")
        low = np.uint64((1 << bits) - 1)
        o = np.ascontiguousarray(opened, dtype=np.int64).reshape(-1)
        # o' = (o + h) mod 2^(n + 2), its top ``bits`` bits (all of them unless shift > 0)
        top = ((o.view(np.uint64) + np.uint64(h)) >> np.uint64(shift)) & low
        betas = np.array([(b + h) >> shift for b in fx.breakpoints], dtype=np.uint64)
        points = np.array([(top - beta) & low for beta in betas], dtype=np.uint64)
        points = points.reshape(k, o.size)
        mask = np.ascontiguousarray(key.mask, dtype=np.int64)
        consts = np.ascontiguousarray(key.consts, dtype=np.int64)  # r^2 .. r^m, T r^t (, rho's)
        first = key.party == 0
        at, e = self._comparisons(key, points, prg, exchange, consts, m)
        out = np.empty_like(o)
        opened_bits = e is not None
        e = np.zeros((1, 1), dtype=np.uint8) if e is None else e
        coef = _coefficients(fx)
        wrap_bit = np.uint64(bits - 1)  # o''s top bit: the wrap is T (1 - that bit)
        _kernels().piece_sum(
            o, top, wrap_bit, at, e, opened_bits, betas, coef, mask, consts, first, out
        )
        return out

    @staticmethod
    def _constants(m: int, k: int) -> int:
        """Constants per gate: shares of ``r^2 .. r^m`` and of ``T r^t`` (``t <= m``)."""
        return 2 * m

    @staticmethod
    def _comparisons(
        key: GateKey,
        points: np.ndarray,
        prg: FixedKeyPRG | None,
        exchange: Exchange | None,
        consts: Ring,
        m: int,
    ) -> tuple[Ring, npt.NDArray[np.uint8] | None]:
        """Shares (k, m + 1, n) of ``(1, r, .., r^m) 1{p < r'}`` at each row ``p`` of
        ``points``: the DCF's payload, evaluated at every point (and no opened bits)."""
        if not points.shape[0]:  # a table of one piece compares nothing
            return np.zeros((0, key.fss.width, points.shape[1]), dtype=np.int64), None
        return np.ascontiguousarray(_evaluate(key.fss, points, prg)), None


class SplineBitGate(SplineGate):
    """The same spline from a one-bit DCF (module doc, comparisons from bits): one more round."""

    rounds: ClassVar[int] = 1

    def __init__(self, spline: Spline) -> None:
        super().__init__(spline)
        self.kind = f"{spline.name}{BIT_SUFFIX}"
        self._dcf_width = 1

    def gen(
        self,
        p: GateParams,
        n: int,
        rng: KeyedPRG,
        prg: FixedKeyPRG | None = None,
        out_bits: int = 64,
    ) -> tuple[GateKey, GateKey]:
        """Dealer: keys for ``n`` gates, fresh uniform masks."""
        s = self.spline
        _check_headroom(s, p)
        points = len(s.breakpoints)
        r = rng.ring(n)
        return deal_bits(s.depth(p), r, rng, prg, self.kind, s.degree, points, s.shift(p))

    @staticmethod
    def _constants(m: int, k: int) -> int:
        """As :meth:`SplineGate._constants`, then ``rho`` and ``rho r^t`` for each point."""
        return 2 * m + k * (m + 1)

    @staticmethod
    def _comparisons(
        key: GateKey,
        points: np.ndarray,
        prg: FixedKeyPRG | None,
        exchange: Exchange | None,
        consts: Ring,
        m: int,
    ) -> tuple[Ring, npt.NDArray[np.uint8] | None]:
        """As :meth:`SplineGate._comparisons`, from XOR shares of the bits ``c = 1{p < r'}``:
        the opened ``e = c ^ rho`` per point (k, n) (one round); the output pass takes
        ``r^t c = e r^t + (1 - 2e) rho r^t`` from them (no payload shares: an empty array)."""
        if exchange is None:
            raise ValueError("this spline gate opens bits: it needs the exchange with the peer")
        k, n = points.shape  # consts: r^2 .. r^m, T r^t (m + 1), then k (m + 1) products
        bits = (
            _evaluate(key.fss, points, prg)[:, 0] if k else np.zeros((0, n), dtype=np.int64)
        )  # (k, n) XOR shares
        rho = consts[:, 2 * m :: m + 1].T  # per point: rho's shares (its low bit, XOR shares)
        masked = ((bits ^ rho) & 1).astype(np.uint8)
        e = open_bits(masked.reshape(-1), exchange).reshape(k, n)
        return np.zeros((1, 1, 1), dtype=np.int64), e


def deal_bits(
    n: int,
    r: Ring,
    rng: KeyedPRG,
    prg: FixedKeyPRG | None,
    kind: str,
    degree: int,
    points: int,
    shift: int = 0,
) -> tuple[GateKey, GateKey]:
    """Keys for masks ``r`` (n,): a one-bit DCF ``p -> 1{p < r'}`` (``r'`` as :func:`deal`'s, of
    depth ``n + 2 - shift``), and shares of ``r^2 .. r^m`` and ``T r^t`` (as :func:`deal`'s)
    then, for each of the ``points`` evaluations, of a fresh uniform bit ``rho`` and ``rho r,
    .., rho r^m`` (the key's constants)."""
    depth = n + 2 - shift
    low = _threshold(r, n, shift)
    size = r.size
    powers, wrap = _powers(r, degree, low, depth)
    rhos = (rng.uint64((points, size)) & np.uint64(1)).astype(np.int64)
    with np.errstate(over="ignore"):
        per_point = [rho * power for rho in rhos for power in powers]
    k0, k1 = dcf.gen(low, np.ones((1, size), dtype=np.int64), depth, rng, prg, (1,))
    r0, r1 = split(r, rng)
    c0, c1 = split(np.stack([*powers[2:], *wrap, *per_point], axis=1), rng)
    return GateKey(kind, r0, c0, k0), GateKey(kind, r1, c1, k1)


def _powers(r: Ring, degree: int, low: np.ndarray, depth: int) -> tuple[list[Ring], list[Ring]]:
    """``(1, r, .., r^m)`` and ``T`` times each (``T`` the top bit of the threshold ``low``,
    a ``depth``-bit value), mod ``2^64``."""
    with np.errstate(over="ignore"):
        powers = [np.ones_like(r), r]
        for _ in range(degree - 1):
            powers.append(powers[-1] * r)
        top = (low >> np.uint64(depth - 1)).astype(np.int64)
        return powers, [top * power for power in powers]


def _check_headroom(spline: Spline, p: GateParams) -> None:
    """The comparisons read ``n + 2`` input bits: they must be right (``n + 2 <= L``)."""
    if spline.depth(p) + 2 > p.low_bits:
        raise ValueError(f"{spline.name}: depth {spline.depth(p)} leaves no headroom bit at {p}")


def _threshold(r: Ring, n: int, shift: int) -> np.ndarray:
    """The DCF's threshold ``r' = (r mod 2^(n + 2)) >> shift`` (uint64)."""
    return (r.view(np.uint64) & np.uint64((1 << (n + 2)) - 1)) >> np.uint64(shift)


BIT_SUFFIX = "_bit"  # a spline's gate kind from one-bit comparisons: its name and this


@functools.lru_cache(maxsize=64)
def _coefficients(fx: FixedSpline) -> np.ndarray:
    """``coef[j, t, u]`` (int64, mod ``2^64``) for :func:`~.spline_kernels.piece_sum`.

    ``e P(x)`` for ``x = o - r`` from shares ``below[t]`` of ``r^t e``: as
    ``x^k = sum_t C(k, t) o^(k-t) (-r)^t``, ``e P(x) = sum_t below[t] (-1)^t
    sum_(k >= t) c_k C(k, t) o^(k - t)``, linear in the shares; ``coef[j, t,
    u]`` is ``(-1)^t c_(t + u) C(t + u, t)`` for ``P = dP_j = P_(j+1) - P_j``
    (``j < k``) and for the last piece ``P_k`` (``j = k``).
    """
    m = len(fx.pieces[0]) - 1
    polys = [
        [b - a for a, b in zip(fx.pieces[j], fx.pieces[j + 1], strict=True)]
        for j in range(len(fx.breakpoints))
    ]
    polys.append(list(fx.pieces[-1]))
    coef = np.zeros((len(polys), m + 1, m + 1), dtype=np.int64)
    for j, poly in enumerate(polys):
        c = poly[::-1]  # c[k]: the coefficient of x^k
        for t in range(m + 1):
            for u in range(m + 1 - t):
                coef[j, t, u] = _signed((-1) ** t * c[t + u] * math.comb(t + u, t))
    return coef


def _kernels() -> ModuleType:
    """:mod:`~ppml.servers.mpc.fast.spline_kernels`, imported on first use (numba, ~0.7 s)."""
    from ppml.servers.mpc.fast import spline_kernels

    return spline_kernels


def _signed(v: int) -> np.int64:
    """``v`` mod ``2^64`` as an int64."""
    return np.int64(((v + (1 << 63)) % (1 << 64)) - (1 << 63))


STACKED_POINTS = 1 << 15  # up to this many points in all, one DCF evaluation over copies of the key


def _evaluate(key: dcf.DCFKey, points: np.ndarray, prg: FixedKeyPRG | None) -> Ring:
    """Shares (m, k, n) of the key's outputs at each row of public ``points`` (m, n).

    Few elements: one evaluation of ``m`` copies of the key (each keeps its
    instance ids), so the tree walk's per-level cost is paid once, not ``m``
    times (about 3x faster for one image's GELU, 4x for a LayerNorm's 128 rsqrt
    gates); many: one evaluation per row (less memory).
    """
    m, n = points.shape
    if m * n <= STACKED_POINTS:
        stacked = dcf.DCFKey.concat([key] * m)
        return (
            dcf.evaluate(stacked, points.reshape(-1), prg).reshape(key.width, m, n).swapaxes(0, 1)
        )
    return np.stack([dcf.evaluate(key, row, prg) for row in points])
