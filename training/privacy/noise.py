"""Gaussian noise for client-level DP aggregation, and how the servers split it.

The mechanism (DP-FedAvg, McMahan et al. 2018): each update is clipped to L2
norm ``C``; the weighted sum uses weights in [0, 1] (see
:func:`capped_weights`), so replacing one client's update by another moves
the sum by at most ``2C`` (the replace-one L2 sensitivity; participants are
public, so replace-one is the relation that hides anything); Gaussian noise
of standard deviation ``sigma = z * C`` is added, where ``z`` is the noise
multiplier, and the accountant (:mod:`~ppml.training.privacy.accounting`) is
told ``z / 2`` over that sensitivity; the result is divided by a public
denominator.

**Splitting the noise across n servers.** In MPC no single party may know
the whole noise, or it could subtract it from the opened result. So each of
the ``n`` servers draws its own noise ``N(0, s**2)`` independently and adds
it to the shared sum. A curious server knows its own draw; after
subtracting it, the remaining noise is the sum of the other ``n - 1``
servers' draws, of variance ``(n - 1) * s**2``. The calibrated guarantee
needs that variance to be at least ``sigma**2`` against *every* single
server, hence

    s = sigma / sqrt(n - 1)        (n >= 2)

and the opened result carries total noise of variance ``n/(n-1) * sigma**2``
(twice the minimum for n = 2, approaching it as n grows): the price of not
trusting any one server. It is *not* ``sigma / sqrt(n)``: that would leave a
curious server facing only ``(n-1)/n * sigma**2``. If up to ``t`` servers may
pool their draws, replace ``n - 1`` by ``n - t``. The threat model
(docs/architecture.md) has non-colluding honest-but-curious servers: ``t = 1``.
A server that skips its draw (malicious) is outside that model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ppml.training.privacy.secure_random import SecureRandom

Floats = npt.NDArray[np.float64]


def gaussian_sigma(clip_norm: float, noise_multiplier: float) -> float:
    """Standard deviation of the total noise the accountant assumes: ``z * C``."""
    if clip_norm <= 0:
        raise ValueError(f"clip norm must be > 0, got {clip_norm}")
    if noise_multiplier < 0:
        raise ValueError(f"noise multiplier must be >= 0, got {noise_multiplier}")
    return noise_multiplier * clip_norm


def per_server_noise_std(sigma: float, n_servers: int, curious_servers: int = 1) -> float:
    """Each server's noise standard deviation, ``sigma / sqrt(n - t)``.

    Invariant: the draws of any ``n - t`` servers together have variance
    exactly ``sigma**2``, so ``t`` pooling servers (``t = 1`` by default)
    still face the calibrated noise.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if not 1 <= curious_servers < n_servers:
        raise ValueError(
            f"need 1 <= curious_servers < n_servers so that some noise stays hidden; "
            f"got {curious_servers} of {n_servers}"
        )
    return sigma / math.sqrt(n_servers - curious_servers)


def total_noise_std(sigma: float, n_servers: int, curious_servers: int = 1) -> float:
    """Standard deviation of all servers' noise together: ``sigma * sqrt(n / (n - t))``."""
    return per_server_noise_std(sigma, n_servers, curious_servers) * math.sqrt(n_servers)


def clip_update(update: npt.ArrayLike, clip_norm: float) -> Floats:
    """``update * min(1, C / ||update||_2)``; invariant: result norm <= ``C`` (a copy)."""
    if clip_norm <= 0:
        raise ValueError(f"clip norm must be > 0, got {clip_norm}")
    vector = np.array(update, dtype=np.float64)
    norm = float(np.linalg.norm(vector))
    if norm > clip_norm:
        vector *= clip_norm / norm
    return vector


def capped_weights(num_samples: Sequence[int], cap: int) -> Floats:
    """Per-client weights ``min(n_k / cap, 1)``, each in (0, 1].

    Weighting clipped updates by raw sample counts would multiply the
    sensitivity by the largest count; capping keeps it at ``C``.
    """
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    counts = np.asarray(num_samples, dtype=np.float64)
    if counts.size == 0 or counts.min() < 1:
        raise ValueError("every client needs a sample count >= 1")
    return np.minimum(counts / cap, 1.0)


def dp_weighted_average(
    updates: Sequence[npt.ArrayLike],
    weights: Sequence[float],
    clip_norm: float,
    noise_multiplier: float,
    n_servers: int,
    denominator: float | None = None,
    rng: SecureRandom | None = None,
) -> Floats:
    """Plaintext reference of the servers' DP aggregation (what MPC opens).

    ``(sum_k w_k * clip(u_k, C) + sum_i noise_i) / denominator`` with each of
    ``n_servers`` noise vectors drawn from N(0, per_server_noise_std**2).
    Weights must lie in [0, 1]; the denominator must be public (default
    ``sum(weights)``, public when the sample counts are, as in a federation
    whose coordinator sees them).
    """
    if not updates or len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if w.min() < 0 or w.max() > 1:
        raise ValueError("DP weights must lie in [0, 1]; use capped_weights")
    rng = rng or SecureRandom()
    total = sum(wk * clip_update(u, clip_norm) for wk, u in zip(w, updates, strict=True))
    total = np.asarray(total, dtype=np.float64)
    std = per_server_noise_std(gaussian_sigma(clip_norm, noise_multiplier), n_servers)
    for _ in range(n_servers):
        total = total + rng.normal(total.size, std).reshape(total.shape)
    denom = float(w.sum()) if denominator is None else float(denominator)
    if denom <= 0:
        raise ValueError(f"denominator must be > 0, got {denom}")
    return total / denom
