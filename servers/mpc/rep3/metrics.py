"""Training metrics on replicated shares, handed out as additive shares: loss and correct count.

Both come back as this server's additive share of a fixed-point scalar (16
fractional bits, shape ``()``), freshly masked like any output, for the
owner who asked for metrics to add up; nothing is opened here.

* :func:`mean_cross_entropy` -- ``-(1/B) sum_rows sum_j y_j log softmax(z)_j``
  from the softmax's own row maximum ``m`` and sum ``s``
  (:func:`~.nonlinear.softmax_parts`): ``log softmax(z)_j = z_j - m - ln s``
  with ``ln`` on ``[1, k]`` (:func:`~.nonlinear.log`, error at most
  ``0.023`` per row for 10 classes); one product with the labels, summed
  locally, times the public ``round(2^20 / B)`` and truncated once. Rows
  with all-zero labels (padding) add 0, as in CrypTen. 86 rounds, which run
  beside a training step's backward pass.
* :func:`correct_count` -- how many rows have their label among the
  maximal logits: the row maximum (:func:`~.nonlinear.maximum`), the sign of
  ``z_j - m`` gives the indicator of the maximal entries (8 + 2 rounds), a
  local product with the one-hot labels, summed. A row whose maximum is tied
  counts if its label is among the tied classes. 50 rounds after the
  logits.
"""

from __future__ import annotations

import numpy as np

from ppml.servers.mpc.fast.prg import Ring
from ppml.servers.mpc.rep3 import trunc
from ppml.servers.mpc.rep3.compare import negative
from ppml.servers.mpc.rep3.keys import Correlated
from ppml.servers.mpc.rep3.nonlinear import FRAC_BITS, log, maximum
from ppml.servers.mpc.rep3.rounds import Steps
from ppml.servers.mpc.rep3.rss import Shared, mul_local, xor_public
from ppml.servers.mpc.rep3.select import bit_to_arith

_MEAN_BITS = 20


def mean_cross_entropy(
    corr: Correlated, z: Shared, y: Shared, top: Shared, total: Shared
) -> Steps[Ring]:
    """This server's share of the batch's mean cross-entropy of logits ``z`` (batch, k)."""
    batch, k = z.shape
    log_total = yield from log(corr, total, 1.0, float(max(k, 2)))
    log_p = z - top - log_total  # broadcast over the classes
    summed = np.asarray(mul_local(y, log_p).sum(), dtype=np.int64).reshape(1)  # scale 2^32
    per_row = np.int64(round((1 << _MEAN_BITS) / batch))
    mean = yield from trunc.from_additive(corr, summed * per_row, FRAC_BITS + _MEAN_BITS)
    return _hand_out(corr, -mean)


def correct_count(corr: Correlated, z: Shared, y: Shared) -> Steps[Ring]:
    """This server's share of how many rows of ``z`` (batch, k) have their maximum at the label."""
    top = yield from maximum(corr, z)
    below = yield from negative(corr, z - top)
    at_top = yield from bit_to_arith(corr, xor_public(corr.rank, below, 1))  # 0/1, unscaled
    hits = np.asarray(mul_local(at_top, y).sum(), dtype=np.int64).reshape(1)  # scale 2^16
    return _hand_out(corr, hits)


def _hand_out(corr: Correlated, additive: Ring) -> Ring:
    """An additive sharing of a scalar (one element), re-masked: this server's share, shape ()."""
    out: Ring = (additive + corr.zero(additive.shape)).reshape(())
    return out
