"""Fixtures for integration tests: real server processes on free ports, TLS on."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.training.resnet import digits_resnet
from ppml.training.transformer import digits_transformer


@dataclass(frozen=True)
class Digits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    # the servers run in other processes on the same 2 cores
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> Digits:
    data = load_digits()
    x = (data.data / 16.0 - 0.5).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=0.2, random_state=0)
    return Digits(
        torch.from_numpy(x_tr),
        torch.from_numpy(y_tr),
        torch.from_numpy(x_te),
        torch.from_numpy(y_te),
    )


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(steps):
        index = torch.randint(0, len(x), (128,), generator=torch.Generator().manual_seed(step))
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x[index]), y[index]).backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="session")
def mlp(digits: Digits) -> torch.nn.Module:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    return _train(model, digits.x_train, digits.y_train, 300)


@pytest.fixture(scope="session")
def cnn(digits: Digits) -> torch.nn.Module:
    torch.manual_seed(2)
    body = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(16 * 2 * 2, 10),
    )
    images = digits.x_train.reshape(-1, 1, 8, 8)
    return _train(body, images, digits.y_train, 300)


@pytest.fixture(scope="session")
def resnet(digits: Digits) -> torch.nn.Module:
    """training/resnet.py's digits ResNet (2 residual blocks, one with a 1x1 shortcut), trained."""
    torch.manual_seed(4)
    images = digits.x_train.reshape(-1, 1, 8, 8)
    return _train(digits_resnet(), images, digits.y_train, 300)


@pytest.fixture(scope="session")
def transformer(digits: Digits) -> torch.nn.Module:
    """training/transformer.py's digits transformer (8 tokens of 8 features, 1 layer), trained."""
    torch.manual_seed(5)
    tokens = digits.x_train.reshape(-1, 8, 8)
    return _train(digits_transformer(), tokens, digits.y_train, 300)


def _start(tmp: Path, parties: int, **serving: float) -> LocalCluster:
    return LocalCluster(parties=parties, directory=tmp, serving=serving or None).start()


@pytest.fixture(scope="session")
def local2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = _start(tmp_path_factory.mktemp("cluster2"), 2, max_wait_ms=5)
    yield local
    local.stop()


@pytest.fixture(scope="session")
def cluster2(local2: LocalCluster) -> Iterator[Cluster]:
    with Cluster.from_config(local2.config_path) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def local3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = _start(tmp_path_factory.mktemp("cluster3"), 3)
    yield local
    local.stop()


# Three servers and no dealer (engine = "replicated"): one cluster for the replicated modules,
# with client tokens for their federation offices. A module that kills or swaps a server
# puts it back before it ends.
REPLICATED_OFFICES = ("office-1", "office-2", "office-3")


@pytest.fixture(scope="session")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    directory = tmp_path_factory.mktemp("replicated")
    with LocalCluster(
        parties=3,
        directory=directory,
        engine="replicated",
        serving={"max_wait_ms": 5},
        clients=REPLICATED_OFFICES,
    ) as local:
        yield local


# Federation tests: a module names its offices (some of ``FEDERATION_OFFICES``) in a
# module-level ``OFFICES`` tuple and uses ``local``, ``owner`` and ``offices`` (a module
# defining its own ``local`` keeps it). Their federations are their own (ids, invitations),
# so the modules share one cluster.
FEDERATION_OFFICES = ("office-1", "office-2", "office-3", "office-4")


@pytest.fixture(scope="session")
def _federation_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    directory = tmp_path_factory.mktemp("federations")
    with LocalCluster(parties=2, directory=directory, clients=FEDERATION_OFFICES) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def local(request: pytest.FixtureRequest, _federation_cluster: LocalCluster) -> LocalCluster:
    """2 servers + dealer, with a client token per name in the module's ``OFFICES``."""
    unknown = set(request.module.OFFICES) - set(FEDERATION_OFFICES)
    assert not unknown, f"add {sorted(unknown)} to FEDERATION_OFFICES"
    return _federation_cluster


@pytest.fixture(scope="module")
def owner(local: LocalCluster) -> Iterator[Cluster]:
    """The SDK of the cluster's own client identity (the federations' owner)."""
    with Cluster.from_config(local.config_path) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def offices(request: pytest.FixtureRequest, local: LocalCluster) -> Iterator[dict[str, Cluster]]:
    """One SDK per office, each with its own token."""
    clusters = {
        name: Cluster.from_config(local.config_path, token=local.token(name))
        for name in request.module.OFFICES
    }
    yield clusters
    for cluster in clusters.values():
        cluster.close()
