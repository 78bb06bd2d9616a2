"""k-ary randomised response keeps epsilon; its frequency estimator is unbiased."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ppml.training.privacy import (
    SecureRandom,
    estimate_frequencies,
    keep_probability,
    randomized_response,
)

ACTIVITIES = ["walk", "up", "down", "sit", "stand", "lay"]


@pytest.mark.parametrize("epsilon", [0.1, 1.0, 3.0])
@pytest.mark.parametrize("k", [2, 6, 20])
def test_keep_probability_formula(epsilon: float, k: int) -> None:
    p = keep_probability(epsilon, k)
    q = (1 - p) / (k - 1)
    assert p == pytest.approx(math.exp(epsilon) / (math.exp(epsilon) + k - 1))
    assert p / q == pytest.approx(math.exp(epsilon))


@pytest.mark.parametrize("epsilon", [0.5, 2.0])
def test_empirical_keep_and_switch_rates_give_epsilon(epsilon: float) -> None:
    n, k = 120_000, len(ACTIVITIES)
    truth = np.asarray(ACTIVITIES)[np.arange(n) % k]
    reports = randomized_response(truth, epsilon, ACTIVITIES)
    p = keep_probability(epsilon, k)
    kept = float(np.mean(reports == truth))
    assert kept == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / n))
    # given true "walk", every other category is equally likely, at q each
    walk = reports[truth == "walk"]
    q = (1 - p) / (k - 1)
    others = np.array([np.mean(walk == c) for c in ACTIVITIES[1:]])
    assert np.all(np.abs(others - q) < 5 * math.sqrt(q * (1 - q) / walk.size))
    assert kept / others.mean() == pytest.approx(math.exp(epsilon), rel=0.08)


@pytest.mark.parametrize("epsilon", [0.5, 1.5])
def test_frequency_estimator_is_unbiased(epsilon: float) -> None:
    n, k = 100_000, len(ACTIVITIES)
    true_freq = np.array([0.4, 0.25, 0.15, 0.1, 0.07, 0.03])
    truth = np.repeat(ACTIVITIES, (true_freq * n).astype(int))
    estimates = estimate_frequencies(
        randomized_response(truth, epsilon, ACTIVITIES), epsilon, ACTIVITIES
    )
    p = keep_probability(epsilon, k)
    q = (1 - p) / (k - 1)
    std = math.sqrt(0.25 / n) / (p - q)  # bound on each estimate's standard deviation
    assert np.all(np.abs(estimates - true_freq) < 5 * std)
    assert estimates.sum() == pytest.approx(1.0)
    # and the raw report frequencies are biased toward uniform
    raw = np.array(
        [np.mean(randomized_response(truth, epsilon, ACTIVITIES) == a) for a in ACTIVITIES]
    )
    assert raw[0] < true_freq[0] - 5 * std


def test_keeps_shape_and_dtype_of_integer_codes() -> None:
    column = np.arange(12).reshape(3, 4) % 3
    out = randomized_response(column, 1.0, [0, 1, 2])
    assert out.shape == (3, 4) and np.issubdtype(out.dtype, np.integer)
    assert set(np.unique(out)) <= {0, 1, 2}


def test_unknown_values_and_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="'run'"):
        randomized_response(["walk", "run"], 1.0, ACTIVITIES)
    with pytest.raises(ValueError):
        randomized_response(["a"], 0.0, ["a", "b"])
    with pytest.raises(ValueError):
        randomized_response(["a"], 1.0, ["a"])
    with pytest.raises(ValueError, match="distinct"):
        randomized_response(["a"], 1.0, ["a", "a"])


def test_predictable_generators_are_refused() -> None:
    with pytest.raises(TypeError, match="SecureRandom"):
        randomized_response(["a"], 1.0, ["a", "b"], rng=np.random.default_rng(0))  # type: ignore[arg-type]
    assert randomized_response(["a"], 1.0, ["a", "b"], rng=SecureRandom()).shape == (1,)
