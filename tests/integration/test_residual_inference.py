"""Residual networks served between real processes (TLS, SDK): models as graphs.

The digits ResNet (``training/resnet.py``: a stem, a block with an identity
skip, a block with a 1x1 stride-2 shortcut convolution, global average pool)
is trained here in plaintext, secret-shared through the SDK and served on 2
servers (the fast engine, its material fetched from the dealer in several
replies) and on 3 servers (CrypTen), where it is also evaluated on a shared
data set. Over the whole held-out set, encrypted predictions
must match the plaintext argmax on at least 99.5 % of the images and the
logits must stay within 1e-2. Training, federating, and the replicated engine
refuse a graph by name; the owner's export rebuilds the graph in torch.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.client.errors import InvalidModel, InvalidRequest

LOGIT_TOLERANCE = 1e-2


def _check_served(cluster: Cluster, model_id: str, model: torch.nn.Module, digits: Any) -> None:
    x = digits.x_test.reshape(-1, 1, 8, 8)
    got = cluster.predict(model_id, x).double()
    with torch.no_grad():
        plain = model.eval()(x).double()
    agree = float((got.argmax(1) == plain.argmax(1)).float().mean())
    assert agree >= 0.995, agree
    assert (got - plain).abs().max().item() < LOGIT_TOLERANCE, (got - plain).abs().max().item()
    assert float((plain.argmax(1) == digits.y_test).float().mean()) > 0.9  # a real model


def test_a_resnet_is_served_on_two_servers(
    cluster2: Cluster, resnet: torch.nn.Module, digits: Any
) -> None:
    x = digits.x_test[:1].reshape(-1, 1, 8, 8)
    model_id = cluster2.share_model(resnet, x, name="digits-resnet")
    info = cluster2.get_model(model_id)
    assert not info.architecture.is_chain
    assert [type(layer).__name__ for layer in info.architecture.layers].count("Add") == 2
    before = [r.fast_pool.hits + r.fast_pool.misses for r in cluster2.status()]
    _check_served(cluster2, model_id, resnet, digits)  # 360 images: more than one dealer reply
    after = [r.fast_pool.hits + r.fast_pool.misses for r in cluster2.status()]
    assert after == [b + 1 for b in before]  # one job, on the fast engine
    exported = cluster2.export_model(model_id).to_torch()
    with torch.no_grad():
        assert torch.allclose(exported(x), resnet(x), atol=1e-3)


def test_a_resnet_is_served_on_three_servers(
    local3: LocalCluster, resnet: torch.nn.Module, digits: Any
) -> None:
    with Cluster.from_config(local3.config_path) as cluster:
        model_id = cluster.share_model(resnet, digits.x_test[:1].reshape(-1, 1, 8, 8))
        _check_served(cluster, model_id, resnet, digits)
        data = cluster.share_dataset(digits.x_test, digits.y_test, num_classes=10)
        result = cluster.evaluate(model_id, data, timeout=120)
    with torch.no_grad():
        scores = resnet(digits.x_test.reshape(-1, 1, 8, 8))
    top2 = scores.topk(2, dim=1).values
    near_ties = int(((top2[:, 0] - top2[:, 1]) < LOGIT_TOLERANCE).sum())
    expected = int((scores.argmax(1) == digits.y_test).sum())
    assert result.rows == len(digits.y_test)
    assert abs(result.correct - expected) <= near_ties, (result.correct, expected)


def test_training_a_graph_is_refused_by_name(cluster2: Cluster, resnet: torch.nn.Module) -> None:
    x = torch.rand(16, 64)
    data = cluster2.share_dataset(x, torch.randint(0, 10, (16,)), num_classes=10)
    before = len(cluster2.list_jobs())
    with pytest.raises(InvalidRequest, match=r"residual connections.*not trained"):
        cluster2.train(
            resnet, [data], epochs=1, batch_size=8, lr=0.1, sample_input=x[:1].reshape(1, 1, 8, 8)
        )
    assert len(cluster2.list_jobs()) == before


def test_the_replicated_engine_refuses_a_graph_by_layer(
    replicated: LocalCluster, resnet: torch.nn.Module
) -> None:
    with Cluster.from_config(replicated.config_path) as cluster:
        before = len(cluster.list_models())
        with pytest.raises(InvalidModel, match=r"\(Add\).*replicated"):
            cluster.share_model(resnet, torch.zeros(1, 1, 8, 8))
        assert len(cluster.list_models()) == before
