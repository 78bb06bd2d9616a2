"""How the spline tables of activations.py were made: greedy minimax pieces on a dyadic grid.

Offline only (the tables are literals, so both parties and the dealer agree
on them bit for bit whatever their floating point); tests/unit/test_fast_spline.py
refits some tables to show they come from here. See activations.py for the
procedure in words and the resulting bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Fn = Callable[[np.ndarray], np.ndarray]
STEP = 1 / 64  # breakpoint grid: exact in fixed point at 16 fractional bits
TAIL = 40.0  # how far past an edge the asymptote is checked (on 200,001 points)


def line(
    fn: Fn, a: float, b: float, quantum: float | None, relative: bool = False, bracket: float = 3.0
) -> tuple[float, float, float]:
    """The minimax line of ``fn`` on ``[a, b]`` (800 points), rounded: slope, intercept, error.

    ``quantum``: round the slope to a multiple of it and the intercept to 7
    decimals; ``None``: both to 6 decimals. The error is measured after rounding;
    ``relative``: divided by the smallest ``|fn|`` on the interval (the line is
    still the absolute minimax one, so the relative error is over-, not under-stated);
    ``bracket``: the slope is searched in ``[-bracket, bracket]``.
    """
    x = np.linspace(a, b, 800)
    y = fn(x)

    def spread(s: float) -> float:
        d = y - s * x
        return float(d.max() - d.min())

    lo, hi = -bracket, bracket
    for _ in range(100):  # the spread is convex in the slope: ternary search
        m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        lo, hi = (lo, m2) if spread(m1) < spread(m2) else (m1, hi)
    s = (lo + hi) / 2
    s = round(s / quantum) * quantum if quantum else round(s, 6)
    d = y - s * x
    c = round(float(d.max() + d.min()) / 2, 7 if quantum else 6)
    err = float(np.abs(d - c).max())
    return s, c, err / float(np.abs(y).min()) if relative else err


def parabola(fn: Fn, a: float, b: float) -> tuple[tuple[float, float, float], float]:
    """The minimax parabola of ``fn`` on ``[a, b]`` (2,000 points), rounded: coefficients, error.

    A linear programme (minimise ``t`` with ``|q x^2 + s x + c - fn(x)| <= t`` on
    the points); then ``q`` is rounded to a multiple of ``2^-16`` (exact at
    ``f = 16``), the line ``(s, c)`` refitted for it the same way and rounded
    to 10 decimals; the error is measured after rounding.
    """
    x = np.linspace(a, b, 2000)
    q = round(_minimax(x, fn(x), [x * x, x, np.ones_like(x)])[0] * 2.0**16) / 2.0**16
    s, c = (round(v, 10) for v in _minimax(x, fn(x) - q * x * x, [x, np.ones_like(x)]))
    return (q, s, c), float(np.abs(q * x * x + s * x + c - fn(x)).max())


def _minimax(x: np.ndarray, y: np.ndarray, columns: list[np.ndarray]) -> list[float]:
    """Coefficients of ``columns`` minimising the largest ``|sum_i p_i columns_i - y|``."""
    from scipy.optimize import linprog

    basis, ones = np.stack(columns, axis=1), np.ones((x.size, 1))
    k = basis.shape[1]
    res = linprog(
        np.r_[np.zeros(k), 1.0],
        A_ub=np.block([[basis, -ones], [-basis, -ones]]),
        b_ub=np.r_[y, -y],
        bounds=[(None, None)] * k + [(0, None)],
        method="highs",
    )
    if not res.success:
        raise ValueError(f"minimax fit failed: {res.message}")
    return [float(v) for v in res.x[:k]]


def edge(fn: Fn, asymptote: Fn, eps: float, sign: int) -> float:
    """The innermost grid point from which ``asymptote`` is within ``eps`` on the whole tail."""
    b = 0.0
    while True:
        x = sign * (b + np.linspace(0, TAIL, 200_001))
        if np.abs(fn(x) - asymptote(x)).max() <= eps:
            return sign * b
        b += STEP


def fit(
    fn: Fn,
    lo: float,
    hi: float,
    eps: float,
    quantum: float | None = None,
    relative: bool = False,
    step: float = STEP,
    bracket: float = 3.0,
    degree: int = 1,
) -> tuple[list[float], list[tuple[float, ...]]]:
    """Breakpoints strictly inside ``(lo, hi)`` and the pieces covering ``[lo, hi]``, greedily.

    ``relative``: ``eps`` bounds the error relative to ``|fn|`` (:func:`line`);
    ``step``: the breakpoint grid (a power of two at least ``2^-f`` keeps them exact);
    ``bracket``: the slopes' search range (:func:`line`); ``degree`` 2: the
    pieces are :func:`parabola` ones (absolute error; ``quantum``, ``relative``
    and ``bracket`` unused).
    """
    breaks: list[float] = []
    pieces: list[tuple[float, ...]] = []
    a = lo
    while a < hi:
        b, best = a + step, None
        while True:
            coefficients, err = _piece(fn, a, min(b, hi), quantum, relative, bracket, degree)
            if err > eps:
                break
            best = (min(b, hi), coefficients)
            if b >= hi:
                break
            b += step
        if best is None:
            raise ValueError(f"no piece from {a} within {eps}")
        a = best[0]
        breaks.append(a)
        pieces.append(best[1])
    return breaks[:-1], pieces


def _piece(
    fn: Fn,
    a: float,
    b: float,
    quantum: float | None,
    relative: bool,
    bracket: float,
    degree: int,
) -> tuple[tuple[float, ...], float]:
    if degree == 2:
        return parabola(fn, a, b)
    s, c, err = line(fn, a, b, quantum, relative, bracket)
    return (s, c), err


def table(
    fn: Fn,
    low: Fn | float,
    high: Fn | float,
    eps: float,
    quantum: float | None = None,
    degree: int = 1,
    inner: float | None = None,
) -> tuple[list[float], list[tuple[float, ...]]]:
    """A whole table: an asymptote (a function) or a domain edge (a number) on each side.

    An asymptote ``y = s x + c`` is a piece of its own from :func:`edge` outwards
    (a line at any ``degree``: ``(0, s, c)`` for 2), within ``eps``; the pieces
    between are fitted within ``inner`` (default ``eps``).
    """
    lo = edge(fn, low, eps, -1) if callable(low) else low
    hi = edge(fn, high, eps, 1) if callable(high) else high
    breaks, pieces = fit(fn, lo, hi, eps if inner is None else inner, quantum, degree=degree)
    if callable(low):
        breaks, pieces = [lo, *breaks], [_coefficients(low, degree), *pieces]
    if callable(high):
        breaks, pieces = [*breaks, hi], [*pieces, _coefficients(high, degree)]
    return breaks, pieces


def _coefficients(asymptote: Fn, degree: int = 1) -> tuple[float, ...]:
    c = float(asymptote(np.zeros(1))[0])
    return (0.0,) * (degree - 1) + (float(asymptote(np.ones(1))[0]) - c, c)


def gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / math.sqrt(2)))
