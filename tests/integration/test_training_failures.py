"""Training's bad inputs and crashes, with real server processes."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import pytest
import torch

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.client.errors import DatasetNotFound, InvalidDataset, InvalidTrainingJob


def _mlp(inputs: int = 64, outputs: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(inputs, 16), torch.nn.ReLU(), torch.nn.Linear(16, outputs)
    )


def _onnx(model: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 64),), buffer, dynamo=False)
    return buffer.getvalue()


def _train_jobs_run(cluster: Cluster) -> int:
    """MPC training steps any server has run so far."""
    return sum(c.jobs for report in cluster.status() for c in report.mpc_cost if c.kind == "train")


def test_bad_training_input_is_rejected_before_any_mpc(cluster2: Cluster, digits: Any) -> None:
    x, y = digits.x_train[:120].numpy(), digits.y_train[:120].numpy()
    good = cluster2.share_dataset(x, y, name="good", num_classes=10)
    jobs_before = {j.job_id for j in cluster2.list_jobs()}
    steps_before = _train_jobs_run(cluster2)

    narrow = cluster2.share_dataset(x[:, :32], y, name="narrow", num_classes=10)
    with pytest.raises(InvalidTrainingJob, match="different features") as err:
        cluster2.train(_mlp(), [good, narrow], epochs=1, batch_size=32, lr=0.1)
    assert good in str(err.value) and narrow in str(err.value)

    twelve = cluster2.share_dataset(x, y, name="twelve-classes", num_classes=12)
    with pytest.raises(InvalidTrainingJob, match="num_classes=12") as err:
        cluster2.train(_mlp(), [good, twelve], epochs=1, batch_size=32, lr=0.1)
    assert "10 classes" in str(err.value)  # says what the model predicts

    with pytest.raises(InvalidDataset, match=r"labels must lie in 0\.\.9"):
        cluster2.share_dataset(x, np.where(y == 3, 12, y), num_classes=10)
    nan = x.copy()
    nan[7, 5] = np.nan
    with pytest.raises(InvalidDataset, match=r"NaN/inf.*row 7, column 5"):
        cluster2.share_dataset(nan, y)
    inf = x.copy()
    inf[2, 1] = np.inf
    with pytest.raises(InvalidDataset, match="NaN/inf"):
        cluster2.share_dataset(inf, y)
    with pytest.raises(InvalidDataset, match="empty"):
        cluster2.share_dataset(np.zeros((0, 64)), np.zeros(0, dtype=np.int64))

    with pytest.raises(DatasetNotFound, match="no-such-dataset"):
        cluster2.train(_mlp(), [good, "no-such-dataset"], epochs=1, batch_size=32, lr=0.1)
    with pytest.raises(InvalidTrainingJob, match="num_classes=10 but the model predicts 2"):
        cluster2.train(
            _mlp(outputs=1), [good], epochs=1, batch_size=32, lr=0.1, loss="binary_cross_entropy"
        )
    with pytest.raises(InvalidTrainingJob, match="num_classes=10 but the model predicts 3"):
        cluster2.train(_mlp(outputs=3), [good], epochs=1, batch_size=32, lr=0.1)
    with pytest.raises(InvalidTrainingJob, match=r"does not accept rows.*\[32\]"):
        cluster2.train(_mlp(), [narrow], epochs=1, batch_size=32, lr=0.1)
    onnx_64 = _onnx(_mlp())  # an ONNX model skips the client-side shape probe
    with pytest.raises(InvalidTrainingJob, match=r"64 values.*32 features"):
        cluster2.train(onnx_64, [narrow], epochs=1, batch_size=32, lr=0.1)
    with pytest.raises(InvalidTrainingJob, match="momentum"):
        cluster2.train(_mlp(), [good], epochs=1, batch_size=32, lr=0.1, momentum=1.5)

    # nothing was queued, no MPC step ran, and the cluster still trains
    assert {j.job_id for j in cluster2.list_jobs()} == jobs_before
    assert _train_jobs_run(cluster2) == steps_before
    job = cluster2.train(_mlp(), [good], epochs=1, batch_size=120, lr=0.1)
    assert job.result(timeout=120) == job.model_id


def test_a_server_dying_fails_the_job_everywhere_and_keeps_stored_state(
    restartable_cluster: LocalCluster, digits: Any
) -> None:
    cluster = Cluster.from_config(restartable_cluster.config_path)
    data_id = cluster.share_dataset(digits.x_train, digits.y_train, name="digits")
    earlier = cluster.train(_mlp(), [data_id], epochs=1, batch_size=512, lr=0.1)
    earlier_model = earlier.result(timeout=120)
    before = cluster.predict(earlier_model, digits.x_test[:8])

    job = cluster.train(_mlp(), [data_id], epochs=100, batch_size=64, lr=0.05)
    deadline = time.monotonic() + 60
    while job.status().info.steps_done < 2:
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    restartable_cluster.kill("server-1")

    deadline = time.monotonic() + 30
    while (status := job.status()).states["server-0"] != "failed":
        assert time.monotonic() < deadline, status.states
        time.sleep(0.2)
    assert status.states["server-1"] == "unreachable"
    assert "server-1" in status.info.reason or "went away" in status.info.reason
    with pytest.raises(Exception, match="failed"):
        job.result(timeout=5)

    restartable_cluster.start_server(1)
    restartable_cluster.wait_serving(timeout=120)
    cluster.wait_ready(timeout=60)  # this client's channel to server-1 reconnects
    after = job.status()
    assert set(after.states.values()) == {"failed"}, after.states
    assert [d.complete for d in cluster.list_datasets() if d.meta.dataset_id == data_id] == [True]
    assert (cluster.predict(earlier_model, digits.x_test[:8]) - before).abs().max() < 1e-2
    retry = cluster.train(_mlp(), [data_id], epochs=1, batch_size=512, lr=0.1)
    assert retry.result(timeout=120) == retry.model_id
    cluster.close()
