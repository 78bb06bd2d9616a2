"""Which federated updates are sane, decided in MPC: one opened bit per participant.

A server holds only a share of a participant's weight (its sample count, or
1 with DP), so no single server can tell a garbage share from a real one: a
weight share of random bytes reconstructs to a uniformly random ring element
(about +-1.4e14 after decoding). If such a weight entered the round's opened
total, the public denominator of the average would be absurd, or below 1,
and the round would fail on every attempt.

:func:`weights_in_range` therefore compares every participant's secret
weight ``w`` with the public bounds ``[low, high]`` inside MPC and opens
only ``valid = (w >= low) and (w <= high)``, one bit per participant; the
caller drops the invalid ones *before* anything else is opened. Nothing
about a valid weight is revealed beyond that bit.

Exactness on the whole ring: CrypTen's ``lt(0)`` reads the sign (top) bit
of a shared int64 through a binary circuit, so each comparison is exact for
every ring element, with no fixed-point truncation. The two differences
``w - low`` and ``high - w`` cannot both wrap into range: ``w - low`` wraps
only for ``w`` within ``low`` of ``-2^63``, where ``high - w`` wraps
negative, so such a ``w`` is still refused. The two sign bits have scale 1,
so ``a + b - a * b`` (their OR) is one exact Beaver product, and only the
OR is opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ppml.proto.shares import Ring


def weights_in_range(weights: Sequence[Ring], low: float, high: float) -> list[bool]:
    """Whether each participant's secret weight lies in ``[low, high]`` (opened, 1 bit each).

    ``weights`` are this party's shares, shape ``(1,)`` each, in the same order
    on every party; every party gets the same list. Runs on the MPC worker
    thread, in lockstep with the other parties.
    """
    if not weights:
        return []
    if not low <= high:
        raise ValueError(f"empty range [{low}, {high}]")
    from crypten.mpc import MPCTensor

    stacked = np.ascontiguousarray(np.concatenate([w.reshape(-1) for w in weights]))
    if stacked.shape != (len(weights),):
        raise ValueError("every weight must be a share of one value")
    w: Any = MPCTensor.from_shares(torch.from_numpy(stacked))
    differences = MPCTensor.stack([w - low, w.neg() + high])  # (2, m): both >= 0 iff valid
    below = differences.lt(0)  # shared bits, scale 1 (exact)
    too_small, too_large = below[0], below[1]
    invalid = too_small + too_large - too_small * too_large
    opened = invalid.get_plain_text().reshape(-1).tolist()
    return [round(float(bit)) == 0 for bit in opened]
