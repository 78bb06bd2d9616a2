"""Encrypted predictions equal the plaintext model (2 and 3 servers, MLP and CNN)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster

TOLERANCE = 1e-2


@pytest.fixture(params=[2, 3], ids=["2-servers", "3-servers"])
def local(request: pytest.FixtureRequest) -> LocalCluster:
    fixture = "local2" if request.param == 2 else "local3"
    result: LocalCluster = request.getfixturevalue(fixture)
    return result


def _check(local: LocalCluster, model: torch.nn.Module, x: torch.Tensor) -> None:
    with Cluster.from_config(local.config_path) as cluster:
        model_id = cluster.share_model(model, x[:1], name=type(model).__name__)
        encrypted = cluster.predict(model_id, x)
    with torch.no_grad():
        plain = model(x)
    assert encrypted.shape == plain.shape
    assert (encrypted - plain).abs().max().item() < TOLERANCE
    assert torch.equal(encrypted.argmax(1), plain.argmax(1))


def test_mlp_matches_plaintext(local: LocalCluster, mlp: torch.nn.Module, digits: Any) -> None:
    _check(local, mlp, digits.x_test[:32])


def test_cnn_matches_plaintext(local: LocalCluster, cnn: torch.nn.Module, digits: Any) -> None:
    _check(local, cnn, digits.x_test[:16].reshape(-1, 1, 8, 8))


def test_model_survives_in_registry_listing(cluster2: Cluster, mlp: torch.nn.Module) -> None:
    model_id = cluster2.share_model(mlp, torch.zeros(1, 64), name="listed")
    listing = {m.meta.model_id: m for m in cluster2.list_models()}
    assert listing[model_id].complete
    assert listing[model_id].meta.name == "listed"
    assert listing[model_id].meta.owner == "local-user"
    cluster2.delete_model(model_id)
    assert model_id not in {m.meta.model_id for m in cluster2.list_models()}
