"""The ``ppml`` command line against a real cluster: servers and dealer as processes.

One cluster is started with ``ppml cluster up`` for the module and always
stopped (``ppml cluster down``, then SIGKILL as a last resort) at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ppml.training.datasets import load_builtin, partition

pytestmark = pytest.mark.timeout(180)


def ppml(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ppml.client.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def alive(pid: int) -> bool:
    """Running and not a zombie (a zombie has exited; only its parent has not reaped it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@dataclass(frozen=True)
class RunningCluster:
    directory: Path
    config: Path
    pids: dict[str, int]


@dataclass(frozen=True)
class SharedModel:
    model_id: str
    model: nn.Module
    x: torch.Tensor


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    directory = tmp_path_factory.mktemp("cluster")
    pids: dict[str, int] = {}
    try:
        up = ppml("cluster", "up", "--parties", "2", "--dir", directory, timeout=150)
        assert up.returncode == 0, up.stdout + up.stderr
        pids = json.loads((directory / "pids.json").read_text())["processes"]
        yield RunningCluster(directory, directory / "cluster.toml", pids)
    finally:
        ppml("cluster", "down", "--dir", directory, timeout=60)
        for pid in pids.values():  # last resort if `down` is broken
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def shared(cluster: RunningCluster, tmp_path_factory: pytest.TempPathFactory) -> SharedModel:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(5, 6)
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but supported
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (x,), str(path), dynamo=False)
    result = ppml("models", "share", "--config", cluster.config, "--onnx", path, "--name", "tiny")
    assert result.returncode == 0, result.stderr
    return SharedModel(result.stdout.strip(), model, x)


def test_status_shows_every_server_serving(cluster: RunningCluster) -> None:
    result = ppml("cluster", "status", "--config", cluster.config)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1]: line.split()[2] for line in result.stdout.splitlines()[2:]}
    assert rows == {"server-0": "SERVING", "server-1": "SERVING"}


def test_up_refuses_a_directory_with_a_running_cluster(cluster: RunningCluster) -> None:
    result = ppml("cluster", "up", "--parties", "2", "--dir", cluster.directory)
    assert result.returncode != 0
    assert "already running" in result.stderr
    assert json.loads((cluster.directory / "pids.json").read_text())["processes"] == cluster.pids


def test_models_list_shows_the_shared_model(cluster: RunningCluster, shared: SharedModel) -> None:
    result = ppml("models", "list", "--config", cluster.config)
    assert result.returncode == 0, result.stderr
    line = next(row for row in result.stdout.splitlines() if row.startswith(shared.model_id))
    assert "tiny" in line
    assert "Linear(6→8) → ReLU → Linear(8→3)" in line
    assert line.split()[-1] == "yes"  # every server holds its share


def test_predict_matches_plaintext(
    cluster: RunningCluster, shared: SharedModel, tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", shared.x.numpy())
    result = ppml(
        "predict",
        "--config",
        cluster.config,
        "--model",
        shared.model_id,
        "--input",
        tmp_path / "x.npy",
        "--output",
        tmp_path / "y.npy",
    )
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        expected = shared.model(shared.x).numpy()
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    printed = np.array([[float(v) for v in row[2:]] for row in rows])
    np.testing.assert_allclose(printed, expected, atol=1e-2)
    assert [int(row[1]) for row in rows] == expected.argmax(1).tolist()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-2)


def test_unknown_model_is_a_one_line_error(cluster: RunningCluster, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 6)))
    result = ppml(
        "predict",
        "--config",
        cluster.config,
        "--model",
        "no-such-model",
        "--input",
        tmp_path / "x.npy",
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no-such-model" in result.stderr
    assert "Traceback" not in result.stderr


def test_training_commands(cluster: RunningCluster, tmp_path: Path) -> None:
    """Share iris as 2 owners, train 1 epoch in MPC, inspect, evaluate, export."""
    config = ("--config", cluster.config)
    share = ppml("data", "share", *config, "--builtin", "iris", "--partition", "2")
    assert share.returncode == 0, share.stderr
    parts = share.stdout.split()
    assert len(parts) == 2
    listed = ppml("data", "list", *config)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[2:]}
    assert [rows[p][1] for p in parts] == ["iris-0", "iris-1"]
    assert sum(int(rows[p][3]) for p in parts) == 150  # rows

    hyper = ["--epochs", "1", "--batch-size", "64", "--lr", "0.1", "--reveal-metrics"]
    train = ppml("train", *config, "--datasets", *parts, "--mlp", "4,3", *hyper)
    assert train.returncode == 0, train.stderr
    model_id = train.stdout.strip()
    last = [line for line in train.stderr.splitlines() if line.startswith("epoch 1/1")][-1]
    for part in ("batch 3/3", "100%", "samples/s", "loss ", "succeeded"):
        assert part in last, train.stderr

    models = ppml("models", "list", *config)
    assert model_id in [line.split()[0] for line in models.stdout.splitlines()[2:]]
    jobs = ppml("jobs", "list", *config)
    job = next(line.split() for line in jobs.stdout.splitlines()[2:] if model_id in line)
    assert job[3:5] == ["succeeded", "3/3"], jobs.stdout

    evaluate = ppml("evaluate", *config, "--model", model_id, "--dataset", parts[0])
    assert evaluate.returncode == 0, evaluate.stderr
    match = re.fullmatch(r"accuracy (\S+) \((\d+)/75 rows correct\)", evaluate.stdout.strip())
    assert match, evaluate.stdout
    export = ppml("models", "export", model_id, *config, "--out", tmp_path / "w.pt")
    assert export.returncode == 0, export.stderr
    trained = nn.Sequential(nn.Linear(4, 3))
    trained.load_state_dict(torch.load(tmp_path / "w.pt"))
    owner0 = partition(load_builtin("iris"), 2, "iid", seed=0)[0]  # the CLI's default split
    with torch.no_grad():
        predicted = trained(torch.from_numpy(owner0.features).float()).argmax(1).numpy()
    assert abs(int((predicted == owner0.labels).sum()) - int(match[2])) <= 2  # fixed point

    (tmp_path / "bad.csv").write_text("a,b,label\n1,2,0\n3,nan,1\n")
    bad = ppml("data", "share", *config, "--csv", tmp_path / "bad.csv")
    assert bad.returncode == 1
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "bad.csv" in bad.stderr and "NaN" in bad.stderr

    cancel = ppml("jobs", "cancel", job[0], *config)
    assert cancel.returncode == 1
    assert (
        cancel.stderr.strip() == f"ppml: error: job {job[0]} already succeeded; nothing to cancel"
    )


def test_down_stops_every_process(cluster: RunningCluster) -> None:
    result = ppml("cluster", "down", "--dir", cluster.directory)
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 5  # down waits itself; allow the reaper a moment
    while any(alive(pid) for pid in cluster.pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [name for name, pid in cluster.pids.items() if alive(pid)]
    assert not (cluster.directory / "pids.json").exists()
    again = ppml("cluster", "down", "--dir", cluster.directory)
    assert again.returncode == 0, again.stderr  # idempotent
