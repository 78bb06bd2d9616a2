"""Binary cross-entropy and MSE training in MPC, and standardising wide-ranged features."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.model_selection import train_test_split
from tolerances import same_accuracy

from ppml.client import Cluster
from ppml.proto.domain.jobs import TrainingSpec
from ppml.training.plaintext import train_plaintext


def _split(data: Any) -> list[np.ndarray]:
    """Stratified 75/25 split of a scikit-learn bunch."""
    return list(
        train_test_split(
            data.data, data.target, test_size=0.25, random_state=0, stratify=data.target
        )
    )


def test_binary_cross_entropy_on_raw_breast_cancer_features(cluster2: Cluster) -> None:
    x_tr, x_te, y_tr, y_te = _split(load_breast_cancer())
    assert x_tr.var(0).max() > 1e5  # "area" features: the wide-range standardisation path
    train_id = cluster2.share_dataset(x_tr, y_tr, name="cancer-train")
    test_id = cluster2.share_dataset(x_te, y_te, name="cancer-test")
    torch.manual_seed(0)
    job = cluster2.train(
        torch.nn.Linear(30, 1),
        [train_id],
        epochs=2,
        batch_size=64,
        lr=0.1,
        momentum=0.9,
        loss="binary_cross_entropy",
        standardize=True,
        validation=test_id,
        reveal_metrics=True,
        seed=1,
    )
    model_id = job.result(timeout=300)
    accuracy = cluster2.evaluate(model_id, test_id).accuracy
    assert accuracy >= 0.9
    epochs = job.metrics()
    assert [e.epoch for e in epochs] == [1, 2]
    assert same_accuracy(epochs[-1].accuracy, accuracy, len(y_te))
    weights = cluster2.export_model(model_id).weights
    std = np.sqrt(x_tr.var(0) + 0.01)
    np.testing.assert_allclose(weights["0.scale"].numpy() * std, 1.0, rtol=0.05)
    logits = cluster2.predict(model_id, torch.tensor(x_te, dtype=torch.float32))
    assert same_accuracy(float(((logits[:, 0] > 0).numpy() == y_te).mean()), accuracy, len(y_te))


def test_mse_onto_one_hot_labels_matches_plaintext(cluster2: Cluster) -> None:
    x_tr, x_te, y_tr, y_te = _split(load_iris())
    train_id = cluster2.share_dataset(x_tr, y_tr, name="iris-mse")
    test_id = cluster2.share_dataset(x_te, y_te, name="iris-mse-test")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    hyper = {"epochs": 4, "batch_size": 16, "lr": 0.1, "momentum": 0.9}
    job = cluster2.train(model, [train_id], **hyper, loss="mse", standardize=True, seed=2)
    model_id = job.result(timeout=300)
    accuracy = cluster2.evaluate(model_id, test_id).accuracy
    spec = TrainingSpec((train_id,), loss="mse", standardize=True, seed=2, **hyper)
    plain = train_plaintext(model, x_tr, y_tr, spec, 3)
    with torch.no_grad():
        expected = float(
            (plain(torch.tensor(x_te, dtype=torch.float32)).argmax(1).numpy() == y_te).mean()
        )
    assert abs(accuracy - expected) <= 0.06, (accuracy, expected)
    assert accuracy >= 0.8
