"""How many rows a model gets right, on replicated shares: only shares of the count come out.

Inputs are additive shares (one per server, the wire form) of the model's
outputs ``(rows, C)`` and of the one-hot labels ``(rows, C')``, both with 16
fractional bits; the output is this party's additive share of the count,
encoded with 16 fractional bits as the CrypTen path's
(:func:`~ppml.servers.mpc.training.trainer.count_correct`). Nothing is
opened: the caller adds the three shares up.

* ``argmax`` (``C`` classes, one-hot labels): the true class's output
  ``t = sum_j y_j o_j`` (one product round, at scale ``2^32``), then the row
  is right iff no other class's output is above it: the signs of
  ``t - o_j 2^16`` for every ``j`` in one sign circuit (8 rounds, exact), an
  AND tree over the classes (``ceil(log2 C)`` rounds), the bit made
  arithmetic (2 rounds). A tie with the true class counts as right (the
  plaintext ``argmax`` takes the first maximum; ties between real-valued
  outputs are rare and then the two differ by one row at most per tie);
* ``sign`` (one output, two-class one-hot labels): the prediction is
  ``o > 0`` (the sign circuit on ``-o``, exact, as CrypTen's ``gt(0)``),
  made arithmetic (2 rounds), and ``p t + (1 - p)(1 - t)`` with ``t`` the
  label of class 1 (one product round).

Every message is a resharing, an AND's or a product's reshared output, or
the bit conversion's masked input: uniform to its receiver.
"""

from __future__ import annotations

import numpy as np

from ppml.servers.mpc.fast.prg import Ring
from ppml.servers.mpc.rep3.compare import negative
from ppml.servers.mpc.rep3.keys import Correlated
from ppml.servers.mpc.rep3.rounds import Steps, gather
from ppml.servers.mpc.rep3.rss import (
    Shared,
    add_public,
    and_bits,
    mul,
    mul_local,
    reshare,
    to_additive,
    xor_public,
)
from ppml.servers.mpc.rep3.select import bit_to_arith

FRAC_BITS = 16
KINDS = ("argmax", "sign")


def count_correct(corr: Correlated, outputs: Ring, labels: Ring, kind: str) -> Steps[Ring]:
    """This party's additive share (shape ``()``, 16 fractional bits) of the correct rows."""
    if kind not in KINDS:
        raise ValueError(f"accuracy kind must be one of {KINDS}")
    if outputs.ndim != 2 or labels.ndim != 2 or outputs.shape[0] != labels.shape[0]:
        raise ValueError("outputs and labels must be (rows, columns) with the same rows")
    if kind == "argmax":
        o, y = yield from gather(_replicated(corr, outputs), _replicated(corr, labels))
        right = yield from argmax_hits(corr, o, y)
    else:
        right = yield from _sign_right(corr, outputs, labels)
    total = right.map(lambda a: a.sum(axis=0, keepdims=True))
    return to_additive(corr, total).reshape(())


def argmax_hits(corr: Correlated, o: Shared, y: Shared) -> Steps[Shared]:
    """Arithmetic 0/1 per row, at scale ``2^16``: the true class's output is a maximum.

    ``o`` (rows, C) and one-hot ``y`` replicated, 16 fractional bits;
    ``1 + 8 + ceil(log2 C) + 2`` rounds (15 for 10 classes): no row maximum needed.
    """
    if o.shape != y.shape:
        raise ValueError(f"outputs {o.shape} and one-hot labels {y.shape} differ")
    t = yield from reshare(corr, mul_local(y, o).sum(axis=1))  # scale 2^32
    scaled = o.scale(1 << FRAC_BITS)
    gaps = Shared(t.a[:, None] - scaled.a, t.b[:, None] - scaled.b)
    below = yield from negative(corr, gaps)  # (rows, C): another class is above
    ok = xor_public(corr.rank, below, 1)
    while ok.shape[1] > 1:  # AND tree over the classes
        half = ok.shape[1] // 2
        left = Shared(ok.a[:, :half], ok.b[:, :half])
        right = Shared(ok.a[:, half : 2 * half], ok.b[:, half : 2 * half])
        paired = yield from and_bits(corr, left, right)
        if ok.shape[1] % 2:
            odd = ok.map(lambda a: a[:, -1:])
            paired = Shared(
                np.concatenate([paired.a, odd.a], axis=1),
                np.concatenate([paired.b, odd.b], axis=1),
            )
        ok = paired
    bit = yield from bit_to_arith(corr, ok.map(lambda a: np.ascontiguousarray(a[:, 0])))
    return bit.scale(1 << FRAC_BITS)


def _sign_right(corr: Correlated, outputs: Ring, labels: Ring) -> Steps[Shared]:
    """Arithmetic 0/1 per row, at scale ``2^16``: ``o > 0`` equals the label of class 1."""
    if outputs.shape[1] != 1 or labels.shape[1] != 2:
        raise ValueError("the sign accuracy needs one output and two-class labels")
    o, t = yield from gather(
        _replicated(corr, outputs[:, 0]), _replicated(corr, np.ascontiguousarray(labels[:, 1]))
    )
    above = yield from negative(corr, -o)  # o > 0 iff -o < 0
    p = yield from bit_to_arith(corr, above)  # scale 1
    pt = yield from mul(corr, p, t)  # scale 2^16, exact: p is 0 or 1
    # p t + (1 - p)(1 - t) = 1 - t - p + 2 p t, at scale 2^16
    return add_public(corr.rank, pt.scale(2) - t - p.scale(1 << FRAC_BITS), 1 << FRAC_BITS)


def _replicated(corr: Correlated, additive: Ring) -> Steps[Shared]:
    return (yield from reshare(corr, np.ascontiguousarray(additive, dtype=np.int64)))
