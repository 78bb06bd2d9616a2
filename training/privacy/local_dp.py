"""Local differential privacy for categorical columns: k-ary randomised response.

Each row's value is perturbed on the data owner's machine before it leaves:
with ``k`` categories, the true value is kept with probability
``p = e^eps / (e^eps + k - 1)`` and otherwise replaced by one of the other
``k - 1`` categories uniformly, so each other category appears with
probability ``q = 1 / (e^eps + k - 1)``. Since ``p / q = e^eps``, every
single report is ``eps``-locally differentially private.

Invariant of :func:`estimate_frequencies`: for observed frequency ``f_j``,
``E[f_j] = pi_j * p + (1 - pi_j) * q``, so ``(f_j - q) / (p - q)`` is an
unbiased estimate of the true frequency ``pi_j`` (individual estimates may
fall outside [0, 1]; they always sum to 1).

All randomness comes from :class:`~ppml.training.privacy.secure_random.SecureRandom`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import numpy.typing as npt

from ppml.training.privacy.secure_random import SecureRandom

Floats = npt.NDArray[np.float64]


def keep_probability(epsilon: float, k: int) -> float:
    """``e^eps / (e^eps + k - 1)``: the chance a report equals the true value."""
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if k < 2:
        raise ValueError(f"randomised response needs at least 2 categories, got {k}")
    return 1.0 / (1.0 + (k - 1) * math.exp(-epsilon))


def _indices(column: Sequence[Hashable] | np.ndarray, categories: Sequence[Hashable]) -> np.ndarray:
    position = {c: i for i, c in enumerate(categories)}
    if len(position) != len(categories):
        raise ValueError("categories must be distinct")
    values = np.asarray(column, dtype=object).ravel()
    try:
        return np.fromiter((position[v] for v in values), dtype=np.int64, count=values.size)
    except KeyError as exc:
        raise ValueError(f"value {exc.args[0]!r} is not one of the categories") from None


def randomized_response(
    column: Sequence[Hashable] | np.ndarray,
    epsilon: float,
    categories: Sequence[Hashable],
    rng: SecureRandom | None = None,
) -> np.ndarray:
    """``column`` with each value perturbed by k-ary randomised response (a new array).

    Categories are the whole public domain, not just the values present.
    """
    if rng is None:
        rng = SecureRandom()
    elif not isinstance(rng, SecureRandom):
        raise TypeError("local DP needs unpredictable noise: pass a SecureRandom (or nothing)")
    k = len(categories)
    p = keep_probability(epsilon, k)
    true = _indices(column, categories)
    keep = rng.random(true.size) < p
    # another category, uniform over the k - 1 that differ from the true one
    other = rng.integers(k - 1, true.size)
    other += other >= true
    chosen = np.where(keep, true, other)
    return _as_array(categories)[chosen].reshape(np.asarray(column, dtype=object).shape)


def _as_array(categories: Sequence[Hashable]) -> np.ndarray:
    """The categories as a 1-D array (numeric or string dtype where numpy infers one)."""
    array = np.asarray(categories)
    if array.ndim != 1:
        array = np.empty(len(categories), dtype=object)
        array[:] = list(categories)
    return array


def estimate_frequencies(
    responses: Sequence[Hashable] | np.ndarray,
    epsilon: float,
    categories: Sequence[Hashable],
) -> Floats:
    """Unbiased estimates of the true category frequencies, in ``categories`` order."""
    k = len(categories)
    p = keep_probability(epsilon, k)
    q = (1.0 - p) / (k - 1)
    index = _indices(responses, categories)
    if index.size == 0:
        raise ValueError("no responses to estimate from")
    observed = np.bincount(index, minlength=k).astype(np.float64) / index.size
    return (observed - q) / (p - q)
