"""Truncation by ``2^m`` that cannot wrap: party 2 masks, parties 0 and 1 open (2 rounds).

After a product the scale is ``2^(2m)``; dividing by ``2^m`` brings it back.
Opening ``x + r`` and shifting is only correct if the sum does not wrap the
ring, so the mask's top bit is handled separately (as in Dalskov, Escudero
and Keller's truncation for Z_2^k): with ``x' = x + 2^62`` in ``[0, 2^63)``,
``r`` uniform, ``c = x' + r``::

    floor(x' / 2^m) = floor(c_low / 2^m) - floor(r_low / 2^m) + 2^(63-m) w  (+ 0 or 1)
    w = c_63 XOR r_63

where ``_low`` is the value mod ``2^63``. ``w`` is linear in shares of the bit
``r_63`` given public ``c_63``. The result is ``floor(x / 2^m)`` or one more
(never further off) for every ``|x| < 2^62``, i.e. every value below ``2^30``
at scale ``2^32``: no probabilistic wrap, whatever the inputs.

Who knows what (party 2 plays the masking role; nothing here needs a dealer):

* ``r = r_0 + r_1`` with ``r_0`` from the 0-2 pair stream and ``r_1`` from
  the 1-2 pair stream (:meth:`~ppml.servers.mpc.rep3.keys.Correlated.common`):
  party 2 knows ``r``, parties 0 and 1 one half each;
* shares of ``r_low >> m`` and ``r_63``: party 0's from the 0-2 stream, party
  1's sent by party 2 (round 1, independent of the data, uniform to party 1
  since it lacks the 0-2 stream);
* round 2: party 0 sends ``c_0 = u_0 + r_0 + 2^62`` to party 1 and party 1
  sends ``c_1 = u_1 + r_1`` to party 0, where ``u_0 + u_1 = x``. Each sees
  ``c = x' + r``, uniform because it lacks the other half of ``r``. Party 2
  sees nothing.

The result comes back as additive shares held by parties 0 and 1 (party 2
holds 0): :func:`~ppml.servers.mpc.rep3.rss.reshare` makes it replicated,
:func:`~ppml.servers.mpc.rep3.rss.to_additive`-style masking hands it out.
"""

from __future__ import annotations

import numpy as np

from ppml.servers.mpc.fast.prg import Ring
from ppml.servers.mpc.rep3.keys import Correlated
from ppml.servers.mpc.rep3.rounds import Expect, Round, Steps
from ppml.servers.mpc.rep3.rss import Shared

OFFSET = np.int64(1 << 62)
_LOW = np.uint64((1 << 63) - 1)


def from_shared(corr: Correlated, x: Shared, m: int) -> Steps[Ring]:
    """Additive shares (party 2: zeros) of ``x / 2^m`` for replicated ``x``; 2 rounds."""
    rank = corr.rank
    # parties 0 and 1 hold x = (x_0 + x_1) + x_2 between them with no messages
    piece = x.a + x.b if rank == 0 else x.b
    return (yield from _truncate(corr, piece, False, m))


def from_additive(corr: Correlated, z: Ring, m: int) -> Steps[Ring]:
    """Additive shares (party 2: zeros) of ``z / 2^m`` for 3-out-of-3 additive ``z``; 2 rounds.

    Party 2's share rides on its round-1 message to party 1, masked by its
    zero share (whose other half party 1 lacks).
    """
    return (yield from _truncate(corr, z + corr.zero(z.shape), True, m))


def _truncate(corr: Correlated, piece: Ring, p2_sends: bool, m: int) -> Steps[Ring]:
    """``piece``: party 0's and 1's parts of x (party 2's only if ``p2_sends``, else unused)."""
    if not 0 < m < 62:
        raise ValueError("shift must be in 1..61")
    rank, shape, ring = corr.rank, piece.shape, np.dtype(np.int64)
    if rank == 2:
        r = corr.common(0, shape) + corr.common(1, shape)
        high0, top0 = corr.common(0, shape), corr.common(0, shape)
        high = ((r.view(np.uint64) & _LOW) >> np.uint64(m)).astype(np.int64)
        top = (r.view(np.uint64) >> np.uint64(63)).astype(np.int64)
        yield Round(send={1: [high - high0, top - top0, *([piece] if p2_sends else [])]})
        yield Round()  # every party takes two rounds, so that gathered protocols stay aligned
        return np.zeros(shape, dtype=np.int64)
    if rank == 0:
        r_half = corr.common(2, shape)  # the 0-2 stream, read in party 2's order
        high, top = corr.common(2, shape), corr.common(2, shape)
        mine = piece + r_half + OFFSET
        yield Round()  # party 2 -> party 1
        got = yield Round(send={1: [mine]}, expect={1: [Expect(shape, ring)]})
        c = mine + got[1][0]
    else:
        r_half = corr.common(2, shape)
        got = yield Round(expect={2: [Expect(shape, ring)] * (3 if p2_sends else 2)})
        high, top = got[2][0], got[2][1]
        mine = piece + r_half + (got[2][2] if p2_sends else 0)
        got = yield Round(send={0: [mine]}, expect={0: [Expect(shape, ring)]})
        c = got[0][0] + mine
    cu = c.view(np.uint64)
    c_top = (cu >> np.uint64(63)).astype(bool)
    # w = c_63 XOR r_63: each party negates its share of r_63 where c_63 is set; party 0 adds 1
    w = np.where(c_top, -top, top)
    out: Ring = w * np.int64(1 << (63 - m)) - high
    if rank == 0:
        public = ((cu & _LOW) >> np.uint64(m)).astype(np.int64) - (OFFSET >> m)
        out = out + public + c_top.astype(np.int64) * np.int64(1 << (63 - m))
    return out
