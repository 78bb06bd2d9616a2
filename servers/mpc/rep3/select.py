"""Multiply a replicated value by a secret bit given in binary form (3 rounds): ReLU, max.

The bit ``d = d_0 ^ d_1 ^ d_2`` (bit 0 of a binary sharing, e.g. from
:func:`~ppml.servers.mpc.rep3.compare.negative`) becomes arithmetic as
follows:

1. party 0 knows ``e = d_0 ^ d_1`` (it holds both components) and inputs it:
   components 0 and 1 from the pair streams it shares with parties 2 and 1,
   component 2 (``e`` minus those) sent to parties 1 and 2, uniform to each
   because each lacks one of the two pair streams (round 1);
2. ``d_2`` is component 2 of an arithmetic sharing as it is (parties 1 and
   2 hold it), and ``d = e + d_2 - 2 e d_2`` (one product, round 2);
3. ``d * y`` (one product, round 3).

Every message is either a reshared product or party 0's masked input.
"""

from __future__ import annotations

import numpy as np

from ppml.servers.mpc.rep3 import trunc
from ppml.servers.mpc.rep3.compare import negative
from ppml.servers.mpc.rep3.keys import Correlated
from ppml.servers.mpc.rep3.rounds import Expect, Round, Steps, gather
from ppml.servers.mpc.rep3.rss import Shared, mul, reshare, xor_public

SELECT_ROUNDS = 3
_BIT = np.uint64(1)


def bit_to_arith(corr: Correlated, d: Shared) -> Steps[Shared]:
    """Arithmetic sharing of bit 0 of the binary sharing ``d``; 2 rounds."""
    rank = corr.rank
    shape = d.shape
    ring = np.dtype(np.int64)
    if rank == 0:
        e = ((d.a ^ d.b) & _BIT).astype(np.int64)
        e0, e1 = corr.common(2, shape), corr.common(1, shape)
        e2 = e - e0 - e1
        yield Round(send={1: [e2], 2: [e2]})
        e_sh = Shared(e0, e1)
        d2 = Shared(np.zeros(shape, np.int64), np.zeros(shape, np.int64))
    elif rank == 1:
        e1 = corr.common(0, shape)
        got = yield Round(expect={0: [Expect(shape, ring)]})
        e_sh = Shared(e1, got[0][0])
        d2 = Shared(np.zeros(shape, np.int64), (d.b & _BIT).astype(np.int64))
    else:
        e0 = corr.common(0, shape)
        got = yield Round(expect={0: [Expect(shape, ring)]})
        e_sh = Shared(got[0][0], e0)
        d2 = Shared((d.a & _BIT).astype(np.int64), np.zeros(shape, np.int64))
    prod = yield from mul(corr, e_sh, d2)
    return e_sh + d2 - prod.scale(2)


def select(corr: Correlated, d: Shared, y: Shared) -> Steps[Shared]:
    """``d * y`` for the bit ``d`` (binary form, bit 0) and replicated ``y``; 3 rounds."""
    bit = yield from bit_to_arith(corr, d)
    return (yield from mul(corr, bit, y))


def relu_trunc(corr: Correlated, x: Shared, m: int) -> Steps[Shared]:
    """``ReLU(x / 2^m)`` for replicated ``x`` at scale ``2^(2m)``: 8 + 3 rounds.

    The sign circuit runs on ``x`` itself; the truncation (2 rounds) and its
    resharing (1 round) ride along in its first three rounds. Signs agree:
    ``x < 0`` gives a truncated value of at most 0, whose ReLU is 0 either way.
    """
    neg, y = yield from gather(negative(corr, x), _trunc_shared(corr, x, m))
    keep = xor_public(corr.rank, neg, 1)
    return (yield from select(corr, keep, y))


def _trunc_shared(corr: Correlated, x: Shared, m: int) -> Steps[Shared]:
    y = yield from trunc.from_shared(corr, x, m)
    return (yield from reshare(corr, y))
