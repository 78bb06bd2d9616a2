"""DP accounting agrees with dp_accounting itself, replace-one; the budget refuses overspending.

Every expected value is built here with dp_accounting's own API for the
mechanism the servers run: a sum of contributions clipped to C plus noise
z * C, neighbours differing by one replaced contribution (L2 sensitivity
2C), so ``GaussianDpEvent(z / 2)`` under ``REPLACE_ONE``; DP-SGD batches of
a fixed size drawn without replacement, ``SampledWithoutReplacementDpEvent``;
an RDP accountant over ppml's published orders (``RDP_ORDERS``).
"""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from ppml.training.privacy import (
    RDP_ORDERS,
    BudgetExceeded,
    FixedSizeSampling,
    PrivacyBudget,
    calibrate_noise_multiplier,
    dpsgd_epsilon,
    fedavg_epsilon,
    gaussian_round_event,
    sampled_step_event,
)

DELTA = 1e-5
REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE


def _rdp() -> rdp.RdpAccountant:
    return rdp.RdpAccountant(orders=list(RDP_ORDERS), neighboring_relation=REPLACE_ONE)


def _fedavg(z: float, rounds: int, delta: float = DELTA) -> float:
    """``rounds`` releases of a clipped sum, replace-one (sensitivity 2C), from dp_accounting."""
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z / 2), rounds)
    return float(_rdp().compose(event).get_epsilon(delta))


def _dpsgd(z: float, rows: int, batch: int, steps: int, delta: float = DELTA) -> float:
    """``steps`` steps on ``batch`` of ``rows`` rows sampled without replacement, replace-one."""
    step = dp_accounting.SampledWithoutReplacementDpEvent(
        rows, batch, dp_accounting.GaussianDpEvent(z / 2)
    )
    event = dp_accounting.SelfComposedDpEvent(step, steps)
    return float(_rdp().compose(event).get_epsilon(delta))


@pytest.mark.parametrize(("z", "rounds"), [(0.8, 10), (1.5, 50)])
def test_fedavg_epsilon_equals_dp_accounting_replace_one(z: float, rounds: int) -> None:
    assert fedavg_epsilon(z, rounds, DELTA) == _fedavg(z, rounds)


def test_the_issues_fedavg_example_z1_five_rounds_is_30() -> None:
    # add/remove with sensitivity C reported 12.3 for the same noise
    assert fedavg_epsilon(1.0, 5, 1e-5) == pytest.approx(30.13, abs=0.01)
    add_remove = rdp.RdpAccountant().compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.0), 5)
    )
    assert add_remove.get_epsilon(1e-5) == pytest.approx(12.30, abs=0.01)


def test_ppmls_orders_give_dp_accountings_default_epsilon_to_a_thousandth() -> None:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.SampledWithoutReplacementDpEvent(
            60_000, 256, dp_accounting.GaussianDpEvent(3.68 / 2)
        ),
        2350,
    )
    default = rdp.RdpAccountant(neighboring_relation=REPLACE_ONE).compose(event)
    ours = dpsgd_epsilon(3.68, FixedSizeSampling(60_000, 256), 2350, DELTA)
    assert default.get_epsilon(DELTA) <= ours <= 1.001 * default.get_epsilon(DELTA)


def test_halving_the_multiplier_matches_pld_s_own_replace_one_gaussian() -> None:
    """dp_accounting's PLD accountant doubles a Gaussian's sensitivity itself under
    REPLACE_ONE; RDP does not, hence z / 2. The two accountants then agree (PLD tighter)."""
    for z, rounds in [(1.0, 5), (2.0, 20)]:
        coarse = pld.PLDAccountant(REPLACE_ONE, value_discretization_interval=1e-3)
        tight = coarse.compose(
            dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), rounds)
        )
        ours = fedavg_epsilon(z, rounds, DELTA)
        assert 0.85 * ours <= tight.get_epsilon(DELTA) <= ours


@pytest.mark.parametrize(
    ("z", "rows", "batch", "steps"), [(1.1, 6000, 60, 500), (3.0, 1000, 100, 30), (2.0, 50, 64, 7)]
)
def test_dpsgd_epsilon_equals_dp_accounting_sampled_without_replacement(
    z: float, rows: int, batch: int, steps: int
) -> None:
    sampling = FixedSizeSampling(rows, batch)
    expected = (
        _dpsgd(z, rows, batch, steps) if batch < rows else _fedavg(z, steps)  # every row, each step
    )
    assert dpsgd_epsilon(z, sampling, steps, DELTA) == pytest.approx(expected, rel=1e-12)
    for count in (1, steps // 2):  # the cached per-step curve gives every step's epsilon
        assert dpsgd_epsilon(z, sampling, count, DELTA) == pytest.approx(
            _dpsgd(z, rows, batch, count) if batch < rows else _fedavg(z, count), rel=1e-12
        )
    assert dpsgd_epsilon(z, sampling, 0, DELTA) == 0.0


def test_sampled_step_event_is_the_documented_scheme() -> None:
    assert sampled_step_event(1.2, FixedSizeSampling(100, 10)) == (
        dp_accounting.SampledWithoutReplacementDpEvent(100, 10, dp_accounting.GaussianDpEvent(0.6))
    )
    assert sampled_step_event(1.2, FixedSizeSampling(10, 64)) == dp_accounting.GaussianDpEvent(0.6)
    assert gaussian_round_event(3.0) == dp_accounting.GaussianDpEvent(1.5)


def test_the_issues_dpsgd_example_old_multiplier_now_reports_its_real_cost() -> None:
    """60k rows, batch 256, 10 epochs: z = 1.158 was sold as epsilon 1 (Poisson, add/remove)."""
    sampling, steps = FixedSizeSampling(60_000, 256), 10 * 235
    old = dpsgd_epsilon(1.158, sampling, steps, DELTA)
    assert old == pytest.approx(_dpsgd(1.158, 60_000, 256, steps), rel=1e-12)
    assert old > 8  # measured 8.73


@pytest.mark.parametrize(("target", "count"), [(1.0, 20), (3.0, 100)])
def test_calibrated_fedavg_noise_meets_the_target_tightly(target: float, count: int) -> None:
    z = calibrate_noise_multiplier(target, DELTA, count)
    assert _fedavg(z, count) <= target < _fedavg(z * 0.99, count)  # not needlessly noisy


def test_calibrated_dpsgd_noise_meets_the_target_tightly() -> None:
    sampling = FixedSizeSampling(300, 50)
    z = calibrate_noise_multiplier(2.0, 1e-4, 6, sampling)
    assert _dpsgd(z, 300, 50, 6, 1e-4) <= 2.0 < _dpsgd(z * 0.99, 300, 50, 6, 1e-4)


@pytest.mark.parametrize(
    "call",
    [
        lambda: fedavg_epsilon(1.0, 10, 0.0),
        lambda: fedavg_epsilon(-1.0, 10, DELTA),
        lambda: calibrate_noise_multiplier(0.0, DELTA, 10),
        lambda: dpsgd_epsilon(1.0, FixedSizeSampling(10, 2), -1, DELTA),
        lambda: FixedSizeSampling(0, 2),
        lambda: FixedSizeSampling(10, 0),
    ],
)
def test_invalid_parameters_are_refused(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


def test_budget_tracks_the_accountant_round_by_round() -> None:
    budget = PrivacyBudget(30.0, DELTA)
    for rounds in range(1, 6):
        spend = budget.spend_round(2.4)
        assert spend.index == rounds - 1
        assert budget.epsilon_spent == pytest.approx(_fedavg(2.4, rounds), rel=1e-9)
    increments = [s.epsilon_increment for s in budget.history]
    assert sum(increments) == pytest.approx(budget.epsilon_spent)
    assert increments[0] > increments[-1] > 0  # composition is sub-additive
    assert budget.epsilon_remaining == pytest.approx(30.0 - budget.epsilon_spent)


def test_budget_refuses_a_round_that_would_overspend_and_spends_nothing() -> None:
    budget = PrivacyBudget(3.0, DELTA)
    accepted = 0
    with pytest.raises(BudgetExceeded, match="over the budget of 3"):
        for _ in range(1000):
            budget.spend_round(3.0)
            accepted += 1
    assert accepted >= 1
    before = (budget.epsilon_spent, budget.history)
    assert budget.epsilon_after(gaussian_round_event(3.0)) > 3.0
    with pytest.raises(BudgetExceeded):
        budget.spend_round(3.0)
    assert (budget.epsilon_spent, budget.history) == before
    assert budget.epsilon_spent <= 3.0
    assert budget.epsilon_spent == pytest.approx(_fedavg(3.0, accepted), rel=1e-9)
    budget.spend_round(100.0)  # a much noisier round may still fit
    assert budget.epsilon_spent <= 3.0


def test_budget_for_dpsgd_steps() -> None:
    budget = PrivacyBudget(50.0, DELTA)
    budget.spend_steps(2.0, FixedSizeSampling(1000, 10), steps=100)
    assert budget.epsilon_spent == pytest.approx(_dpsgd(2.0, 1000, 10, 100), rel=1e-9)
    step = sampled_step_event(2.0, FixedSizeSampling(1000, 10))
    assert budget.epsilon_after(step) >= budget.epsilon_spent
    assert len(budget.history) == 1
