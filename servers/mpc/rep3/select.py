"""Multiply a replicated value by a secret bit given in binary form (2 rounds): ReLU, max.

The bit ``d = d_0 ^ d_1 ^ d_2`` (bit 0 of a binary sharing, e.g. from
:func:`~ppml.servers.mpc.rep3.compare.negative`) is split as ``d = e ^ d_2``
with ``e = d_0 ^ d_1``, which party 0 knows (it holds both components), and
``d_2``, which parties 1 and 2 know. Then ``d y = e y + d_2 y - 2 e (d_2 y)``:

1. party 0 inputs ``e`` (components 0 and 1 from the pair streams it shares
   with parties 2 and 1, component 2 -- ``e`` minus those -- sent to parties 1
   and 2, uniform to each because each lacks one of the two pair streams);
   at the same time ``w = d_2 y`` is formed locally as three additive shares
   (party 1: ``d_2 (y_1 + y_2)``, party 2: ``d_2 y_0``, party 0: 0) and
   reshared (round 1);
2. the products ``e y`` and ``e w`` (round 2), and ``d y = e y + w - 2 e w``
   locally.

:func:`bit_to_arith` gives the bit itself in arithmetic form (also 2
rounds: ``e + d_2 - 2 e d_2``), for training's kept ReLU bits. Every message
is either a reshared product or party 0's masked input.
"""

from __future__ import annotations

import numpy as np

from ppml.servers.mpc.rep3 import trunc
from ppml.servers.mpc.rep3.compare import negative
from ppml.servers.mpc.rep3.keys import Correlated
from ppml.servers.mpc.rep3.rounds import Array, Expect, Round, Steps, gather
from ppml.servers.mpc.rep3.rss import Shared, mul, reshare, xor_public

SELECT_ROUNDS = 2
_BIT = np.uint64(1)


def _input_e(corr: Correlated, d: Shared) -> Steps[Shared]:
    """Party 0 inputs ``e = d_0 ^ d_1`` (bit 0) as an arithmetic sharing: 1 round."""
    rank, shape = corr.rank, d.shape
    if rank == 0:
        e = ((d.a ^ d.b) & _BIT).astype(np.int64)
        e0, e1 = corr.common(2, shape), corr.common(1, shape)
        yield Round(send={1: [e - e0 - e1], 2: [e - e0 - e1]})
        return Shared(e0, e1)
    got = yield Round(expect={0: [Expect(shape, np.dtype(np.int64))]})
    own = corr.common(0, shape)
    return Shared(own, got[0][0]) if rank == 1 else Shared(got[0][0], own)


def _bit2(corr: Correlated, d: Shared) -> Array | None:
    """``d_2`` (bit 0) as int64 at parties 1 and 2, who hold component 2; None at party 0."""
    if corr.rank == 0:
        return None
    return ((d.b if corr.rank == 1 else d.a) & _BIT).astype(np.int64)


def bit_to_arith(corr: Correlated, d: Shared) -> Steps[Shared]:
    """Arithmetic sharing of bit 0 of the binary sharing ``d``; 2 rounds."""
    e_sh = yield from _input_e(corr, d)
    bit2, zero = _bit2(corr, d), np.zeros(d.shape, np.int64)
    d2 = Shared(zero, zero.copy())  # component 2 only
    if corr.rank == 1:
        d2 = Shared(zero, bit2)  # type: ignore[arg-type]
    elif corr.rank == 2:
        d2 = Shared(bit2, zero)  # type: ignore[arg-type]
    prod = yield from mul(corr, e_sh, d2)
    return e_sh + d2 - prod.scale(2)


def select(corr: Correlated, d: Shared, y: Shared) -> Steps[Shared]:
    """``d * y`` for the bit ``d`` (binary form, bit 0) and replicated ``y``; 2 rounds."""
    bit2 = _bit2(corr, d)
    if bit2 is None:
        w_add = np.zeros(y.shape, dtype=np.int64)
    elif corr.rank == 1:  # holds (y_1, y_2)
        w_add = bit2 * (y.a + y.b)
    else:  # party 2 holds (y_2, y_0); y_2 is party 1's
        w_add = bit2 * y.b
    e_sh, w = yield from gather(_input_e(corr, d), reshare(corr, w_add))
    ey, ew = yield from gather(mul(corr, e_sh, y), mul(corr, e_sh, w))
    return ey + w - ew.scale(2)


def relu_trunc(corr: Correlated, x: Shared, m: int) -> Steps[Shared]:
    """``ReLU(x / 2^m)`` for replicated ``x`` at scale ``2^(2m)``: 8 + 2 rounds.

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
