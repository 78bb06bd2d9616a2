"""Softmax on replicated shares: row maximum, exp, reciprocal, and log for the loss.

All values are fixed point with 16 fractional bits (``FRAC_BITS``) unless
stated; every product is truncated with :mod:`.trunc` (off by at most one
unit of the target scale, never wrapping). Each approximation, its range and
its error:

* :func:`maximum` -- the row maximum over the last axis, exact: a tournament
  of ``ceil(log2 k)`` levels, each a sign circuit on the differences and a
  select (8 + 2 rounds per level; 40 rounds for 10 classes).
* :func:`exp_neg` -- ``exp(x)`` for ``x`` in ``[-2^n, 0]`` as
  ``(1 + x / 2^n)^(2^n)``: ``n`` squarings (default ``n = 8``), 3 rounds each.
  ``1 + x/2^n`` is formed locally at scale ``2^28`` (exact: ``x``'s shares
  times ``2^(12-n)``) and the squarings stay at scale ``2^28`` (values in
  ``[0, 1]``, products below ``2^56``) until the last one, which truncates to
  ``2^16``. Error: ``0 <= e^x - (1 + x/N)^N <= x^2 e^x / N <= 4 e^-2 / N``
  (the maximum is at ``x = -2``; ``N = 2^n``), i.e. at most ``2.12e-3`` for
  ``n = 8``, plus at most ``2^-16 + 2^(n+1-28)`` (``1.9e-5``) from the
  truncations. Out of range: for ``x < -2^n`` the base is negative and the
  result is wrong (not clamped); after :func:`maximum` subtraction that needs
  a spread of logits above 256. Positive ``x`` up to 4 still fit the ring.
* :func:`reciprocal` -- ``1/s`` for ``s`` in a public ``[lo, hi]`` with
  ``lo > 0``: the linear start ``y_0 = p - q s`` that equalises the relative
  error ``1 - s y_0`` at both ends and the middle (``q = 8 / (4 lo hi +
  (lo + hi)^2)``, ``p = q (lo + hi)``, ``|1 - s y_0| <= e_0 = (hi - lo)^2 /
  ((lo + hi)^2 + 4 lo hi)``), then ``k`` Newton steps ``y <- y (2 - s y)``
  (default 4), each squaring the relative error; a step's two truncations
  add at most ``max(1, 1/lo) 2^-16``, and Newton's map damps earlier
  rounding quadratically. Error: ``|y - 1/s| <= e_0^(2^k) / lo + 3 * 2^-16 /
  min(lo, 1)``; for ``[1, 10]``: ``e_0 = 0.503``, bound ``6.3e-5``. Rounds:
  3 for the start, 6 per step (27).
* :func:`softmax` -- over the last axis: subtract the row maximum, exp, sum,
  reciprocal on ``[1, k]`` (the maximum's exp is 1, so the sum is in
  ``[1, k]`` up to rounding), multiply. Error per probability at most
  ``(k - 1) eps_exp + eps_rec + 2^-16`` (``0.019`` for 10 classes; in
  practice at most about ``3e-3``, the exp's underestimate near ``x = -2``).
  Rounds for 10 classes: 44 + 24 + 27 + 3 = 98.

* :func:`log` -- ``ln s`` for ``s`` in a public ``[lo, hi]`` within
  ``[1, e^4]`` (for the loss, on the softmax's sum, ``[1, k]``): the line
  closest to ``ln`` on the range (error ``e_0``, 0.31 for ``[1, 10]``), then
  ``k`` Newton steps for ``e^y = s``, ``y <- y - 1 + s e^-y`` (default 3; the
  exp as above, on ``-y`` in ``[-4, 0]``), each taking the error ``e`` to at
  most ``e^|e| e^2 / 2`` plus the exp's error times ``s``: about
  ``(ln s)^2 / 2^n`` near the root. Bound (:func:`log_error`): ``0.023`` on
  ``[1, 10]`` (measured about ``0.011``); good enough for a reported loss.
  Rounds: 3 + 27 per step (84).

Every message is a reshared product, a truncation's masked opening or a
select's masked input (see the modules they come from); nothing is opened.
"""

from __future__ import annotations

import math

import numpy as np

from ppml.servers.mpc.rep3 import trunc
from ppml.servers.mpc.rep3.compare import negative
from ppml.servers.mpc.rep3.keys import Correlated
from ppml.servers.mpc.rep3.rounds import Steps
from ppml.servers.mpc.rep3.rss import Shared, add_public, mul_local, reshare, xor_public
from ppml.servers.mpc.rep3.select import select

FRAC_BITS = 16
EXP_SQUARINGS = 8
RECIPROCAL_STEPS = 4
LOG_STEPS = 3
_INNER = 28  # scale of exp's intermediate squares (values in [0, 1])


def truncate(corr: Correlated, x: Shared, m: int = FRAC_BITS) -> Steps[Shared]:
    """Replicated ``x / 2^m`` (off by at most one unit) for replicated ``x``: 3 rounds."""
    y = yield from trunc.from_shared(corr, x, m)
    return (yield from reshare(corr, y))


def mul_trunc(corr: Correlated, x: Shared, y: Shared, m: int = FRAC_BITS) -> Steps[Shared]:
    """Replicated ``x * y / 2^m`` (shapes broadcast): 3 rounds."""
    z = yield from trunc.from_additive(corr, mul_local(x, y), m)
    return (yield from reshare(corr, z))


def public_factor(corr: Correlated, x: Shared, c: float, m: int = FRAC_BITS) -> Steps[Shared]:
    """``c * x`` for a public real ``c`` (encoded with ``m`` fractional bits): 3 rounds."""
    return (yield from truncate(corr, x.scale(round(c * (1 << m))), m))


def maximum(corr: Correlated, x: Shared) -> Steps[Shared]:
    """Exact maximum over the last axis, kept as a length-1 axis; 10 rounds per halving."""
    rank = corr.rank
    while x.shape[-1] > 1:
        k = x.shape[-1]
        evens, odds = slice(0, k - k % 2, 2), slice(1, k - k % 2, 2)
        a, b = _cols(x, evens), _cols(x, odds)
        d = a - b
        below = yield from negative(corr, d)
        larger = yield from select(corr, xor_public(rank, below, 1), d)  # a - b where a >= b
        top = b + larger
        if k % 2:  # the odd one out goes up a level unopposed
            rest = _cols(x, slice(k - 1, k))
            top = Shared(
                np.concatenate([top.a, rest.a], axis=-1), np.concatenate([top.b, rest.b], axis=-1)
            )
        x = top
    return x


def _cols(x: Shared, cols: slice) -> Shared:
    return Shared(x.a[..., cols], x.b[..., cols])


def exp_neg(corr: Correlated, x: Shared, squarings: int = EXP_SQUARINGS) -> Steps[Shared]:
    """``exp(x)`` for ``x`` in ``[-2^squarings, 0]`` (16 fractional bits): 3 rounds per squaring."""
    if not 1 <= squarings <= _INNER - FRAC_BITS:
        raise ValueError(f"squarings must be in 1..{_INNER - FRAC_BITS}")
    base = add_public(corr.rank, x.scale(1 << (_INNER - FRAC_BITS - squarings)), 1 << _INNER)
    for i in range(squarings):
        shift = _INNER if i < squarings - 1 else 2 * _INNER - FRAC_BITS
        base = yield from mul_trunc(corr, base, base, shift)
    return base


def reciprocal_start(lo: float, hi: float) -> tuple[float, float, float]:
    """``(p, q, e_0)``: the start ``p - q s`` and its worst relative error on ``[lo, hi]``."""
    if not 0 < lo < hi:
        raise ValueError("need 0 < lo < hi")
    q = 8 / (4 * lo * hi + (lo + hi) ** 2)
    return q * (lo + hi), q, (hi - lo) ** 2 / ((lo + hi) ** 2 + 4 * lo * hi)


def reciprocal_error(lo: float, hi: float, steps: int = RECIPROCAL_STEPS) -> float:
    """The documented bound on ``|reciprocal(s) - 1/s|`` for ``s`` in ``[lo, hi]``."""
    e0 = reciprocal_start(lo, hi)[2]
    return e0 ** (2**steps) / lo + 3 * 2.0**-FRAC_BITS / min(lo, 1.0)


def reciprocal(
    corr: Correlated, s: Shared, lo: float, hi: float, steps: int = RECIPROCAL_STEPS
) -> Steps[Shared]:
    """``1/s`` for ``s`` in the public ``[lo, hi]``: linear start, ``steps`` Newton steps."""
    p, q, _ = reciprocal_start(lo, hi)
    one = 1 << FRAC_BITS
    qs = yield from public_factor(corr, s, q)
    y = add_public(corr.rank, -qs, round(p * one))
    for _ in range(steps):
        sy = yield from mul_trunc(corr, s, y)
        y = yield from mul_trunc(corr, y, add_public(corr.rank, -sy, 2 * one))
    return y


def softmax(corr: Correlated, z: Shared, squarings: int = EXP_SQUARINGS) -> Steps[Shared]:
    """Softmax over the last axis of replicated logits (16 fractional bits)."""
    p, _, _ = yield from softmax_parts(corr, z, squarings)
    return p


def softmax_parts(
    corr: Correlated, z: Shared, squarings: int = EXP_SQUARINGS
) -> Steps[tuple[Shared, Shared, Shared]]:
    """Softmax, the row maximum ``m`` and ``s = sum_j exp(z_j - m)`` (both (..., 1))."""
    k = z.shape[-1]
    top = yield from maximum(corr, z)
    e = yield from exp_neg(corr, z - top, squarings)
    total = e.map(lambda v: v.sum(axis=-1, keepdims=True))
    inv = yield from reciprocal(corr, total, 1.0, float(max(k, 2)))
    p = yield from mul_trunc(corr, e, inv)
    return p, top, total


def log_start(lo: float, hi: float) -> tuple[float, float, float]:
    """``(a, b, e_0)``: the line ``a + b s`` closest to ``ln s`` on ``[lo, hi]``, its error."""
    if not 0 < lo < hi:
        raise ValueError("need 0 < lo < hi")
    b = (math.log(hi) - math.log(lo)) / (hi - lo)
    touch = 1 / b  # where ln's slope is the chord's: the widest gap
    gap = math.log(touch) - (math.log(lo) + b * (touch - lo))
    return math.log(lo) - b * lo + gap / 2, b, gap / 2


def log_error(
    lo: float, hi: float, steps: int = LOG_STEPS, squarings: int = EXP_SQUARINGS
) -> float:
    """The documented bound on ``|log(s) - ln s|`` for ``s`` in ``[lo, hi]``."""
    e = log_start(lo, hi)[2]
    fixed = hi * (2.0**-FRAC_BITS + 2.0 ** (squarings + 1 - _INNER)) + 2.0**-FRAC_BITS
    for _ in range(steps):
        exp_err = math.exp(e) * (math.log(hi) + e) ** 2 / 2**squarings + fixed
        e = math.exp(e) * e * e / 2 + exp_err
    return e


def log(
    corr: Correlated,
    s: Shared,
    lo: float,
    hi: float,
    steps: int = LOG_STEPS,
    squarings: int = EXP_SQUARINGS,
) -> Steps[Shared]:
    """``ln s`` for ``s`` in the public ``[lo, hi]`` (``lo >= 1``): 3 + 27 rounds per step."""
    if lo < 1 or math.log(hi) > 4:
        raise ValueError("log takes a range within [1, e^4]")
    a, b, _ = log_start(lo, hi)
    bs = yield from public_factor(corr, s, b)
    y = add_public(corr.rank, bs, round(a * (1 << FRAC_BITS)))
    for _ in range(steps):  # Newton for e^y = s: y <- y - 1 + s e^-y
        e = yield from exp_neg(corr, -y, squarings)
        se = yield from mul_trunc(corr, s, e)
        y = add_public(corr.rank, y + se, -(1 << FRAC_BITS))
    return y


def softmax_error(classes: int, squarings: int = EXP_SQUARINGS) -> float:
    """The documented bound on each probability's error (see the module docstring)."""
    eps_exp = 4 * math.exp(-2) / 2**squarings + 2.0**-FRAC_BITS + 2.0 ** (squarings + 1 - _INNER)
    k = max(classes, 2)
    return (k - 1) * eps_exp + reciprocal_error(1.0, float(k)) + 2.0**-FRAC_BITS
