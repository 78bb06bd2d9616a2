"""The participant's side of a federation, alone: checks before sending, merging, local SGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppml.client.errors import InvalidFederation
from ppml.client.federation import check_update, data_trainer, merge_round
from ppml.proto import shares
from ppml.proto.domain import federations as fed
from ppml.proto.domain.architecture import Architecture, Linear, ReLU


def test_non_finite_updates_and_empty_training_are_refused_before_sending() -> None:
    good = {"0.weight": np.zeros((2, 2))}
    check_update(good, 3, 0.5)
    with pytest.raises(InvalidFederation, match="NaN or infinite"):
        check_update({"0.weight": np.array([[0.0, np.inf]])}, 3, None)
    with pytest.raises(InvalidFederation, match="1 to 16777216 rows"):
        check_update(good, 0, None)
    with pytest.raises(InvalidFederation, match="1 to 16777216 rows"):  # servers would drop it
        check_update(good, fed.MAX_UPDATE_WEIGHT + 1, None)
    with pytest.raises(InvalidFederation, match="loss is not finite"):
        check_update(good, 3, float("nan"))


def test_round_loss_is_reconstructed_from_every_servers_share() -> None:
    loss = shares.share(shares.encode([12.5]), 2)  # sum of n_k * loss_k
    rows = shares.share(shares.encode([10.0]), 2)
    per_server = [
        fed.RoundResult(3, ("a", "b"), ("c",), True, 1.5, loss[k], rows[k]) for k in range(2)
    ]
    merged = merge_round(per_server)
    assert (merged.round, merged.participants, merged.dropped) == (3, ("a", "b"), ("c",))
    assert merged.mean_loss == pytest.approx(1.25, abs=1e-4)
    public = [r.public() for r in per_server]  # what a non-owner sees
    assert merge_round(public).mean_loss is None


def test_flat_layout_round_trips_in_name_order() -> None:
    arch = Architecture((Linear(3, 2, True), ReLU(), Linear(2, 1, True)), (3,), (1,))
    named = {
        n: np.arange(np.prod(s), dtype=float).reshape(s) for n, s in arch.parameter_shapes().items()
    }
    flat = fed.flatten(arch, named)
    assert flat.size == fed.parameter_count(arch) == 11
    back = fed.unflatten(arch, flat)
    assert all(np.array_equal(back[n], named[n]) for n in named)
    with pytest.raises(ValueError, match="parameters"):
        fed.unflatten(arch, flat[:-1])


def _spec(**changes: object) -> fed.FederationSpec:
    base = {"participants": ("a",), "rounds": 1, "local_epochs": 2, "batch_size": 8, "lr": 0.5}
    return fed.FederationSpec(**{**base, **changes})


def test_fedprox_pulls_the_local_model_toward_the_global_one() -> None:
    rng = np.random.default_rng(0)  # public: test data
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    torch.manual_seed(0)  # public: test model
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    start = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def moved(spec: fed.FederationSpec) -> float:
        trained, rows, loss = data_trainer(x, y, spec, 2)(model, 1)
        assert rows == 64 and loss is not None and np.isfinite(loss)
        end = torch.cat([p.detach().reshape(-1) for p in trained.parameters()])
        return float((end - start).norm())

    plain = moved(_spec())
    prox = moved(_spec(strategy="fedprox", mu=1.0))
    assert 0 < prox < plain
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in model.parameters()]), start)
