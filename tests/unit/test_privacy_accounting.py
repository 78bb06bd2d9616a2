"""DP accounting wrappers agree with dp_accounting itself; the budget refuses overspending."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from ppml.training.privacy import (
    BudgetExceeded,
    PrivacyBudget,
    calibrate_noise_multiplier,
    dpsgd_epsilon,
    fedavg_epsilon,
    gaussian_round_event,
)

DELTA = 1e-5


def _direct(accountant: str, z: float, count: int, q: float = 1.0) -> float:
    """The same release, built and accounted with dp_accounting only."""
    event = dp_accounting.GaussianDpEvent(z)
    if q < 1:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    acc = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    return float(acc.compose(dp_accounting.SelfComposedDpEvent(event, count)).get_epsilon(DELTA))


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize(("z", "rounds"), [(0.8, 10), (1.5, 50)])
def test_fedavg_epsilon_equals_dp_accounting(accountant: str, z: float, rounds: int) -> None:
    got = fedavg_epsilon(z, rounds, DELTA, accountant=accountant)  # type: ignore[arg-type]
    assert got == _direct(accountant, z, rounds)


def test_fedavg_with_participation_rate_is_poisson_subsampled() -> None:
    assert fedavg_epsilon(1.0, 40, DELTA, participation_rate=0.2) == _direct("rdp", 1.0, 40, 0.2)
    assert fedavg_epsilon(1.0, 40, DELTA, 0.2) < fedavg_epsilon(1.0, 40, DELTA)


def test_rdp_is_the_default_and_pld_is_no_looser() -> None:
    assert fedavg_epsilon(1.1, 30, DELTA) == fedavg_epsilon(1.1, 30, DELTA, accountant="rdp")
    assert fedavg_epsilon(1.1, 30, DELTA, accountant="pld") <= fedavg_epsilon(1.1, 30, DELTA)


def test_dpsgd_epsilon_equals_dp_accounting() -> None:
    rows, batch, steps = 6000, 60, 500
    got = dpsgd_epsilon(1.1, batch / rows, steps, DELTA)
    assert got == _direct("rdp", 1.1, steps, batch / rows)
    assert 0 < got < fedavg_epsilon(1.1, steps, DELTA)


@pytest.mark.parametrize(
    ("target", "count", "rate"), [(1.0, 20, 1.0), (3.0, 100, 1.0), (2.0, 300, 0.05)]
)
def test_calibrated_noise_meets_the_target_tightly(target: float, count: int, rate: float) -> None:
    z = calibrate_noise_multiplier(target, DELTA, count, rate)
    assert _direct("rdp", z, count, rate) <= target
    assert _direct("rdp", z * 0.99, count, rate) > target  # not needlessly noisy


def test_calibration_with_pld() -> None:
    z = calibrate_noise_multiplier(2.0, DELTA, 10, accountant="pld")
    assert _direct("pld", z, 10) <= 2.0 < _direct("pld", z * 0.99, 10)


@pytest.mark.parametrize(
    "call",
    [
        lambda: fedavg_epsilon(1.0, 10, 0.0),
        lambda: fedavg_epsilon(1.0, 10, DELTA, participation_rate=0.0),
        lambda: fedavg_epsilon(1.0, 10, DELTA, participation_rate=1.5),
        lambda: fedavg_epsilon(-1.0, 10, DELTA),
        lambda: calibrate_noise_multiplier(0.0, DELTA, 10),
        lambda: fedavg_epsilon(1.0, 10, DELTA, accountant="moments"),  # type: ignore[arg-type]
    ],
)
def test_invalid_parameters_are_refused(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


def test_budget_tracks_the_accountant_round_by_round() -> None:
    budget = PrivacyBudget(10.0, DELTA)
    for rounds in range(1, 6):
        spend = budget.spend_round(1.2)
        assert spend.index == rounds - 1
        assert budget.epsilon_spent == pytest.approx(_direct("rdp", 1.2, rounds), rel=1e-9)
    increments = [s.epsilon_increment for s in budget.history]
    assert sum(increments) == pytest.approx(budget.epsilon_spent)
    assert increments[0] > increments[-1] > 0  # composition is sub-additive
    assert budget.epsilon_remaining == pytest.approx(10.0 - budget.epsilon_spent)


def test_budget_refuses_a_round_that_would_overspend_and_spends_nothing() -> None:
    budget = PrivacyBudget(3.0, DELTA)
    accepted = 0
    with pytest.raises(BudgetExceeded, match="over the budget of 3"):
        for _ in range(1000):
            budget.spend_round(1.5)
            accepted += 1
    assert accepted >= 1
    before = (budget.epsilon_spent, budget.history)
    assert budget.epsilon_after(gaussian_round_event(1.5)) > 3.0
    with pytest.raises(BudgetExceeded):
        budget.spend_round(1.5)
    assert (budget.epsilon_spent, budget.history) == before
    assert budget.epsilon_spent <= 3.0
    assert budget.epsilon_spent == pytest.approx(_direct("rdp", 1.5, accepted), rel=1e-9)
    budget.spend_round(50.0)  # a much noisier round may still fit
    assert budget.epsilon_spent <= 3.0


def test_budget_for_dpsgd_steps_with_pld() -> None:
    budget = PrivacyBudget(5.0, DELTA, accountant="pld")
    budget.spend_steps(1.0, 0.01, steps=100)
    assert budget.epsilon_spent == pytest.approx(_direct("pld", 1.0, 100, 0.01), rel=1e-9)
    assert budget.epsilon_after(gaussian_round_event(1.0, 0.01)) >= budget.epsilon_spent
    assert len(budget.history) == 1
