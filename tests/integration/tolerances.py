"""How closely two MPC computations over the same rows can agree.

Every secret product is truncated with its own random rounding, so two
computations of the same model on the same rows (the validation count at an
epoch's end, a later ``evaluate``, a ``predict``) differ by a few units in the
last fixed-point place. A row whose top two logits (or whose logit and 0) are
that close can come out either way; anything else must agree.
"""

from __future__ import annotations

NEAR_TIES = 2  # rows that may flip between two computations


def same_accuracy(first: float, second: float, rows: int) -> bool:
    """Whether two accuracies over ``rows`` rows differ by at most :data:`NEAR_TIES` rows."""
    return round(abs(first - second) * rows) <= NEAR_TIES
