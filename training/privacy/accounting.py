"""Differential-privacy accounting, delegated entirely to Google's ``dp_accounting``.

Nothing here computes a privacy bound itself: every epsilon comes from
``dp_accounting``'s RDP accountant fed the ``DpEvent`` that describes what
was released. This module only names the two mechanisms ppml runs and keeps
a budget ledger.

**The unit of privacy is replace-one.** Who takes part, and how many rows
each data set has, are public (participants are listed in a federation's
settings, row counts in every job's info), so hiding a row's or a client's
*presence* (add/remove adjacency) would hide nothing. Neighbouring data sets
differ by *replacing* one row (DP-SGD) or one participant's data (DP-FedAvg):
``dp_accounting``'s ``REPLACE_ONE`` relation. Both mechanisms add Gaussian
noise of standard deviation ``z * C`` to a sum of contributions each clipped
to L2 norm ``C``; replacing one contribution moves that sum by up to ``2C``,
so the event handed to the accountant is ``GaussianDpEvent(z / 2)`` (a
``GaussianDpEvent``'s multiplier is the noise over the L2 sensitivity).

* **Client-level DP-FedAvg** (one event per round): every participant in
  every round, weights at most 1 (see
  :func:`~ppml.training.privacy.noise.capped_weights`):
  ``GaussianDpEvent(z / 2)``.
* **DP-SGD** (one event per step): a batch of exactly ``batch`` rows drawn
  uniformly without replacement from the ``rows`` rows, independently at
  every step, from randomness nobody outside the servers knows
  (:class:`~ppml.training.batches.SecretBatches`), per-example clipping to
  ``C``, noise ``z * C``: ``SampledWithoutReplacementDpEvent(rows, batch,
  GaussianDpEvent(z / 2))`` (Wang, Balle and Kasiviswanathan 2019, Thm. 27),
  which only the RDP accountant supports. With ``batch >= rows`` every step
  uses every row: ``GaussianDpEvent(z / 2)``.

Why RDP only: ``dp_accounting``'s PLD accountant has no sampling without
replacement, and under ``REPLACE_ONE`` it doubles a ``GaussianDpEvent``'s
sensitivity itself while the RDP accountant does not (the RDP convention, a
multiplier over the replace-one sensitivity, is the one used here); one
accountant keeps one convention.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np


def _dp() -> Any:
    """``dp_accounting``, imported on first use: it takes ~2 s, and a server that runs no
    DP job (every server start in a test run) never needs it."""
    import dp_accounting

    return dp_accounting


def __getattr__(name: str) -> Any:
    if name == "NEIGHBOURS":  # the replace-one relation every accountant here uses
        return _dp().NeighboringRelation.REPLACE_ONE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The RDP orders of every accountant here. dp_accounting's default grid (1.1 to 10.9 by 0.1,
# 11 to 63, 128 to 1024) costs about 0.7 s per sampled-without-replacement curve, and
# calibration evaluates about 16 curves while a job starts; this grid costs about a fifth
# and moved epsilon by under 0.1% in the examples (optima at orders 2 to 48).
RDP_ORDERS: tuple[float, ...] = (
    1.25, 1.5, 1.75, 2, 2.25, 2.5, 2.75, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 9, 10, 11, 12,
    14, 16, 18, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 128,
)  # fmt: skip
# L2 sensitivity of a sum of contributions clipped to norm C, in units of C, when one is replaced
REPLACE_ONE_SENSITIVITY = 2.0


class BudgetExceeded(RuntimeError):
    """Spending the requested event would take epsilon past the budget; nothing was spent."""


@dataclass(frozen=True)
class FixedSizeSampling:
    """Each step's batch: ``batch`` of the ``rows`` rows, uniformly without replacement.

    Drawn independently at every step, from randomness the accountant may
    assume secret (see :class:`~ppml.training.batches.SecretBatches`).
    """

    rows: int
    batch: int

    def __post_init__(self) -> None:
        if self.rows < 1 or self.batch < 1:
            raise ValueError(f"need rows >= 1 and batch >= 1, got {self.rows} and {self.batch}")

    @property
    def sample_size(self) -> int:
        """Rows in every batch: ``min(batch, rows)``."""
        return min(self.batch, self.rows)


def make_accountant() -> Any:
    """A fresh, empty replace-one RDP accountant over :data:`RDP_ORDERS`."""
    dp = _dp()
    return dp.rdp.RdpAccountant(
        orders=list(RDP_ORDERS), neighboring_relation=dp.NeighboringRelation.REPLACE_ONE
    )


def gaussian_round_event(noise_multiplier: float) -> Any:
    """One release of a sum of clipped contributions plus noise ``z * C``, replace-one.

    ``noise_multiplier`` is the noise standard deviation divided by the clip
    norm ``C``; the event's multiplier is over the replace-one sensitivity
    ``2C``.
    """
    if not noise_multiplier >= 0:
        raise ValueError(f"noise multiplier must be >= 0, got {noise_multiplier}")
    return _dp().GaussianDpEvent(noise_multiplier / REPLACE_ONE_SENSITIVITY)


def sampled_step_event(noise_multiplier: float, sampling: FixedSizeSampling) -> Any:
    """One DP-SGD step on a fixed-size batch sampled without replacement (see the module)."""
    event = gaussian_round_event(noise_multiplier)
    if sampling.sample_size >= sampling.rows or noise_multiplier == 0:
        return event  # every row in every step; or no noise at all (epsilon infinite)
    return _dp().SampledWithoutReplacementDpEvent(sampling.rows, sampling.sample_size, event)


def _event(noise_multiplier: float, sampling: FixedSizeSampling | None) -> Any:
    if sampling is None:
        return gaussian_round_event(noise_multiplier)
    return sampled_step_event(noise_multiplier, sampling)


def repeated_event(
    noise_multiplier: float, count: int, sampling: FixedSizeSampling | None = None
) -> Any:
    """``count`` rounds (``sampling`` None) or DP-SGD steps, composed."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return _dp().SelfComposedDpEvent(_event(noise_multiplier, sampling), count)


def _supported(accountant: Any, event: Any) -> None:
    if not accountant.supports(event):
        raise ValueError(f"the replace-one RDP accountant cannot account for {event!r}")


def epsilon_of(event: Any, delta: float) -> float:
    """Epsilon at ``delta`` of ``event`` alone, from a fresh accountant."""
    _check_delta(delta)
    fresh = make_accountant()
    _supported(fresh, event)
    return float(fresh.compose(event).get_epsilon(delta))


def fedavg_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Client-level, replace-one epsilon of ``rounds`` DP-FedAvg rounds with everyone in each."""
    return epsilon_of(repeated_event(noise_multiplier, rounds), delta)


def dpsgd_epsilon(
    noise_multiplier: float, sampling: FixedSizeSampling, steps: int, delta: float
) -> float:
    """Row-level, replace-one epsilon of ``steps`` DP-SGD steps (RDP accountant).

    Equal to composing ``steps`` :func:`sampled_step_event` s in a fresh
    accountant, but the step's RDP curve (about 0.7 s of work for sampling
    without replacement) is computed once per ``(z, rows, batch)``: a job
    reports its epsilon after every step.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    _check_delta(delta)
    if steps == 0:
        return 0.0  # nothing released yet (and 0 * an infinite curve is not 0)
    orders, curve = _step_curve(noise_multiplier, sampling)
    return float(_dp().rdp.compute_epsilon(orders, steps * curve, delta)[0])


@functools.lru_cache(maxsize=64)
def _step_curve(noise_multiplier: float, sampling: FixedSizeSampling) -> tuple[Any, Any]:
    """RDP orders and one DP-SGD step's RDP at each, from a fresh accountant.

    ``compose(event, n)`` adds ``n`` times this curve to the accountant's
    (``RdpAccountant._rdp``), and ``get_epsilon`` is ``rdp.compute_epsilon``
    of the sum: the same arithmetic as :func:`dpsgd_epsilon`.
    """
    accountant = make_accountant()
    event = sampled_step_event(noise_multiplier, sampling)
    _supported(accountant, event)
    accountant.compose(event)
    curve = np.array(accountant._rdp, dtype=np.float64)
    curve.flags.writeable = False
    return np.array(accountant._orders), curve


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    rounds_or_steps: int,
    sampling: FixedSizeSampling | None = None,
) -> float:
    """Smallest noise multiplier (to ``dp_accounting``'s tolerance, 1e-6) whose
    ``rounds_or_steps`` compositions (DP-SGD steps with ``sampling``, else
    FedAvg rounds) stay within ``(target_epsilon, delta)``.

    Invariant: the epsilon of the returned multiplier, as :func:`fedavg_epsilon`
    or :func:`dpsgd_epsilon` report it, is at most ``target_epsilon``
    (``dp_accounting.calibrate_dp_mechanism`` guarantees a non-positive gap).
    """
    if not target_epsilon > 0:
        raise ValueError(f"target epsilon must be > 0, got {target_epsilon}")
    if rounds_or_steps < 1:
        raise ValueError(f"rounds_or_steps must be >= 1, got {rounds_or_steps}")
    _check_delta(delta)
    _supported(make_accountant(), repeated_event(1.0, 1, sampling))
    return float(
        _dp().calibrate_dp_mechanism(
            make_accountant,
            lambda z: repeated_event(z, rounds_or_steps, sampling),
            target_epsilon,
            delta,
        )
    )


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")


@dataclass(frozen=True)
class Spend:
    """One accepted spend: its index (0-based), epsilon after it, and its increment."""

    index: int
    epsilon_total: float
    epsilon_increment: float


class PrivacyBudget:
    """An ``(epsilon, delta)`` budget spent one round (or step) at a time.

    Invariants: the ledger only ever holds events whose composition stays
    within the budget, i.e. :attr:`epsilon_spent` ``<= epsilon`` always; a
    spend is decided on a copy of the accountant *before* it is committed, so
    a refused spend (:class:`BudgetExceeded`) leaves the budget unchanged.
    Epsilon composes sub-additively, so per-spend increments are the
    differences of the accountant's totals, not independent epsilons.
    """

    def __init__(self, epsilon: float, delta: float) -> None:
        if epsilon <= 0:
            raise ValueError(f"epsilon budget must be > 0, got {epsilon}")
        _check_delta(delta)
        self.epsilon = float(epsilon)
        self.delta = float(delta)
        self._accountant = make_accountant()
        self._history: list[Spend] = []

    @property
    def epsilon_spent(self) -> float:
        """Epsilon at :attr:`delta` of everything spent so far (0.0 before any spend)."""
        return self._history[-1].epsilon_total if self._history else 0.0

    @property
    def epsilon_remaining(self) -> float:
        return self.epsilon - self.epsilon_spent

    @property
    def history(self) -> tuple[Spend, ...]:
        return tuple(self._history)

    def epsilon_after(self, event: Any) -> float:
        """Epsilon the ledger would reach if ``event`` were spent (nothing is spent)."""
        _supported(self._accountant, event)
        trial = copy.deepcopy(self._accountant)
        trial.compose(event)
        return float(trial.get_epsilon(self.delta))

    def spend(self, event: Any) -> Spend:
        """Spend ``event`` if it fits; otherwise raise :class:`BudgetExceeded`."""
        _supported(self._accountant, event)
        trial = copy.deepcopy(self._accountant)
        trial.compose(event)
        total = float(trial.get_epsilon(self.delta))
        if total > self.epsilon:
            raise BudgetExceeded(
                f"spend {len(self._history)} would bring epsilon to {total:.4g} at "
                f"delta={self.delta:g}, over the budget of {self.epsilon:.4g} "
                f"({self.epsilon_spent:.4g} spent so far); nothing was spent"
            )
        self._accountant = trial
        entry = Spend(len(self._history), total, total - self.epsilon_spent)
        self._history.append(entry)
        return entry

    def spend_round(self, noise_multiplier: float) -> Spend:
        """Spend one DP-FedAvg round (see :func:`gaussian_round_event`)."""
        return self.spend(gaussian_round_event(noise_multiplier))

    def spend_steps(
        self, noise_multiplier: float, sampling: FixedSizeSampling, steps: int = 1
    ) -> Spend:
        """Spend ``steps`` DP-SGD steps as one entry of the history."""
        return self.spend(repeated_event(noise_multiplier, steps, sampling))
