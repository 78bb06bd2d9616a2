"""Whether a replicated value lies outside public bounds, exact on the whole ring: 9 rounds.

``outside(x) = (x - low < 0) OR (high - x < 0)`` with both signs from the
exact sign circuit (:func:`~ppml.servers.mpc.rep3.compare.negative`, 8
rounds, both differences in one circuit) and the OR as ``a ^ b ^ (a & b)``
(one AND round). The answer is a binary sharing whose words hold the bit in
bit 0 and 0 elsewhere, ready for :func:`~ppml.servers.mpc.rep3.rss.open_all`.

Exact for every ring element ``x`` (read as int64) when
``0 <= low <= high <= 2^62``: ``x - low`` wraps only for ``x < low - 2^63``,
where ``high - x > 2^63`` wraps negative, so such an ``x`` is still outside;
``high - x`` wraps only for ``x <= high - 2^63``, where ``x - low`` is
negative without wrapping or wraps, the first case flagged directly, the
second covered above. No truncation, no range assumption on ``x``: a share
of random bytes is judged like any other value.
"""

from __future__ import annotations

import numpy as np

from ppml.servers.mpc.rep3.compare import negative
from ppml.servers.mpc.rep3.keys import Correlated
from ppml.servers.mpc.rep3.rounds import Steps
from ppml.servers.mpc.rep3.rss import Shared, add_public, and_bits

ROUNDS = 9
MAX_BOUND = 1 << 62


def outside(corr: Correlated, x: Shared, low: int, high: int) -> Steps[Shared]:
    """Binary sharing (bit 0) of ``x < low or x > high``, elementwise, for int64 ``x``."""
    if not 0 <= low <= high <= MAX_BOUND:
        raise ValueError("bounds must satisfy 0 <= low <= high <= 2^62")
    rank = corr.rank
    flat = x.map(lambda a: a.reshape(-1))
    above_low = add_public(rank, flat, -low)
    below_high = add_public(rank, -flat, high)
    n = flat.shape[0]
    both = Shared(
        np.concatenate([above_low.a, below_high.a]), np.concatenate([above_low.b, below_high.b])
    )
    signs = yield from negative(corr, both)
    small = Shared(signs.a[:n], signs.b[:n])
    large = Shared(signs.a[n:], signs.b[n:])
    both_set = yield from and_bits(corr, small, large)
    return (small ^ large ^ both_set).map(lambda a: a.reshape(x.shape))
