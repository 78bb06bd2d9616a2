"""A piecewise-linear FSS spline gate on masked wires (after BCG+21's spline gates).

Function. A public spline with breakpoints ``b_1 < ... < b_k`` and ``k + 1``
pieces ``(s_i, c_i)``: ``g(x) = s_i x + c_i`` on ``[b_i, b_(i+1))`` (``b_0 =
-inf``, ``b_(k+1) = +inf``). In the ring (:meth:`Spline.fixed`): ``B_j =
round(b_j 2^f)``, ``S_i = round(s_i 2^f)``, ``C_i = round(c_i 2^(2f))``, so for
an input ``x`` at scale ``2^f`` the output ``S_i x + C_i`` is at ``2^(2f)``
and the plan's lazy truncation applies (graph.py).

Wire. The parties hold shares of ``x`` at ``2^f`` (the plan truncates a
``2^(2f)`` value first), add shares of the key's fresh uniform mask ``r`` and
open ``o = x + r (mod 2^64)`` (the engine's one round). With ``n`` the gate
depth, ``d = n + 1``, ``h = 2^n``: inputs must satisfy ``x in [-2^n, 2^n)``,
i.e. real ``|v| < 2^(n-f)``; breakpoints must too.

Range. Each table states its own (:attr:`Spline.range_bits` ``R``, set once in
activations.py: real inputs ``|v| < 2^R``), so ``n = R + f``
(:meth:`Spline.depth`), or the plan's ReLU depth ``p.depth`` if that is
smaller (values are only right mod ``2^L``, gates.py). Dealer and parties
derive ``n`` from the same public table and :class:`~.gates.GateParams`; a
party refuses a key of another depth. Outside the range nothing is promised,
and exactly this happens: the comparisons see ``x`` mod ``2^d`` only, so the
gate selects the piece ``i`` of ``x``'s representative ``x'`` in ``[-2^n,
2^n)`` (``x' = x mod 2^d``, centred) and outputs ``S_i x + C_i`` on the true
``x`` (e.g. GELU of ``4096 + t`` for small ``t > 0`` is 0, of ``-4096 - t``
is ``-4096 - t``; exp of ``x - max < -4096`` can be any of its pieces applied
to ``x``, a large negative value included). Which piece depends only on ``x``,
not on the mask: the output is deterministic, not random, and the party's
view is unchanged (Security).

Comparisons (one DCF, evaluated at ``k + 1`` public points). Let ``u = x + h``
in ``[0, 2^d)``, ``r' = r mod 2^d``, ``o' = (o + h) mod 2^d = (u + r') mod
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
is one DCF of depth ``d`` with threshold ``r'`` and payload ``(1, r)``: the
parties get shares of ``1{p < r'}`` and of ``r 1{p < r'}`` at any public
``p``; the public indicator ``1{o' < beta_j}`` multiplies shares of ``(1, r)``
that each party already has (``(1, r_0)`` and ``(0, r_1)`` from its mask
share). So both ``e_j = 1{x < b_j}`` and ``r e_j`` are shared.

Output. ``g(x) = S_k x + C_k - sum_j e_j (dS_j x + dC_j)`` with ``dS_j = S_j -
S_(j-1)``, ``dC_j = C_j - C_(j-1)``: the active piece's coefficients as
coefficient differences at the breakpoints. With ``x = o - r (mod 2^64)``,
``e_j (dS_j x + dC_j) = dS_j (o e_j - r e_j) + dC_j e_j``: linear in the
shares, with public ``o``, ``dS_j``, ``dC_j`` -- i.e. the coefficients
re-expressed as a polynomial in ``o`` shifted by ``r``. One opening, no further
round. The result is exact in the ring: it equals ``S_i X + C_i`` for the ring
input ``X`` in piece ``i``, and never wraps while ``|S_i X + C_i| < 2^63``,
which holds for the tables here (activations.py: each outer piece is
``x``, a constant of size at most 1, or has ``|slope| <= 0.985`` and
``|intercept| <= 2`` (exp's last, the reciprocal's first), so ``|g| < 2^31``
real on the whole range, below ``2^63`` at scale ``2^32``; the inner pieces
have ``|x| <= 64``).
If the input is only right mod ``2^L`` (a gate output between layers,
gates.py) so is the output, and that is all its readers use.

Error. The spline's own approximation error (activations.py, per function)
plus the coefficients' rounding: ``|S_i 2^-f - s_i| <= 2^-(f+1)`` times
``|x|`` (0 where the table's slopes are multiples of ``2^-f``: the outer
pieces' 0 and 1, and every slope of exp and reciprocal; ``<= 5 * 2^-17`` on
GELU's, tanh's and sigmoid's inner pieces) and ``2^-(2f+1)`` for the
intercept; tests/unit/test_fast_spline.py checks the rounded table itself; then the
truncation after it, stochastic rounding ``< 2^-f``. Comparisons are exact (no
carry: they run on the input's full ``d`` bits), so a point exactly at a
breakpoint gets the right piece.

Key size per element and party: 8 (mask) + a DCF of depth ``d`` with two
64-bit lanes, ``16 + d * (17 + 16) + 16`` bytes (dcf.py), whatever the number
of breakpoints (the dealer's key depends only on ``r`` and the range, not on
the function); plus the DCF's per-key-set nonce. At ``f = 16``: 997 bytes for
GELU, tanh, sigmoid and exp (``R = 12``, ``d = 29``), 931 for rsqrt (``d =
27``), 865 for the row reciprocal (``d = 25``), 832 for the reciprocal (``d
= 24``); 1,624 at the ReLU gates' ``d = 48``. Evaluation: ``k + 1`` DCF
evaluations of depth ``d`` per element (for few elements in one call over
copies of the key, :func:`_evaluate`).

Security (per party): the opened ``o`` is uniform (``r`` fresh and uniform
over ``Z_2^64``, whatever the depth: only the DCF's threshold is ``r mod
2^d``); the DCF key reveals nothing about its threshold ``r'`` or its payload
``(1, r)`` (DCF security, dcf.py), and evaluating it at several public points
is something any key holder can do; the mask share is uniform. Nothing else
is received, so a party's view is independent of ``x``, in the range or not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import ClassVar

import numpy as np

from ppml.servers.mpc.fast import dcf
from ppml.servers.mpc.fast.gates import Exchange, GateKey, GateParams, split
from ppml.servers.mpc.fast.prg import FixedKeyPRG, KeyedPRG, Ring

LANES = (64, 64)  # payload (1, r): the comparison bit and r times it, both in Z_2^64


@dataclass(frozen=True)
class FixedSpline:
    """A spline in the ring: breakpoints at ``2^f``, slopes at ``2^f``, intercepts at ``2^(2f)``."""

    breakpoints: tuple[int, ...]
    slopes: tuple[int, ...]
    intercepts: tuple[int, ...]


@dataclass(frozen=True)
class Spline:
    """A public piecewise-linear function: ``pieces[i]`` = (slope, intercept) on ``[b_i, b_(i+1))``.

    ``bound``: the documented absolute error against the function it approximates
    on ``domain`` (closed interval; approximation and fixed-point rounding,
    before the truncation that follows). Outside ``domain`` the outer pieces
    extend linearly and nothing is promised. ``range_bits`` R: the gate's
    inputs must satisfy ``|x| < 2^R`` (module doc, Range); breakpoints and
    the domain's finite ends lie inside it.
    """

    name: str
    breakpoints: tuple[float, ...]
    pieces: tuple[tuple[float, float], ...]
    bound: float
    domain: tuple[float, float] = (-math.inf, math.inf)
    range_bits: int = 31

    def __post_init__(self) -> None:
        b = self.breakpoints
        if len(self.pieces) != len(b) + 1 or any(x >= y for x, y in pairwise(b)):
            raise ValueError("a spline needs increasing breakpoints and one more piece")
        edge = 2.0**self.range_bits
        ends = [e for e in self.domain if math.isfinite(e)]
        if not 0 <= self.range_bits <= 62 or any(not -edge <= x < edge for x in (*b, *ends)):
            raise ValueError(f"{self.name}: breakpoints or domain outside its range")

    def depth(self, p: GateParams) -> int:
        """The gate's ``n`` under ``p``: the table's range at ``2^f``, or ``p``'s if narrower."""
        return min(p.depth, self.range_bits + p.frac_bits)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The spline in float64 (a reference; the gate computes :meth:`fixed`)."""
        i = np.searchsorted(np.asarray(self.breakpoints), x, side="right")
        slope, intercept = (np.asarray(c)[i] for c in zip(*self.pieces, strict=True))
        return slope * x + intercept

    def fixed(self, frac_bits: int) -> FixedSpline:
        """The ring coefficients at ``frac_bits`` fractional bits (rounded to nearest)."""
        one = 1 << frac_bits
        return FixedSpline(
            tuple(round(b * one) for b in self.breakpoints),
            tuple(round(s * one) for s, _ in self.pieces),
            tuple(round(c * one * one) for _, c in self.pieces),
        )


def deal(
    n: int, r: Ring, rng: KeyedPRG, prg: FixedKeyPRG | None, kind: str
) -> tuple[GateKey, GateKey]:
    """Keys for masks ``r`` (n,): a DCF ``p -> (1, r) 1{p < r mod 2^d}`` of depth ``d = n + 1``."""
    depth = n + 1
    low = r.view(np.uint64) & np.uint64((1 << depth) - 1)
    beta = np.stack([np.ones_like(r), r])
    k0, k1 = dcf.gen(low, beta, depth, rng, prg, LANES)
    r0, r1 = split(r, rng)
    empty = np.zeros((r.size, 0), dtype=np.int64)
    return GateKey(kind, r0, empty, k0), GateKey(kind, r1, empty.copy(), k1)


class SplineGate:
    """The gate of one public spline (module doc): one opening, no further round."""

    width: ClassVar[int] = 2
    rounds: ClassVar[int] = 0

    def __init__(self, spline: Spline) -> None:
        self.spline = spline
        self.kind = spline.name

    def gen(
        self,
        p: GateParams,
        n: int,
        rng: KeyedPRG,
        prg: FixedKeyPRG | None = None,
        out_bits: int = 64,
    ) -> tuple[GateKey, GateKey]:
        """Dealer: keys for ``n`` gates, fresh uniform masks (full lanes whatever ``out_bits``)."""
        return deal(self.spline.depth(p), rng.ring(n), rng, prg, self.kind)

    def eval(
        self,
        p: GateParams,
        key: GateKey,
        opened: Ring,
        prg: FixedKeyPRG | None = None,
        exchange: Exchange | None = None,
    ) -> Ring:
        """Party: shares (n,) of ``S_i x + C_i`` at ``2^(2f)`` from the opened ``o = x + r``."""
        if key.kind != self.kind:
            raise ValueError(f"a {key.kind} key for the {self.kind} gate")
        fx, depth = self.spline.fixed(p.frac_bits), self.spline.depth(p)
        h = 1 << depth
        if any(not -h <= b < h for b in fx.breakpoints):
            raise ValueError(f"{self.kind}: breakpoints outside the gate's range 2^{depth}")
        if key.dcf.depth != depth + 1:
            raise ValueError(f"a {self.kind} key of depth {key.dcf.depth}, not {depth + 1}")
        low = np.uint64((1 << (depth + 1)) - 1)
        o = np.ascontiguousarray(opened, dtype=np.int64).reshape(-1)
        top = (o.view(np.uint64) + np.uint64(h)) & low  # o' = (o + h) mod 2^d
        first = key.dcf.party == 0
        mine = np.stack([np.full_like(o, 1 if first else 0), key.mask])  # shares of (1, r)
        betas = [np.uint64(b + h) for b in fx.breakpoints]
        points = np.stack([top, *((top - beta) & low for beta in betas)])
        with np.errstate(over="ignore"):
            at = _evaluate(key.dcf, points, prg)
            wrap = at[0]  # shares of (1, r) 1{o' < r'}
            out = (fx.slopes[-1] * o + fx.intercepts[-1]) * int(first) - fx.slopes[-1] * key.mask
            for j, beta in enumerate(betas):
                below = at[j + 1] - wrap
                below += mine * (top < beta).astype(np.int64)  # shares of (1, r) 1{x < b_j}
                d_s = fx.slopes[j + 1] - fx.slopes[j]
                d_c = fx.intercepts[j + 1] - fx.intercepts[j]
                out -= np.int64(d_s) * (o * below[0] - below[1]) + np.int64(d_c) * below[0]
        return out


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
