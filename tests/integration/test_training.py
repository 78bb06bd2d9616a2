"""Secret-shared training with real server processes, TLS and CrypTen MPC (dealer on)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split
from tolerances import same_accuracy

from ppml.client import Cluster, PermissionDenied
from ppml.client.deploy.local import LocalCluster
from ppml.client.training_job import Progress
from ppml.proto.domain.jobs import TrainingSpec
from ppml.training.datasets import Dataset, partition
from ppml.training.plaintext import train_plaintext


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def test_digits_from_four_owners_matches_plaintext_training(cluster2: Cluster, digits: Any) -> None:
    owners = partition(
        Dataset(digits.x_train.double().numpy(), digits.y_train.numpy(), 10, "digits"),
        4,
        "label_skew",
        alpha=0.5,
        seed=0,
    )
    shares_of_class = np.array([np.bincount(o.labels, minlength=10) / o.rows for o in owners])
    assert shares_of_class.max() > 0.25  # non-IID: some owner is dominated by a few classes
    ids = [
        cluster2.share_dataset(o.features, o.labels, name=f"office-{i}", num_classes=10)
        for i, o in enumerate(owners)
    ]
    test_id = cluster2.share_dataset(digits.x_test, digits.y_test, name="digits-test")
    model = _mlp(3)
    hyper = {"epochs": 3, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
    job = cluster2.train(
        model, ids, **hyper, validation=test_id, reveal_metrics=True, seed=7, name="digits-mlp"
    )
    events: list[Progress] = list(job.progress())
    model_id = job.result(timeout=60)

    # progress: in order, every step once, metrics at each epoch's end, then success
    assert [e.index for e in events] == list(range(len(events)))
    steps = [e.steps_done for e in events if e.state == "running" and e.batch]
    assert steps == list(range(1, events[-1].steps_total + 1))
    assert events[-1].state == "succeeded"
    epoch_ends = [e for e in events if e.loss is not None]
    assert [e.epoch for e in epoch_ends] == [1, 2, 3]
    assert epoch_ends[-1].loss < epoch_ends[0].loss
    assert job.metrics()[-1].accuracy == pytest.approx(epoch_ends[-1].accuracy)

    # the same architecture, initial weights, batch order and hyper-parameters in plaintext
    features = np.concatenate([o.features for o in owners])
    labels = np.concatenate([o.labels for o in owners])
    spec = TrainingSpec(tuple(ids), seed=7, **hyper)
    plain = _accuracy(
        train_plaintext(model, features, labels, spec, 10), digits.x_test, digits.y_test
    )
    evaluation = cluster2.evaluate(model_id, test_id)
    assert evaluation.rows == len(digits.y_test)
    assert abs(evaluation.accuracy - plain) <= 0.03, (evaluation.accuracy, plain)
    assert evaluation.accuracy > 0.85
    assert same_accuracy(epoch_ends[-1].accuracy, evaluation.accuracy, evaluation.rows)

    # the trained model is served at once, and its owner can take the weights home
    predicted = cluster2.predict(model_id, digits.x_test).argmax(1)
    assert float((predicted == digits.y_test).float().mean()) == pytest.approx(
        evaluation.accuracy, abs=0.01
    )
    exported = cluster2.export_model(model_id).to_torch()
    assert _accuracy(exported, digits.x_test, digits.y_test) == pytest.approx(
        evaluation.accuracy, abs=0.01
    )
    listed = {j.job_id: j for j in cluster2.list_jobs()}
    assert listed[job.job_id].state.value == "succeeded"
    assert listed[job.job_id].spec.reveal_metrics


def test_iris_on_three_servers_with_secret_standardisation(local3: LocalCluster) -> None:
    data = load_iris()
    x_tr, x_te, y_tr, y_te = train_test_split(
        data.data, data.target, test_size=0.2, random_state=0, stratify=data.target
    )
    with Cluster.from_config(local3.config_path) as cluster:
        train_id = cluster.share_dataset(x_tr, y_tr, name="iris-train")
        test_id = cluster.share_dataset(x_te, y_te, name="iris-test")
        torch.manual_seed(0)
        job = cluster.train(
            torch.nn.Linear(4, 3),
            [train_id],
            epochs=10,
            batch_size=32,
            lr=0.3,
            momentum=0.9,
            standardize=True,
            seed=0,
        )
        model_id = job.result(timeout=300)
        accuracy = cluster.evaluate(model_id, test_id).accuracy
        assert accuracy >= 0.9
        # raw features go in: the model starts with the secret standardising layer
        weights = cluster.export_model(model_id).weights
        std = np.sqrt(x_tr.var(0) + 0.01)
        np.testing.assert_allclose(weights["0.scale"].numpy(), 1 / std, rtol=0.03)
        np.testing.assert_allclose(weights["0.shift"].numpy(), -x_tr.mean(0) / std, atol=0.05)
        predicted = cluster.predict(model_id, torch.tensor(x_te, dtype=torch.float32)).argmax(1)
        assert float((predicted.numpy() == y_te).mean()) == pytest.approx(accuracy, abs=0.04)


def test_predictions_are_answered_during_training_and_cancel_stops_every_party(
    cluster2: Cluster, digits: Any, mlp: torch.nn.Module
) -> None:
    served = cluster2.share_model(mlp, digits.x_test[:1], name="served-while-training")
    data_id = cluster2.share_dataset(digits.x_train, digits.y_train, name="digits-long")
    job = cluster2.train(_mlp(5), [data_id], epochs=100, batch_size=64, lr=0.05)
    events: list[Progress] = []
    watcher = threading.Thread(target=lambda: events.extend(job.progress()))
    watcher.start()
    deadline = time.monotonic() + 60
    while job.status().info.steps_done < 2:
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)

    before = job.status().info.steps_done
    out = cluster2.predict(served, digits.x_test[:4])
    with torch.no_grad():
        assert (out - mlp(digits.x_test[:4])).abs().max().item() < 1e-2
    during = job.status()  # answered between two steps of a job that was still running
    assert during.state == "running" and before <= during.info.steps_done
    assert during.info.steps_done < during.info.steps_total

    final = job.cancel()
    assert set(final.states.values()) == {"cancelled"}, final.states
    stopped_at = final.info.steps_done
    # every party runs jobs in the leader's order: once a prediction sequenced after the
    # cancel is answered, any step that could still have been queued has run or never will
    cluster2.predict(served, digits.x_test[:1])
    assert job.status().info.steps_done == stopped_at
    watcher.join(30)
    assert events and events[-1].state == "cancelled"
    assert "cancelled by" in events[-1].reason
    with pytest.raises(Exception, match="cancelled"):
        job.result(timeout=5)
    assert cluster2.predict(served, digits.x_test[:1]).shape == (1, 10)  # still serving


def test_only_the_owner_may_export_cancel_or_use_private_data(
    cluster2: Cluster, local2: LocalCluster, digits: Any
) -> None:
    private = cluster2.share_dataset(
        digits.x_train[:200], digits.y_train[:200], name="private", allow=()
    )
    job = cluster2.train(_mlp(1), [private], epochs=1, batch_size=100, lr=0.1)
    model_id = job.result(timeout=120)
    token = (Path(local2.config_path).parent / "secrets" / "analyst.token").read_text().strip()
    with Cluster.from_config(local2.config_path, token=token) as analyst:
        with pytest.raises(PermissionDenied) as denied:
            analyst.export_model(model_id)
        assert "PERMISSION_DENIED" in str(denied.value)
        with pytest.raises(PermissionDenied):
            analyst.train(_mlp(1), [private], epochs=1, batch_size=100, lr=0.1)
        with pytest.raises(PermissionDenied):
            analyst.evaluate(model_id, private)
        with pytest.raises(PermissionDenied):
            analyst.delete_dataset(private)
        with pytest.raises(PermissionDenied):  # serving needs the owner's grant
            analyst.predict(model_id, digits.x_test[:1])
        cluster2.grant_model(model_id, "analyst")
        assert analyst.predict(model_id, digits.x_test[:1]).shape == (1, 10)
    assert set(cluster2.export_model(model_id).weights) == {
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    }
