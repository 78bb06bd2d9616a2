"""Differential-privacy accounting, delegated entirely to Google's ``dp_accounting``.

Nothing here computes a privacy bound itself: every epsilon comes from a
``dp_accounting`` accountant (RDP by default, PLD on request) fed the
``DpEvent`` that describes what was released. This module only names the two
mechanisms ppml runs and keeps a budget ledger.

* **Client-level DP-FedAvg** (one event per round): each round releases the
  sum of the participants' updates, each clipped to L2 norm ``C`` (weights
  at most 1, see :func:`~ppml.training.privacy.noise.capped_weights`), plus
  Gaussian noise of standard deviation ``z * C``. With every participant in
  every round that is ``GaussianDpEvent(z)``; with participants drawn by
  Poisson sampling at rate ``q`` it is ``PoissonSampledDpEvent(q, ...)``.
* **DP-SGD** (one event per step): a Poisson-sampled batch (rate
  ``q = batch / rows``), per-example clipping to ``C``, noise ``z * C``.

Neighbouring data sets differ by adding or removing one client (FedAvg) or
one row (DP-SGD): ``dp_accounting``'s ``ADD_OR_REMOVE_ONE`` relation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import dp_accounting
from dp_accounting import pld, rdp

AccountantKind = Literal["rdp", "pld"]
ACCOUNTANTS: tuple[AccountantKind, ...] = ("rdp", "pld")


class BudgetExceeded(RuntimeError):
    """Spending the requested event would take epsilon past the budget; nothing was spent."""


def make_accountant(kind: AccountantKind = "rdp") -> Any:
    """A fresh, empty ``dp_accounting`` accountant of the given kind."""
    if kind == "rdp":
        return rdp.RdpAccountant()
    if kind == "pld":
        return pld.PLDAccountant()
    raise ValueError(f"unknown accountant {kind!r}; choose one of {', '.join(ACCOUNTANTS)}")


def _check_rate(rate: float) -> None:
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"sampling rate must lie in (0, 1], got {rate}")


def gaussian_round_event(noise_multiplier: float, sampling_rate: float = 1.0) -> Any:
    """One round or step: the Gaussian mechanism, Poisson-subsampled when ``rate < 1``.

    ``noise_multiplier`` is the noise standard deviation divided by the L2
    sensitivity (the clip norm).
    """
    if noise_multiplier < 0:
        raise ValueError(f"noise multiplier must be >= 0, got {noise_multiplier}")
    _check_rate(sampling_rate)
    event = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
    return event


def repeated_event(noise_multiplier: float, count: int, sampling_rate: float = 1.0) -> Any:
    """``count`` rounds (or steps) of :func:`gaussian_round_event`, composed."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return dp_accounting.SelfComposedDpEvent(
        gaussian_round_event(noise_multiplier, sampling_rate), count
    )


def epsilon_of(event: Any, delta: float, accountant: AccountantKind = "rdp") -> float:
    """Epsilon at ``delta`` of ``event`` alone, from a fresh accountant."""
    _check_delta(delta)
    return float(make_accountant(accountant).compose(event).get_epsilon(delta))


def fedavg_epsilon(
    noise_multiplier: float,
    rounds: int,
    delta: float,
    participation_rate: float = 1.0,
    accountant: AccountantKind = "rdp",
) -> float:
    """Client-level (epsilon, delta) of ``rounds`` DP-FedAvg rounds; returns epsilon.

    ``participation_rate`` 1.0 means every participant joins every round (no
    amplification by sampling); below 1, each participant joins each round
    independently with that probability (Poisson sampling, which the
    coordinator must then really do).
    """
    return epsilon_of(
        repeated_event(noise_multiplier, rounds, participation_rate), delta, accountant
    )


def dpsgd_epsilon(
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    accountant: AccountantKind = "rdp",
) -> float:
    """Row-level epsilon of ``steps`` DP-SGD steps with Poisson sampling at ``batch / rows``."""
    return epsilon_of(repeated_event(noise_multiplier, steps, sampling_rate), delta, accountant)


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    rounds_or_steps: int,
    sampling_rate: float = 1.0,
    accountant: AccountantKind = "rdp",
) -> float:
    """Smallest noise multiplier (to ``dp_accounting``'s tolerance, 1e-6) whose
    ``rounds_or_steps`` compositions stay within ``(target_epsilon, delta)``.

    Invariant: the epsilon of the returned multiplier is at most
    ``target_epsilon`` (``dp_accounting.calibrate_dp_mechanism`` guarantees a
    non-positive gap).
    """
    if target_epsilon <= 0:
        raise ValueError(f"target epsilon must be > 0, got {target_epsilon}")
    if rounds_or_steps < 1:
        raise ValueError(f"rounds_or_steps must be >= 1, got {rounds_or_steps}")
    _check_delta(delta)
    _check_rate(sampling_rate)
    return float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: make_accountant(accountant),
            lambda z: repeated_event(z, rounds_or_steps, sampling_rate),
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

    def __init__(self, epsilon: float, delta: float, accountant: AccountantKind = "rdp") -> None:
        if epsilon <= 0:
            raise ValueError(f"epsilon budget must be > 0, got {epsilon}")
        _check_delta(delta)
        self.epsilon = float(epsilon)
        self.delta = float(delta)
        self.kind: AccountantKind = accountant
        self._accountant = make_accountant(accountant)
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
        if not self._accountant.supports(event):
            raise ValueError(f"the {self.kind} accountant cannot account for {event!r}")
        trial = copy.deepcopy(self._accountant)
        trial.compose(event)
        return float(trial.get_epsilon(self.delta))

    def spend(self, event: Any) -> Spend:
        """Spend ``event`` if it fits; otherwise raise :class:`BudgetExceeded`."""
        if not self._accountant.supports(event):
            raise ValueError(f"the {self.kind} accountant cannot account for {event!r}")
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

    def spend_round(self, noise_multiplier: float, participation_rate: float = 1.0) -> Spend:
        """Spend one DP-FedAvg round (see :func:`gaussian_round_event`)."""
        return self.spend(gaussian_round_event(noise_multiplier, participation_rate))

    def spend_steps(self, noise_multiplier: float, sampling_rate: float, steps: int = 1) -> Spend:
        """Spend ``steps`` DP-SGD steps as one entry of the history."""
        return self.spend(repeated_event(noise_multiplier, steps, sampling_rate))
