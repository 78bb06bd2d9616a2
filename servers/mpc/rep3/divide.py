"""Division by a public integer that cannot wrap, and opening a sum: party 2 masks (2 rounds).

:mod:`~ppml.servers.mpc.rep3.trunc` divides by ``2^m`` only; a federation's
average divides by the round's opened total weight ``d``, any integer. The
protocol is the dealer-assisted truncation of the CrypTen path
(``servers/mpc/core/truncation.py``) with party 2 in the dealer's role, which
the replicated sharing allows (it must not learn ``x``, and it does not):

* ``r = r_0 + r_1`` uniform in ``Z_2^64``, ``r_0`` from the 0-2 pair stream and
  ``r_1`` from the 1-2 pair stream: party 2 knows ``r``, parties 0 and 1 one
  half each;
* party 2 computes ``q = floor(r / d)`` and ``m = msb(r)`` (``r`` unsigned);
  party 0's shares come from the 0-2 stream, party 1's are sent by party 2
  (round 1, masked by 0-2 stream values party 1 lacks), together with party
  2's part of ``x`` masked by its zero share;
* round 2: parties 0 and 1 swap ``x``'s halves masked by ``r``'s halves and
  both learn ``z = x + 2^62 + r`` (uniform: each lacks one half of ``r``);
  party 2 sees nothing;
* with ``x' = x + 2^62`` in ``[0, 2^63)``: ``x' = z - r + 2^64 w`` with
  ``w = m (1 - msb(z))``, linear in the shares of ``m`` since ``msb(z)`` is
  public, and each party outputs its share of
  ``floor(z / d) - q + w floor(2^64 / d) - floor(2^62 / d)``.

The result is within two units of ``x / d`` (``floor(x / d)`` off by -1 to
+2: the borrow between the low parts of ``z``, ``r`` and ``2^64`` modulo
``d``, and the offset's rounding), for every ``|x| < 2^62``: no
probabilistic wrap; exact for ``d = 1``. Shares come
back additive (party 2's are 0 before the caller re-randomises them).
"""

from __future__ import annotations

import numpy as np

from ppml.servers.mpc.fast.prg import Ring
from ppml.servers.mpc.rep3.keys import Correlated, next_of, prev_of
from ppml.servers.mpc.rep3.rounds import Expect, Round, Steps

ROUNDS = 2
OFFSET = 1 << 62  # x + OFFSET lies in [0, 2^63) for |x| < 2^62
MAX_DIVISOR = 1 << 62
_RING = 1 << 64
_TOP = np.uint64(63)


def _signed(value: int) -> np.int64:
    value %= _RING
    return np.int64(value - _RING if value >= 1 << 63 else value)


def by_public(corr: Correlated, z: Ring, d: int) -> Steps[Ring]:
    """Additive shares of ``x / d`` (within two units) from 3-out-of-3 additive ``z``; 2 rounds.

    ``d`` is public, the same on every party, in ``[1, 2^62]``. Every party
    takes two rounds (party 2 sends in the first, parties 0 and 1 swap in
    the second), also for ``d = 1``, so that gathered protocols stay aligned.
    """
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_DIVISOR:
        raise ValueError("a public divisor must be an int in [1, 2^62]")
    rank, shape, ring = corr.rank, z.shape, np.dtype(np.int64)
    piece: Ring = np.asarray(z, dtype=np.int64) + corr.zero(shape)
    if rank == 2:
        r = corr.common(0, shape) + corr.common(1, shape)
        q0, m0 = corr.common(0, shape), corr.common(0, shape)
        ru = r.view(np.uint64)
        q = (ru // np.uint64(d)).view(np.int64)  # below 2^63 for d >= 2; d = 1: the same bits
        m = (ru >> _TOP).astype(np.int64)
        yield Round(send={1: [q - q0, m - m0, piece]})
        yield Round()
        return np.zeros(shape, dtype=np.int64)
    if rank == 0:
        r_half = corr.common(2, shape)  # the 0-2 stream, in party 2's order
        q, m = corr.common(2, shape), corr.common(2, shape)
        mine = piece + r_half + np.int64(OFFSET)
        yield Round()  # party 2 -> party 1
        got = yield Round(send={1: [mine]}, expect={1: [Expect(shape, ring)]})
        c = mine + got[1][0]
    else:
        r_half = corr.common(2, shape)
        got = yield Round(expect={2: [Expect(shape, ring)] * 3})
        q, m, from_2 = got[2]
        mine = piece + r_half + from_2
        got = yield Round(send={0: [mine]}, expect={0: [Expect(shape, ring)]})
        c = got[0][0] + mine
    cu = c.view(np.uint64)
    z_top = (cu >> _TOP).astype(bool)
    w = np.where(z_top, np.int64(0), m)  # shares of m (1 - msb(z))
    out: Ring = w * _signed(_RING // d) - q
    if rank == 0:
        out = out + (cu // np.uint64(d)).view(np.int64) - np.int64(OFFSET // d)
    return out


def open_sum(corr: Correlated, z: Ring) -> Steps[Ring]:
    """Open ``x`` from 3-out-of-3 additive shares to all three parties: one round.

    Each party sends its share plus a fresh zero share to both others, so
    what it sends is uniform given ``x``: nothing but ``x`` is learnt (not,
    for a sum of participants' shares, any one server's part of it).
    """
    mine: Ring = np.asarray(z, dtype=np.int64) + corr.zero(z.shape)
    spec = Expect.like(mine)
    rank = corr.rank
    got = yield Round(
        send={prev_of(rank): [mine], next_of(rank): [mine]},
        expect={prev_of(rank): [spec], next_of(rank): [spec]},
    )
    out: Ring = mine + got[prev_of(rank)][0] + got[next_of(rank)][0]
    return out
