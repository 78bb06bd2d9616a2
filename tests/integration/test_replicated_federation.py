"""Federations and evaluations on three servers with no dealer (``engine = "replicated"``).

Real processes, TLS. The range check of each participant's secret weight
and the average run on the replicated engine
(``servers/mpc/rep3/service/aggregate.py``), as does an evaluation's
correct count (``servers/mpc/rep3/service/evaluation.py``); no CrypTen
operation that needs a dealer can run on this cluster. Three office
identities join from their own SDK connections, in threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from garbage_updates import submit_garbage_weight

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.client.errors import InvalidFederation
from ppml.client.federation import mpc_global_model
from ppml.proto.deploy.topology import load_config
from ppml.proto.domain import federations as fed

OFFICES = ("office-1", "office-2", "office-3")
SAMPLE = torch.zeros(1, 5)
ORDER = ("0.weight", "0.bias", "2.weight", "2.bias")  # torch's parameters() order
TOLERANCE = 2e-4  # fixed point: encodings and the division's two units (2^-15), per round


@pytest.fixture(scope="module")
def local(replicated: LocalCluster) -> LocalCluster:
    """The session's replicated cluster (tests/integration/conftest.py: its clients include
    every office named here)."""
    return replicated


@pytest.fixture(scope="module")
def owner(local: LocalCluster) -> Iterator[Cluster]:
    with Cluster.from_config(local.config_path) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def offices(local: LocalCluster) -> Iterator[dict[str, Cluster]]:
    clusters = {
        name: Cluster.from_config(local.config_path, token=local.token(name)) for name in OFFICES
    }
    yield clusters
    for cluster in clusters.values():
        cluster.close()


def _small_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # public: initial weights of a test model
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))


def _deltas(seed: int, shapes: dict[str, tuple[int, ...]], rounds: int) -> list[dict[str, Any]]:
    """The deltas ``_fixed(seed, ...)`` adds in each round, in the order it draws them."""
    rng = np.random.default_rng(seed)  # public: a test's fixed updates
    return [{n: rng.normal(0, 0.1, shapes[n]) for n in ORDER} for _ in range(rounds)]


def _fixed(seed: int, rows: int) -> Callable[..., Any]:
    """A train function: the global model plus the next fixed delta, with ``rows`` samples."""
    rng = np.random.default_rng(seed)

    def train(model: torch.nn.Module, round_no: int) -> tuple[torch.nn.Module, int, float]:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.from_numpy(rng.normal(0, 0.1, tuple(p.shape))).to(p.dtype))
        return model, rows, 0.25 * seed

    return train


def _join_all(
    offices: dict[str, Cluster], fid: str, trains: dict[str, Any], **kwargs: Any
) -> dict[str, Any]:
    reports: dict[str, Any] = {}

    def run(name: str) -> None:
        try:
            reports[name] = offices[name].join_federation(fid, trains[name], timeout=120, **kwargs)
        except Exception as exc:  # reported to the test
            reports[name] = exc

    threads = [threading.Thread(target=run, args=(name,)) for name in trains]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    return reports


def _max_error(after: dict[str, Any], expected: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(after[n].numpy() - v))) for n, v in expected.items())


def test_a_federation_runs_on_three_servers_with_no_dealer(
    local: LocalCluster, owner: Cluster, offices: dict[str, Cluster]
) -> None:
    config = load_config(local.config_path)
    assert not config.has_dealer and config.world_size == 3
    assert "dealer" not in local.processes
    assert "[dealer]" not in Path(local.config_path).read_text()
    handle = owner.create_federation(
        _small_model(0), OFFICES, rounds=2, round_deadline_s=60, sample_input=SAMPLE
    )
    global_model = mpc_global_model(owner, handle.federation_id)[1]
    shapes = {n: tuple(v.shape) for n, v in global_model.items()}
    rows = {OFFICES[0]: 10, OFFICES[1]: 30, OFFICES[2]: 60}
    seeds = {name: i + 1 for i, name in enumerate(OFFICES)}
    reports = _join_all(offices, handle.federation_id, {o: _fixed(seeds[o], rows[o]) for o in rows})
    assert all(not isinstance(r, Exception) for r in reports.values()), reports
    after = owner.export_model(handle.result(timeout=60)).weights
    deltas = {o: _deltas(seeds[o], shapes, 2) for o in rows}
    total = sum(rows.values())
    for r in range(2):  # the plaintext sample-weighted average of each round's updates
        global_model = {
            n: v + sum(rows[o] * deltas[o][r][n] for o in rows) / total
            for n, v in global_model.items()
        }
    assert _max_error(after, global_model) < TOLERANCE
    closed = handle.rounds()
    assert [c.applied for c in closed] == [True, True]
    assert all(set(c.participants) == set(OFFICES) and not c.dropped for c in closed)
    expected_loss = sum(rows[o] * 0.25 * seeds[o] for o in rows) / total
    assert closed[0].mean_loss == pytest.approx(expected_loss, abs=1e-3)
    assert handle.info().state is fed.FederationState.SUCCEEDED


def test_a_garbage_weight_is_dropped_and_the_others_average_applies(
    owner: Cluster, offices: dict[str, Cluster]
) -> None:
    handle = owner.create_federation(
        _small_model(4), OFFICES, rounds=1, min_participants=2, sample_input=SAMPLE
    )
    fid = handle.federation_id
    before = mpc_global_model(owner, fid)[1]
    shapes = {n: tuple(v.shape) for n, v in before.items()}
    submit_garbage_weight(offices[OFFICES[2]], fid, 1, {k: v * 50 for k, v in before.items()})
    rows = {OFFICES[0]: 7, OFFICES[1]: 21}
    seeds = {OFFICES[0]: 20, OFFICES[1]: 21}
    reports = _join_all(offices, fid, {o: _fixed(seeds[o], rows[o]) for o in rows})
    assert all(not isinstance(r, Exception) for r in reports.values()), reports
    after = owner.export_model(handle.result(timeout=60)).weights
    (closed,) = handle.rounds()
    assert closed.applied and set(closed.participants) == set(rows), closed
    assert closed.dropped == (OFFICES[2],)
    deltas = {o: _deltas(seeds[o], shapes, 1)[0] for o in rows}
    expected = {
        n: v + sum(rows[o] * deltas[o][n] for o in rows) / sum(rows.values())
        for n, v in before.items()
    }
    assert _max_error(after, expected) < TOLERANCE


def test_dp_federations_are_refused_naming_dp(owner: Cluster) -> None:
    before = len(owner.list_federations())
    with pytest.raises(InvalidFederation, match=r"DP.*replicated"):
        owner.create_federation(
            _small_model(5),
            OFFICES,
            rounds=1,
            dp=fed.DpSettings(clip_norm=1.0, noise_multiplier=1.0),
            sample_input=SAMPLE,
        )
    assert len(owner.list_federations()) == before


def test_a_ckks_federation_runs_too(owner: Cluster, offices: dict[str, Cluster]) -> None:
    """The CKKS back end needs no MPC on the servers: the leader sums the ciphertexts."""
    model = _small_model(6)
    before = {n: p.detach().numpy().astype(np.float64) for n, p in model.state_dict().items()}
    shapes = {n: tuple(v.shape) for n, v in before.items()}
    rows = {OFFICES[0]: 7, OFFICES[1]: 21}
    seeds = {OFFICES[0]: 30, OFFICES[1]: 31}
    handle = owner.create_federation(
        model, list(rows), rounds=1, backend="ckks", sample_input=SAMPLE
    )
    assert handle.keys is not None
    context = handle.keys.participant_context
    trains = {o: _fixed(seeds[o], rows[o]) for o in rows}
    reports = _join_all(offices, handle.federation_id, trains, ckks_context=context)
    assert all(not isinstance(r, Exception) for r in reports.values()), reports
    after = owner.export_model(handle.result(timeout=60)).weights
    deltas = {o: _deltas(seeds[o], shapes, 1)[0] for o in rows}
    expected = {
        n: v + sum(rows[o] * deltas[o][n] for o in rows) / sum(rows.values())
        for n, v in before.items()
    }
    assert _max_error(after, expected) < 1e-3


def _exact(model: torch.nn.Module) -> torch.nn.Module:
    """Weights exact in 16 fractional bits, so plaintext is the reference."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.round(p * 2**16) / 2**16)
    return model


def _near_ties(scores: torch.Tensor, margin: float = 1e-3) -> int:
    """Rows whose decision the fixed point's few units may flip (none in practice)."""
    if scores.shape[1] == 1:
        return int((scores.abs() < margin).sum())
    top2 = scores.topk(2, dim=1).values
    return int(((top2[:, 0] - top2[:, 1]) < margin).sum())


@pytest.mark.parametrize("classes", [3, 2])
def test_an_evaluation_counts_as_plaintext_and_reveals_only_the_count(
    owner: Cluster, classes: int
) -> None:
    """argmax (3 classes) and sign (one output, 2 classes), as the CrypTen path scores them."""
    generator = torch.Generator().manual_seed(classes)  # public: test data
    x = torch.round(torch.randn(300, 6, generator=generator) * 2**16) / 2**16
    teacher = torch.randn(6, 3, generator=generator)
    y = (x @ teacher).argmax(dim=1) % classes
    outputs = classes if classes > 2 else 1
    torch.manual_seed(classes)  # public: the model's initial weights
    model = _exact(
        torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, outputs))
    )
    data = owner.share_dataset(x, y, num_classes=classes, dataset_id=f"rep-eval-data-{classes}")
    model_id = owner.share_model(model, x[:1], model_id=f"rep-eval-model-{classes}")
    with torch.no_grad():
        scores = model.double()(x.double())
    predicted = scores.argmax(dim=1) if outputs > 1 else (scores[:, 0] > 0).long()
    expected = int((predicted == y).sum())
    result = owner.evaluate(model_id, data, timeout=60)
    assert result.rows == 300
    assert abs(result.correct - expected) <= _near_ties(scores)
    assert 0 < result.correct < 300  # a real count, not all or nothing
