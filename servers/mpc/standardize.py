"""Secret per-feature standardisation: mean, variance and ``1 / sqrt`` on shares.

The plaintext definition is :mod:`ppml.training.standardize`; this module
computes the same ``(scale, shift)`` in MPC over every training row, for
raw features whose variances range from 0.01 to ~1e11.

Why the care: fixed point keeps 16 fractional bits in a 64-bit ring, and
every product is truncated (divided by 2^16) on the shares. That truncation
is wrong, by about 2^48, with probability ``|product| / 2^64`` (2 parties
divide their shares locally; 3 parties ignore the same rare carry, see
CrypTen's ``wraps``). A product is ``a * b * 2^32`` before truncation, so
squaring a centred value ``c`` fails with probability about ``c^2 / 2^32``:
1 in 400 at ``c = 3000``, which a breast-cancer "area" column reaches on
hundreds of rows. One failure ruins its feature's variance, and the model.

So :func:`mean_square` squares ``c / 2^k`` instead, with ``k`` chosen per
element by a secret comparison (``|c|`` up to 2^6, up to 2^12, above), so
that every square it keeps is at most ~2^12 before the ``4^k`` rescaling,
which is exact (a public integer). Squares of the other ranges may be
garbage; each is multiplied by a selection bit of 0, which CrypTen keeps at
scale 1 (no truncation), so they vanish exactly. Each range is averaged
in its own scale before rescaling, so no division sees a large value either;
the price is precision when very few rows of a very long column fall in an
upper range (the rounding, ``4^k / 2^(16 + extra)``, is then a visible part
of their small contribution). Nothing about the data is opened.
"""

from __future__ import annotations

import math
from typing import Any

from ppml.servers.mpc.crypten_compat import crypten
from ppml.training.standardize import VARIANCE_FLOOR

SQUARE_SHIFTS = (0, 6, 12)  # c is squared as c / 2^k, k by |c|: ..2^6, ..2^12, above
_SAFE_NUMERATOR_BITS = 44  # a division's numerator stays under 2^44: wrong with p < 2^-20
_KEPT_SQUARE_BITS = 12  # a kept square (c / 2^k)^2 is at most 2^12 below the top range

_LARGE_VARIANCE = 64.0  # above this, inv_sqrt runs on var / 1024 (its accurate range)
_WIDE_SHIFTS = (10, 20, 30)


def mean_square(c: Any) -> Any:
    """Per-column mean of ``c ** 2`` over the rows of a secret 2-d ``c``."""
    rows = c.size(0)
    limits = [2.0**k for k in SQUARE_SHIFTS[1:]]
    # |c| > t  <=>  t - c < 0  or  t + c < 0 (disjoint for t > 0): one comparison for all
    below = crypten.stack([t - c for t in limits] + [c + t for t in limits]).lt(0)
    over = [below[i] + below[i + len(limits)] for i in range(len(limits))]
    select = [1 - over[0], *(over[i] - over[i + 1] for i in range(len(over) - 1)), over[-1]]
    scaled = crypten.stack([c.div(2**k) if k else c for k in SQUARE_SHIFTS])
    kept = (crypten.stack(select) * scaled.square()).sum(1)  # [ranges, columns]
    # A range's mean gets as many extra fractional bits as keep its numerator small; the
    # rescaling by 4^k / 2^extra magnifies a division's rounding, which 3 parties make even
    # on 0, so ranges no row of a column falls into are dropped by a (scale-1) bit.
    spare = _SAFE_NUMERATOR_BITS - 16 - _KEPT_SQUARE_BITS - math.ceil(math.log2(max(rows, 2)))
    used = kept[1:].gt(0.5)  # a kept square of the upper ranges is >= 1
    total = kept[0].div(rows)
    for i, k in enumerate(SQUARE_SHIFTS[1:], start=1):
        extra = min(2 * k, max(spare, 0))
        mean_k = kept[i].mul(2**extra).div(rows).mul(2 ** (2 * k - extra))
        total = total + used[i - 1] * mean_k
    return total


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
