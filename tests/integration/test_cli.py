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
from cli_runner import CliRunner
from torch import nn

from ppml.client import Cluster
from ppml.training.datasets import load_builtin, partition

pytestmark = pytest.mark.timeout(180)
CLI = CliRunner()


def ppml_process(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m ppml.client.cli``: the real entry point, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "ppml.client.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ppml(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The same command in a process forked from one that imported the CLI once."""
    return CLI.run(*args, timeout=timeout)


@pytest.fixture(scope="module", autouse=True)
def _cli_zygote() -> Iterator[None]:
    yield
    CLI.close()


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
        up = ppml_process(
            "cluster", "up", "--parties", "2", "--dir", directory, "--client", "alice",
            timeout=150,
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        pids = json.loads((directory / "pids.json").read_text())["processes"]
        yield RunningCluster(directory, directory / "cluster.toml", pids)
    finally:
        ppml_process("cluster", "down", "--dir", directory, timeout=60)
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


def test_up_writes_a_token_per_client_that_acts_as_that_identity(
    cluster: RunningCluster,
) -> None:
    token_file = cluster.directory / "secrets" / "alice.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    with Cluster.from_config(cluster.config, token=token) as alice:
        dataset_id = alice.share_dataset(np.eye(4), np.arange(4), name="alice-rows")
        (listing,) = [d for d in alice.list_datasets() if d.meta.dataset_id == dataset_id]
        assert listing.meta.owner == "alice"
        alice.delete_dataset(dataset_id)


@pytest.mark.parametrize(
    ("name", "message"),
    [("../x", "use letters"), ("monitor", "already in every local cluster"), ("", "use letters")],
)
def test_up_refuses_a_bad_client_name_before_starting(
    name: str, message: str, tmp_path: Path
) -> None:
    result = ppml("cluster", "up", "--dir", tmp_path / "c", "--client", name)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "c" / "pids.json").exists()


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


def _write_rows(path: Path, features: np.ndarray, labels: np.ndarray) -> Path:
    header = ",".join(f"f{i}" for i in range(features.shape[1])) + ",label"
    rows = [
        ",".join(map(str, [*row, int(label)])) for row, label in zip(features, labels, strict=True)
    ]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_federation_commands(cluster: RunningCluster, tmp_path: Path) -> None:
    """Two participants (local-user, analyst) federate a linear model on iris in MPC, with DP."""
    config = ("--config", cluster.config)
    torch.manual_seed(0)
    path = tmp_path / "linear.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(nn.Linear(4, 3), (torch.zeros(1, 4),), str(path), dynamo=False)
    parts = partition(load_builtin("iris"), 2, "iid", seed=0)
    data = [
        _write_rows(tmp_path / f"rows-{i}.csv", p.features, p.labels) for i, p in enumerate(parts)
    ]

    hyper = ("--rounds", "2", "--batch-size", "32", "--lr", "0.1", "--round-deadline-s", "120")
    dp = ("--dp-clip", "1", "--dp-noise-multiplier", "0.5")
    create = ppml(
        "fl", "create", *config, "--model", path, "--participants", "local-user,analyst",
        *hyper, *dp, "--id", "fl-cli", "--name", "iris-fl",
    )  # fmt: skip
    assert create.returncode == 0, create.stderr
    assert create.stdout.strip() == "fl-cli"
    assert "ppml fl join fl-cli" in create.stderr

    analyst = ("--token-file", cluster.directory / "secrets" / "analyst.token")
    joins = [
        CLI.start("fl", "join", "fl-cli", *args)
        for args in [(*config, "--data", data[0]), (*config, *analyst, "--data", data[1])]
    ]
    for join in [join.wait(timeout=150) for join in joins]:
        out, err = join.stdout, join.stderr
        assert join.returncode == 0, err
        assert "federation fl-cli succeeded: submitted to rounds 1, 2" in out, out + err
        assert "round 1/2: training locally on 75 rows" in err
        assert "round 1 closed: 2 participants, applied, epsilon " in err, err

    listing = ppml("fl", "status", *config)
    assert listing.returncode == 0, listing.stderr
    row = next(line.split() for line in listing.stdout.splitlines() if line.startswith("fl-cli"))
    assert row[1:6] == ["iris-fl", "local-user", "succeeded", "2/2", "mpc"], listing.stdout
    spent, budget = row[-1].split("/")
    assert float(spent) > 0 and budget == "unlimited"  # DP without a budget

    owner = ppml("fl", "status", "fl-cli", *config)
    assert owner.returncode == 0, owner.stderr
    assert re.search(r"^state:\s+succeeded$", owner.stdout, re.M), owner.stdout
    rounds = [line.split() for line in owner.stdout.splitlines() if re.match(r"[12] ", line)]
    assert [(r[0], set(r[1].split(",")), r[2], r[3]) for r in rounds] == [
        (str(n), {"local-user", "analyst"}, "-", "yes") for n in (1, 2)
    ], owner.stdout
    assert 0 < float(rounds[0][4]) < float(rounds[1][4])  # epsilon spent grows
    assert all(r[5] == "-" for r in rounds)  # DP: losses are withheld, even from the owner
    other = ppml("fl", "status", "fl-cli", *config, *analyst)
    assert other.returncode == 0, other.stderr
    assert "(mean loss: owner only)" in other.stdout
    with Cluster.from_config(cluster.config, monitor=True) as monitor:  # the dashboard's role
        (seen,) = [i for i in monitor.list_federations() if i.federation_id == "fl-cli"]
    assert [len(r.participants) for r in seen.results] == [2, 2]
    assert all(r.loss_sum is None and r.weight_sum is None for r in seen.results)

    missing = ppml("fl", "status", "no-such-federation", *config)
    assert missing.returncode == 1
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert "no-such-federation" in missing.stderr and "Traceback" not in missing.stderr
    bad = ppml("fl", "create", *config, "--model", path, "--participants", "analyst",
               "--rounds", "1", "--dp-noise-multiplier", "1.0")  # fmt: skip
    assert bad.returncode == 1
    assert (
        bad.stderr.strip()
        == "ppml: error: DP settings need --dp-clip (the L2 bound of each update)"
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
