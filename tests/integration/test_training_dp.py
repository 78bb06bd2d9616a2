"""DP-SGD training jobs with real server processes (2 servers + the dealer, TLS).

A job with per-example clipping and noise learns an easy task, and the
epsilon it reports is dp_accounting's, computed here directly for the
sampling the servers use (fixed-size batches without replacement,
replace-one); no API response reveals the batches or a seed they could be
derived from; bad DP requests are refused before any MPC work with
INVALID_JOB.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import rdp
from google.protobuf.message import Message

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.client.errors import InvalidTrainingJob
from ppml.client.training_job import Progress
from ppml.training.privacy import RDP_ORDERS
from ppml.v1 import training_pb2


def _mlp(seed: int, inputs: int = 64) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(inputs, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )


def _rdp_epsilon(rows: int, batch: int, z: float, steps: int, delta: float) -> float:
    """The accountant's answer, straight from dp_accounting: each step ``batch`` of ``rows``
    rows without replacement; replace-one, so the clipped sum's sensitivity is 2C (z / 2)."""
    accountant = rdp.RdpAccountant(
        orders=list(RDP_ORDERS), neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        rows, batch, dp_accounting.GaussianDpEvent(z / 2)
    )
    accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))


def test_dp_sgd_job_learns_and_reports_the_accountants_epsilon(
    cluster2: Cluster, digits: Any
) -> None:
    rows = 1000
    train_id = cluster2.share_dataset(
        digits.x_train[:rows], digits.y_train[:rows], name="digits-dp", num_classes=10
    )
    test_id = cluster2.share_dataset(digits.x_test, digits.y_test, name="digits-dp-test")
    job = cluster2.train(
        _mlp(0),
        [train_id],
        epochs=3,
        batch_size=100,
        lr=0.5,
        momentum=0.9,
        dp_clip_norm=1.0,
        dp_noise_multiplier=1.0,
    )
    events: list[Progress] = list(job.progress())
    model_id = job.result(timeout=300)
    accuracy = cluster2.evaluate(model_id, test_id).accuracy
    assert accuracy > 0.7, accuracy  # ten classes: chance is 0.1; measured 0.87

    info = job.status().info
    assert info.steps_done == info.steps_total == 30
    assert info.dp_noise_multiplier == 1.0
    expected = _rdp_epsilon(rows, 100, 1.0, 30, 1e-5)
    assert job.epsilon() == pytest.approx(expected, rel=1e-9)
    # every step's event carries the epsilon spent so far
    running = [e for e in events if e.state == "running" and e.batch]
    assert [e.steps_done for e in running] == list(range(1, 31))
    assert running[0].epsilon == pytest.approx(_rdp_epsilon(rows, 100, 1.0, 1, 1e-5), rel=1e-9)
    assert all(a.epsilon < b.epsilon for a, b in itertools.pairwise(running))
    assert events[-1].epsilon == pytest.approx(expected, rel=1e-9)


def test_target_epsilon_is_met_by_the_calibrated_noise(cluster2: Cluster, digits: Any) -> None:
    rows, batch, delta = 300, 50, 1e-4
    train_id = cluster2.share_dataset(
        digits.x_train[:rows], digits.y_train[:rows], name="digits-dp-target", num_classes=10
    )
    job = cluster2.train(
        _mlp(1),
        [train_id],
        epochs=1,
        batch_size=batch,
        lr=0.1,
        dp_clip_norm=0.5,
        dp_target_epsilon=2.0,
        dp_delta=delta,
    )
    job.result(timeout=300)
    info = job.status().info
    z = info.dp_noise_multiplier
    assert z > 0
    spent = _rdp_epsilon(rows, batch, z, info.steps_total, delta)
    assert job.epsilon() == pytest.approx(spent, rel=1e-9)
    assert 1.99 <= spent <= 2.0  # calibrated to the target, never over it


BAD = [
    ({"dp_clip_norm": -1.0, "dp_noise_multiplier": 1.0}, "dp_clip_norm must be"),
    ({"dp_clip_norm": math.nan, "dp_noise_multiplier": 1.0}, "dp_clip_norm must be"),
    ({"dp_noise_multiplier": 1.0}, "need dp_clip_norm > 0"),
    ({"dp_clip_norm": 1.0}, "needs dp_noise_multiplier"),
    ({"dp_clip_norm": 1.0, "dp_noise_multiplier": -0.5}, "dp_noise_multiplier must lie"),
    ({"dp_clip_norm": 1.0, "dp_noise_multiplier": math.inf}, "dp_noise_multiplier must lie"),
    ({"dp_clip_norm": 1.0, "dp_target_epsilon": math.nan}, "dp_target_epsilon must be"),
    (
        {"dp_clip_norm": 1.0, "dp_noise_multiplier": 1.0, "dp_target_epsilon": 2.0},
        "either dp_noise_multiplier or dp_target_epsilon",
    ),
    ({"dp_clip_norm": 1.0, "dp_noise_multiplier": 1.0, "dp_delta": 1.5}, "dp_delta must lie"),
    ({"dp_clip_norm": 1.0, "dp_noise_multiplier": 1.0, "dp_delta": 0.01}, "not below 1/rows"),
    (
        {"dp_clip_norm": 1.0, "dp_noise_multiplier": 1.0, "reveal_metrics": True},
        "reveal_metrics",
    ),
    ({"dp_clip_norm": 1.0, "dp_noise_multiplier": 1.0, "standardize": True}, "standardize"),
    ({"dp_clip_norm": 1.0, "dp_target_epsilon": 1e-6}, "dp_target_epsilon=1e-06"),
    ({"dp_clip_norm": 1.0, "dp_noise_multiplier": 1.0, "seed": 3}, "leave seed at 0"),
]


def test_bad_dp_requests_are_refused_before_any_mpc(cluster2: Cluster, digits: Any) -> None:
    good = cluster2.share_dataset(
        digits.x_train[:120], digits.y_train[:120], name="dp-bad", num_classes=10
    )
    jobs_before = {j.job_id for j in cluster2.list_jobs()}
    for extra, message in BAD:
        with pytest.raises(InvalidTrainingJob, match=message) as err:
            cluster2.train(_mlp(2), [good], epochs=1, batch_size=40, lr=0.1, **extra)
        assert type(err.value) is InvalidTrainingJob  # the INVALID_JOB code, from both servers
        assert "invalid training job" in str(err.value) and "server-1" in str(err.value)

    images = cluster2.share_dataset(
        digits.x_train[:120].reshape(-1, 1, 8, 8), digits.y_train[:120], name="dp-bad-images",
        num_classes=10,
    )  # fmt: skip
    torch.manual_seed(3)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10)
    )
    with pytest.raises(InvalidTrainingJob, match="DP-SGD supports only layers") as err:
        cluster2.train(
            cnn,
            [images],
            epochs=1,
            batch_size=40,
            lr=0.1,
            dp_clip_norm=1.0,
            dp_noise_multiplier=1.0,
        )
    assert "conv2d" in str(err.value)
    assert {j.job_id for j in cluster2.list_jobs()} == jobs_before


# ---------------------------------------------------------------- no API shows the batches


def _walk(message: Message, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every set field of ``message`` and of its sub-messages: (dotted path, value)."""
    for field, value in message.ListFields():
        name = f"{path}.{field.name}" if path else field.name
        yield name, value
        repeated = hasattr(value, "__len__") and not isinstance(value, (str, bytes, Message))
        items = list(value) if repeated else [value]
        for item in items:
            if isinstance(item, Message):
                yield from _walk(item, name)


def _responses(cluster: Cluster, job_id: str) -> list[Message]:
    """GetJob, this job in ListJobs, and every WatchJob event, from every server."""
    out: list[Message] = []
    for server in cluster._servers:
        stub, meta = server.training, cluster._metadata
        out.append(stub.GetJob(training_pb2.GetJobRequest(job_id=job_id), metadata=meta))
        listed = stub.ListJobs(training_pb2.ListJobsRequest(), metadata=meta).jobs
        out.extend(info for info in listed if info.job_id == job_id)
        out.extend(stub.WatchJob(training_pb2.WatchJobRequest(job_id=job_id), metadata=meta))
    return out


def _weights(cluster: Cluster, model_id: str) -> np.ndarray:
    model = cluster.export_model(model_id).to_torch()
    return np.concatenate([p.detach().double().reshape(-1) for p in model.parameters()])


def test_no_response_reveals_the_batches_and_the_same_settings_train_on_others(
    local2: LocalCluster, cluster2: Cluster, digits: Any
) -> None:
    """The accountant assumes nobody outside the servers knows which rows a step used.

    Two jobs with identical public settings (data, initial model, hyper-parameters, no
    noise: clipping only) end with different models: their batches come from secret
    keys. The owner, another client and the monitor see seed 0 in every JobInfo and
    event, and no list of row indices anywhere.
    """
    rows, batch = 200, 20
    train_id = cluster2.share_dataset(
        digits.x_train[:rows], digits.y_train[:rows], name="digits-dp-secret", num_classes=10
    )
    jobs = [
        cluster2.train(
            _mlp(5),
            [train_id],
            epochs=1,
            batch_size=batch,
            lr=0.5,
            dp_clip_norm=1.0,
            dp_noise_multiplier=0.0,
        )
        for _ in range(2)
    ]
    models = [job.result(timeout=300) for job in jobs]
    first, second = (_weights(cluster2, m) for m in models)
    # the same batches would leave only fixed-point rounding between them (2^-16 per step)
    assert np.abs(first - second).max() > 1e-2

    analyst = Cluster.from_config(local2.config_path, token=local2.token("analyst"))
    monitor = Cluster.from_config(local2.config_path, monitor=True)
    with analyst, monitor:
        for viewer in (cluster2, analyst, monitor):
            for job in jobs:
                responses = _responses(viewer, job.job_id)
                infos = [r for r in responses if isinstance(r, training_pb2.JobInfo)]
                events = [r for r in responses if isinstance(r, training_pb2.JobEvent)]
                assert len(infos) == 4 and len(events) >= rows // batch  # 2 servers
                for info in infos:
                    assert info.spec.seed == 0 and info.spec.dp_clip_norm == 1.0
                for response in responses:
                    for name, value in _walk(response):
                        # lists here are shapes, data sets, layers: a batch's would be 20 long
                        if not isinstance(value, (str, bytes, Message)) and hasattr(
                            value, "__len__"
                        ):
                            assert len(value) < batch, name
                        assert not isinstance(value, bytes), name  # no opaque blobs either
