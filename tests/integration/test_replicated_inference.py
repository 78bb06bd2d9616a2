"""Predictions on three servers with no dealer (``engine = "replicated"``), real processes, TLS.

The cluster has no dealer process and no [dealer] section; the servers'
sessions use the replicated engine (``ppml.servers.mpc.rep3``). Checks
against plaintext (edge values included), batching of concurrent clients, a
convolution, a model the engine cannot run (refused at upload, naming the
layer), and that no CrypTen operation that needs a dealer can run there.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ppml.client import Cluster, PredictionAborted, ServerUnavailable
from ppml.client.deploy.local import LocalCluster
from ppml.client.errors import InvalidModel, InvalidRequest
from ppml.proto.deploy.topology import load_config
from ppml.proto.domain.jobs import TrainingSpec
from ppml.training.datasets import Dataset, partition
from ppml.training.plaintext import train_plaintext

ULP = 2.0**-16
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def cluster(replicated: LocalCluster) -> Iterator[Cluster]:
    with Cluster.from_config(replicated.config_path) as sdk:
        yield sdk


def _exact(model: torch.nn.Module) -> torch.nn.Module:
    """Weights exact in 16 fractional bits, so plaintext is the reference."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.round(p * 2**16) / 2**16)
    return model.double().eval()


def _f32(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).float()


def test_the_cluster_runs_without_any_dealer(replicated: LocalCluster) -> None:
    config = load_config(replicated.config_path)
    assert not config.has_dealer and config.world_size == 3
    assert "dealer" not in replicated.processes
    assert "[dealer]" not in Path(replicated.config_path).read_text()


def test_mlp_predictions_match_plaintext_edges_included(cluster: Cluster) -> None:
    torch.manual_seed(5)
    model = _exact(
        torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
            torch.nn.Linear(16, 4),
        )
    )  # fmt: skip
    cluster.share_model(_f32(model), torch.zeros(1, 8), model_id="rep-mlp")
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=(6, 8)) * 2**16) / 2**16
    x[0] = 0.0
    x[1] = [ULP, -ULP, ULP, 0, -ULP, 0, ULP, -ULP]
    x[2] = 1000.0 * np.sign(rng.normal(size=8))
    x[3] = [-3000.0, 2500.0, 0, 0, 1.5, -1.5, ULP, 0]
    xt = torch.from_numpy(x)
    got = cluster.predict("rep-mlp", xt.float()).double()
    with torch.no_grad():
        plain = model(xt)
    assert got.shape == plain.shape
    assert (got - plain).abs().max().item() < TOLERANCE


def test_network_a_matches_plaintext(cluster: Cluster) -> None:
    """SecureML Network A (784-128-128-10, ReLU), the benchmarks' model shape."""
    torch.manual_seed(0)
    layers = (torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128))
    model = _exact(torch.nn.Sequential(*layers, torch.nn.ReLU(), torch.nn.Linear(128, 10)))
    cluster.share_model(_f32(model), torch.zeros(1, 784), model_id="rep-network-a")
    x = torch.rand(8, 784).double()
    got = cluster.predict("rep-network-a", x.float()).double()
    with torch.no_grad():
        assert (got - model(x)).abs().max().item() < 1e-2


def test_concurrent_clients_are_batched_and_each_gets_its_own_rows(cluster: Cluster) -> None:
    torch.manual_seed(6)
    model = _exact(
        torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))
    )
    cluster.share_model(_f32(model), torch.zeros(1, 6), model_id="rep-batch")
    inputs = [torch.randn(1 + i % 3, 6).double() for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda x: cluster.predict("rep-batch", x.float()), inputs))
    for x, got in zip(inputs, results, strict=True):
        with torch.no_grad():
            assert (got.double() - model(x)).abs().max().item() < TOLERANCE


def test_a_convolution_runs_on_the_replicated_engine(cluster: Cluster) -> None:
    torch.manual_seed(7)
    model = _exact(
        torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
            torch.nn.Linear(64, 10),
        )
    )  # fmt: skip
    cluster.share_model(_f32(model), torch.zeros(1, 1, 8, 8), model_id="rep-cnn")
    x = torch.rand(4, 1, 8, 8).double()
    got = cluster.predict("rep-cnn", x.float()).double()
    with torch.no_grad():
        assert (got - model(x)).abs().max().item() < TOLERANCE


def test_a_pooled_cnn_with_batchnorm_and_dropout_matches_plaintext(
    cluster: Cluster, cnn: torch.nn.Module, digits: Any
) -> None:
    """The integration suite's digits CNN: BatchNorm (folded), MaxPool, AvgPool, Dropout."""
    images = digits.x_test[:16].reshape(-1, 1, 8, 8)
    model_id = cluster.share_model(cnn, images[:1], name="rep-pooled-cnn")
    got = cluster.predict(model_id, images)
    with torch.no_grad():
        assert (got - cnn(images)).abs().max().item() < 1e-2


def test_a_model_the_engine_cannot_run_is_refused_naming_the_layer(cluster: Cluster) -> None:
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)).eval()
    with pytest.raises(InvalidModel, match=r"Affine.*replicated"):  # a BatchNorm kept as Affine
        cluster.share_model(model, torch.zeros(1, 4), model_id="rep-pool")
    assert "rep-pool" not in [m.meta.model_id for m in cluster.list_models()]
    # the cluster keeps serving
    torch.manual_seed(8)
    ok = _exact(torch.nn.Sequential(torch.nn.Linear(4, 2)))
    cluster.share_model(_f32(ok), torch.zeros(1, 4), model_id="rep-after")
    x = torch.rand(2, 4).double()
    with torch.no_grad():
        assert (cluster.predict("rep-after", x.float()).double() - ok(x)).abs().max() < TOLERANCE


def test_digits_from_three_owners_train_to_plaintext_accuracy(
    cluster: Cluster, digits: Any
) -> None:
    owners = partition(
        Dataset(digits.x_train.double().numpy(), digits.y_train.numpy(), 10, "digits"),
        3,
        "iid",
        seed=0,
    )
    ids = [
        cluster.share_dataset(o.features, o.labels, name=f"owner-{i}", num_classes=10)
        for i, o in enumerate(owners)
    ]
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    hyper = {"epochs": 2, "batch_size": 64, "lr": 0.5, "momentum": 0.5}
    test_id = cluster.share_dataset(digits.x_test, digits.y_test, name="rep-test", num_classes=10)
    job = cluster.train(
        model, ids, **hyper, seed=7, name="rep-digits", sample_input=digits.x_test[:1],
        validation=test_id, reveal_metrics=True,
    )  # fmt: skip
    model_id = job.result(timeout=240)
    assert job.status().state == "succeeded"
    epochs = job.metrics()
    assert [e.epoch for e in epochs] == [1, 2]
    assert epochs[1].loss < epochs[0].loss  # the owner's own reconstruction of the shares

    features = np.concatenate([o.features for o in owners])
    labels = np.concatenate([o.labels for o in owners])
    spec = TrainingSpec(tuple(ids), seed=7, **hyper)  # type: ignore[arg-type]
    plain = _accuracy(train_plaintext(model, features, labels, spec, 10), digits)
    served = float(
        (cluster.predict(model_id, digits.x_test).argmax(1) == digits.y_test).float().mean()
    )
    assert plain > 0.85
    assert abs(served - plain) <= 0.02, (served, plain)
    assert epochs[-1].accuracy == pytest.approx(served, abs=0.01)  # validation = the test set
    exported = cluster.export_model(model_id).to_torch()
    assert _accuracy(exported, digits) == pytest.approx(served, abs=0.01)


def _accuracy(model: torch.nn.Module, digits: Any) -> float:
    with torch.no_grad():
        return float((model(digits.x_test).argmax(1) == digits.y_test).float().mean())


def test_what_the_engine_cannot_do_yet_is_refused_clearly(cluster: Cluster) -> None:
    x = torch.rand(40, 4)
    y = torch.randint(0, 2, (40,))
    data = cluster.share_dataset(x, y, num_classes=2, dataset_id="rep-data")
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    before = len(cluster.list_jobs())
    with pytest.raises(InvalidRequest, match=r"DP-SGD.*replicated"):
        cluster.train(
            model, [data], epochs=1, batch_size=8, lr=0.1, sample_input=x[:1], dp_clip_norm=1.0,
            dp_noise_multiplier=1.0,
        )  # fmt: skip
    assert len(cluster.list_jobs()) == before
    # evaluations and federations run here: tests/integration/test_replicated_federation.py


def test_a_server_killed_mid_job_gives_clear_errors_then_the_cluster_serves_again(
    replicated: LocalCluster, cluster: Cluster
) -> None:
    """Last in the module: it kills and restarts server-2 (which masks truncations)."""
    torch.manual_seed(9)
    model = _exact(
        torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
            torch.nn.Linear(512, 10),
        )
    )  # fmt: skip
    cluster.share_model(_f32(model), torch.zeros(1, 1, 8, 8), model_id="rep-survivor")
    big = torch.randn(2048, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    outcome: dict[str, Any] = {}

    def request() -> None:
        started = time.monotonic()
        try:
            cluster.predict("rep-survivor", big, timeout=60)
            outcome["result"] = "answered"
        except Exception as exc:  # recorded and asserted below
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=request)
    with Cluster.from_config(replicated.config_path) as monitor:
        thread.start()
        deadline = time.monotonic() + 60
        while monitor.status()[2].running_job != "predict" and not outcome:
            assert time.monotonic() < deadline, "the prediction's MPC job never ran"
            time.sleep(0.02)
    assert not outcome, f"the request ended before the kill: {outcome}"
    replicated.kill("server-2")
    thread.join(30)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), ServerUnavailable | PredictionAborted), outcome
    assert outcome["elapsed"] < 30
    with pytest.raises((ServerUnavailable, PredictionAborted)):
        cluster.predict("rep-survivor", big[:2], timeout=10)  # two servers alone cannot answer
    replicated.start_server(2)
    replicated.wait_serving(timeout=120)
    small = big[:4].double()
    with torch.no_grad():
        expected = model(small)
    deadline = time.monotonic() + 60
    while True:  # the restarted server rejoins the next epoch
        try:
            got = cluster.predict("rep-survivor", small.float(), timeout=20).double()
            break
        except (ServerUnavailable, PredictionAborted):
            assert time.monotonic() < deadline, "the cluster did not serve again"
            time.sleep(0.5)
    assert (got - expected).abs().max().item() < TOLERANCE
