"""Client-side FedAvg / FedProx pieces and the plaintext FedAvg loop."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from ppml.training.federated import (
    LocalResult,
    accuracy,
    fedavg_plaintext,
    flatten_params,
    local_update,
    parameter_count,
    unflatten_params,
    weighted_average,
)
from ppml.training.har import split_by_subject, synthetic_har
from ppml.training.privacy import dp_weighted_average


def _mlp(hidden: int = 16, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(561, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 6)
    )


def test_flatten_orders_float_state_by_name_and_round_trips() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
    )
    model(torch.randn(8, 3))  # move the batch-norm running statistics
    state = model.state_dict()
    names = sorted(n for n, t in state.items() if t.is_floating_point())
    assert "1.num_batches_tracked" not in names and "1.running_mean" in names
    expected = np.concatenate([state[n].double().reshape(-1).numpy() for n in names])
    flat = flatten_params(model)
    assert flat.dtype == np.float64 and np.array_equal(flat, expected)
    assert parameter_count(model) == flat.size == 3 * 4 + 4 + 4 * 4 + 4 * 2 + 2

    other = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
    )
    unflatten_params(other, flat)
    assert np.array_equal(flatten_params(other), flat)
    with pytest.raises(ValueError, match="vector has shape"):
        unflatten_params(other, flat[:-1])


def test_network_a_parameter_count() -> None:
    network_a = torch.nn.Sequential(
        torch.nn.Linear(784, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )
    assert parameter_count(network_a) == 118_282


def test_local_update_returns_a_delta_and_leaves_the_model_alone() -> None:
    data, _ = synthetic_har(300, seed=0)
    model = _mlp()
    before = flatten_params(model)
    result = local_update(model, data.features, data.labels, 2, 32, 0.05)
    assert isinstance(result, LocalResult) and result.num_samples == 300
    assert np.array_equal(flatten_params(model), before)
    assert result.delta.shape == before.shape and np.linalg.norm(result.delta) > 0
    assert 0 < result.mean_loss < np.log(6)  # below chance-level cross-entropy after training
    again = local_update(model, data.features, data.labels, 2, 32, 0.05)
    assert np.array_equal(again.delta, result.delta)  # same seed, same batches


def test_local_update_starts_from_given_global_params() -> None:
    data, _ = synthetic_har(100, seed=0)
    model, start = _mlp(seed=0), flatten_params(_mlp(seed=1))
    from_given = local_update(model, data.features, data.labels, 1, 20, 0.05, global_params=start)
    from_model = local_update(_mlp(seed=1), data.features, data.labels, 1, 20, 0.05)
    assert np.allclose(from_given.delta, from_model.delta)


def test_fedprox_pulls_local_weights_toward_the_global_ones() -> None:
    data, _ = synthetic_har(400, seed=1)
    model = _mlp()
    distances = [
        np.linalg.norm(local_update(model, data.features, data.labels, 3, 16, 0.1, mu=mu).delta)
        for mu in (0.0, 0.5, 5.0)
    ]
    assert distances[0] > distances[1] > distances[2] > 0


def test_weighted_average() -> None:
    updates = [np.array([1.0, 2.0]), np.array([3.0, 6.0])]
    assert weighted_average(updates, [1, 3]).tolist() == [2.5, 5.0]
    with pytest.raises(ValueError, match="differ in shape"):
        weighted_average([np.zeros(2), np.zeros(3)], [1, 1])
    with pytest.raises(ValueError):
        weighted_average(updates, [1])
    with pytest.raises(ValueError):
        weighted_average(updates, [0, 0])


def test_fedavg_on_four_subject_split_owners_reaches_good_accuracy() -> None:
    data, subjects = synthetic_har(2400, seed=0, subjects=range(1, 22))
    test, _ = synthetic_har(600, seed=1, subjects=range(22, 31))
    owners = [part for part, _ in split_by_subject(data, subjects, owners=4)]
    model = _mlp(32)
    initial = accuracy(model, test)
    trained, history = fedavg_plaintext(model, owners, 8, 1, 32, 0.02, test=test)
    assert [h.round for h in history] == list(range(1, 9))
    final = history[-1].accuracy
    assert final is not None and final > 0.8 and final > initial + 0.4
    assert accuracy(trained, test) == final
    assert history[-1].mean_loss < history[0].mean_loss
    assert np.array_equal(flatten_params(model), flatten_params(_mlp(32)))  # input untouched


def test_fedavg_with_a_pluggable_aggregate() -> None:
    """A noiseless, unclipped DP aggregation with unit weights equals the unweighted mean."""
    data, subjects = synthetic_har(600, seed=0)
    owners = [part for part, _ in split_by_subject(data, subjects, owners=3)]
    uniform = [part.rows for part in owners]

    def dp(results: Sequence[LocalResult]) -> np.ndarray:
        return dp_weighted_average([r.delta for r in results], [1.0] * len(results), 1e9, 0.0, 2)

    with_dp, _ = fedavg_plaintext(_mlp(), owners, 2, 1, 32, 0.05, aggregate=dp)
    plain_mean, _ = fedavg_plaintext(
        _mlp(),
        owners,
        2,
        1,
        32,
        0.05,
        aggregate=lambda rs: weighted_average([r.delta for r in rs], [1.0] * len(rs)),
    )
    weighted, _ = fedavg_plaintext(_mlp(), owners, 2, 1, 32, 0.05)
    assert np.allclose(flatten_params(with_dp), flatten_params(plain_mean), atol=1e-6)
    assert len(set(uniform)) > 1  # so sample weighting really differs from the plain mean
    assert not np.allclose(flatten_params(weighted), flatten_params(plain_mean), atol=1e-6)
