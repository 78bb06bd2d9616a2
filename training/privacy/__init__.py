"""Differential privacy for federated and secret-shared training.

* :mod:`.accounting`: replace-one (epsilon, delta) from Google's
  ``dp_accounting`` (the single source of truth) for DP-FedAvg rounds and
  DP-SGD steps on fixed-size batches sampled without replacement, noise
  calibration, and a :class:`PrivacyBudget` that refuses over-spending;
* :mod:`.noise`: Gaussian noise scale, its split across MPC servers, clipping;
* :mod:`.local_dp`: k-ary randomised response and its unbiased estimator;
* :mod:`.secure_random`: the CSPRNG every privacy draw comes from;
* :mod:`.dpsgd`: DP-SGD jobs' checks, noise calibration and epsilon spent.

Nothing in this package imports CrypTen or the servers.
"""

from ppml.training.privacy.accounting import (
    RDP_ORDERS,
    BudgetExceeded,
    FixedSizeSampling,
    PrivacyBudget,
    Spend,
    calibrate_noise_multiplier,
    dpsgd_epsilon,
    epsilon_of,
    fedavg_epsilon,
    gaussian_round_event,
    make_accountant,
    repeated_event,
    sampled_step_event,
)
from ppml.training.privacy.local_dp import (
    estimate_frequencies,
    keep_probability,
    randomized_response,
)
from ppml.training.privacy.noise import (
    capped_weights,
    clip_update,
    dp_weighted_average,
    gaussian_sigma,
    per_server_noise_std,
    total_noise_std,
)
from ppml.training.privacy.secure_random import SecureRandom

__all__ = [
    "NEIGHBOURS",
    "RDP_ORDERS",
    "BudgetExceeded",
    "FixedSizeSampling",
    "PrivacyBudget",
    "SecureRandom",
    "Spend",
    "calibrate_noise_multiplier",
    "capped_weights",
    "clip_update",
    "dp_weighted_average",
    "dpsgd_epsilon",
    "epsilon_of",
    "estimate_frequencies",
    "fedavg_epsilon",
    "gaussian_round_event",
    "gaussian_sigma",
    "keep_probability",
    "make_accountant",
    "per_server_noise_std",
    "randomized_response",
    "repeated_event",
    "sampled_step_event",
    "total_noise_std",
]


def __getattr__(name: str) -> object:
    if name == "NEIGHBOURS":  # resolved on first use: dp_accounting loads lazily
        from ppml.training.privacy import accounting

        return accounting.NEIGHBOURS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
