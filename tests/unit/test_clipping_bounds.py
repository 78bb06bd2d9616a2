"""The public bounds that make clipping wrap-safe (servers/mpc/core/clipping.py, dpsgd.py).

A failed two-party truncation moves a value by a multiple of 2^32 (2^48 ring
units); every checked sum must therefore stay below 2^30 so that such a
failure always leaves the accepted range ``[-1, S_MAX]``, and every accepted
squared norm must stay inside the staged inverse square root's domain.
"""

from __future__ import annotations

import math

import pytest

from ppml.servers.mpc.core.clipping import (
    _MAX_T,
    CLIP_MARGIN,
    NORM_LIMIT,
    SUM_BITS,
    coordinate_bound,
    squared_norm_limit,
)
from ppml.servers.mpc.training.dpsgd import DELTA_CAP, INPUT_CAP

FAILURE = 2.0**32  # what one failed truncation adds or takes away (real units)


@pytest.mark.parametrize("width", [1, 2, 3, 36, 1000, 2**14, 2**14 + 1, 101_770, 10**7])
def test_a_rows_sum_of_squares_stays_below_2_to_the_30(width: int) -> None:
    bound = coordinate_bound(width)
    assert math.log2(bound) == int(math.log2(bound)) and bound <= 2**8  # a power of two
    assert width * bound**2 <= 2.0**SUM_BITS
    assert bound == 2**8 or width * (2 * bound) ** 2 > 2.0**SUM_BITS  # the largest such


def test_a_failed_truncation_never_lands_in_the_accepted_range() -> None:
    largest_true = 2.0**SUM_BITS
    assert largest_true - FAILURE < -1  # a failure down: below -1
    assert -1 + FAILURE > NORM_LIMIT  # a failure up: above S_MAX
    # DP-SGD: the product of two checked sums, summed over layers, is below 2^30 too
    assert largest_true >= DELTA_CAP * (INPUT_CAP + 1)


@pytest.mark.parametrize("clip", [1e-3, 0.01, 0.18, 0.25, 1.0, 1.5, 40.0, 1e4])
def test_every_accepted_norm_is_inside_the_inverse_square_roots_domain(clip: float) -> None:
    limit = squared_norm_limit(clip)
    assert limit <= NORM_LIMIT
    assert limit / (clip * (1 - CLIP_MARGIN)) ** 2 <= _MAX_T * (1 + 1e-12)  # t below 2^35
