"""Secret per-feature standardisation: mean, variance and ``1 / sqrt`` on shares.

The plaintext definition is :mod:`ppml.training.standardize`; this module
computes the same ``(scale, shift)`` in MPC over every training row, for
raw features whose variances range from 0.01 to ~1e10.

Why the care: fixed point keeps 16 fractional bits in a 64-bit ring, and
every product is truncated (divided by 2^16) on the shares. That truncation
is wrong, by about 2^48, with probability ``|product| / 2^64`` (2 parties
divide their shares locally; 3 parties ignore the same rare carry, see
CrypTen's ``wraps``). A product is ``a * b * 2^32`` before truncation, so
squaring a centred value ``c`` fails with probability about ``c^2 / 2^32``:
1 in 400 at ``c = 3000``, which a breast-cancer "area" column reaches on
hundreds of rows. One failure ruins its feature's variance, and the model.
Summed over a column, the chance that some square fails is about
``rows * var / 2^32``.

So :func:`mean_square` computes each column's variance three times, from
squares of ``c``, ``c / 2^6`` and ``c / 2^12`` (each mean rescaled exactly by
the public integer ``4^k``), and keeps, per column, the finest scale whose
squares stay small for that column's variance: ``c`` up to a variance of
64, ``c / 2^6`` up to 2^18, ``c / 2^12`` above. The choice is a secret
comparison of the coarser estimates (which cannot fail where they decide),
and the selection multiplies by scale-1 bits (no truncation), so a failed
estimate that is not kept vanishes exactly. The kept one fails with
probability at most ``rows * 2^-26`` (``rows * 64 / 2^32``), ~1e-4 at 7,352
rows, and its precision is within ~1e-3 of the variance. The cost is three
squares of the data instead of one, and two comparisons per column.
Nothing about the data is opened.
"""

from __future__ import annotations

import math
from typing import Any

from ppml.servers.mpc.core.crypten_compat import crypten
from ppml.training.standardize import VARIANCE_FLOOR

SQUARE_SHIFTS = (0, 6, 12)  # each column's variance from squares of c / 2^k
SWITCH_ABOVE = (64.0, 2.0**18)  # a column uses k = 6 above the first, k = 12 above the second
_SAFE_NUMERATOR_BITS = 44  # a division's numerator stays under 2^44: wrong with p < 2^-20
_KEPT_MEAN_BITS = 9  # a kept mean of (c / 2^k)^2 is under 2^9 (2^6, or 1e10 / 2^24)

_LARGE_VARIANCE = 64.0  # above this, inv_sqrt runs on var / 1024 (its accurate range)
_WIDE_SHIFTS = (10, 20, 30)


def mean_square(c: Any) -> Any:
    """Per-column mean of ``c ** 2`` over the rows of a secret 2-d ``c``."""
    rows = c.size(0)
    # as many extra fractional bits for a mean as keep its division's numerator small
    spare = _SAFE_NUMERATOR_BITS - 16 - _KEPT_MEAN_BITS - math.ceil(math.log2(max(rows, 2)))
    estimates = []
    for k in SQUARE_SHIFTS:  # one at a time: three squares of the data at once is a lot
        scaled = c.div(2**k) if k else c
        extra = min(2 * k, max(spare, 0))
        total = scaled.square().sum(0)
        estimates.append(total.mul(2**extra).div(rows).mul(2 ** (2 * k - extra)))
    above = crypten.stack([estimates[i + 1] - bound for i, bound in enumerate(SWITCH_ABOVE)]).gt(0)
    result = estimates[0]
    for i in range(len(SWITCH_ABOVE)):  # a coarser scale, once the variance is large enough
        result = result + above[i] * (estimates[i + 1] - result)
    return result


def inv_sqrt_wide(v: Any) -> Any:
    """``1 / sqrt(v)`` for secret ``v`` in [0.01, ~1e11].

    CrypTen's Newton iteration is accurate only for inputs in about [0.1, 100],
    so each range (``v * 64`` below 1, ``v / 2^(10k)`` above 64) is solved
    separately and the right one selected by a secret comparison (nothing
    about ``v`` is revealed). Above ~1e8 the result itself, below 1e-4, has
    few significant bits in 16-bit fixed point; training and prediction use
    the same value, so the model stays consistent.
    """
    result = v.inv_sqrt()
    small = v.mul(64).inv_sqrt().mul(8)  # [0.01, 1): Newton's start is too far from 1/sqrt(v)
    use_small = v.lt(1)
    result = result + use_small * (small - result)
    for shift in _WIDE_SHIFTS:
        scaled = v.div(2**shift).inv_sqrt().div(2 ** (shift // 2))
        use = v.gt(_LARGE_VARIANCE * 2 ** (shift - 10))
        result = result + use * (scaled - result)
    return result


def standardize(x: Any) -> tuple[Any, Any]:
    """Secret per-feature ``(scale, shift)`` so that ``x * scale + shift`` has mean 0, std 1."""
    rows = x.size(0)
    mean = x.sum(0).div(rows)
    variance = mean_square(x - mean) + VARIANCE_FLOOR
    scale = inv_sqrt_wide(variance)
    return scale, -(mean * scale)
