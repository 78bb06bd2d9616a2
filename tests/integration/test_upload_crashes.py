"""Uploads are all-or-nothing across servers, whatever moment a server is killed at.

Each server runs with a test crash file of its own
(``ppml.servers.store.crash_points``): it kills itself (SIGKILL) at the moment of
a data set or model upload named there. The SDK must say clearly what
happened (``UploadAborted``: nothing kept, safe to retry; success if the
leader had committed; ``UploadUnresolved`` while the leader itself is down);
after the server is restarted, the object is on every server or on none, and
nothing staged is left behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ppml.client import Cluster, ModelNotFound, UploadAborted, UploadUnresolved
from ppml.client.deploy.local import LocalCluster, write_local_topology
from ppml.servers.store.crash_points import ENV

ROWS, FEATURES = 60_000, 20  # 3 chunks of 4 MiB per server: "middle" is mid-stream
SMALL = 1000  # one chunk: the other moments do not depend on the size
VICTIM = 1  # a follower; the leader is killed once, at its commit decision


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


class Crashable:
    """A 2-server cluster whose servers die at the crash point written to their file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        write_local_topology(directory, 2, {"heartbeat_s": 2}, None, ())
        self.local = LocalCluster(parties=2, directory=directory)
        for rank in (0, 1):
            self.crash_file(rank).write_text("")
            self.start(rank)
        self.local.start_dealer()
        self.local.wait_serving(180)

    def crash_file(self, rank: int) -> Path:
        return self.directory / f"crash-at-{rank}"

    def start(self, rank: int) -> None:
        os.environ[ENV] = str(self.crash_file(rank))
        try:
            self.local.start_server(rank)
        finally:
            del os.environ[ENV]

    def reconstructed(self, kind: str, record_id: str) -> dict[str, np.ndarray]:
        """The record's values, from every server's shares on disk (checks they match)."""
        parts = []
        for rank in (0, 1):
            folder = self.local.config.party(rank).data_dir / kind / record_id
            with np.load(folder / "shares.npz") as shares:
                parts.append({name: shares[name] for name in shares.files})
        return {
            name: (parts[0][name] + parts[1][name]).astype(np.float64) / 2**16  # ring sum
            for name in parts[0]
        }

    def staged(self, rank: int) -> list[Path]:
        data = self.local.config.party(rank).data_dir
        return [p for kind in ("datasets", "models") for p in (data / kind).glob(".staged-*")]

    def crash_at(
        self, point: str, upload: Callable[[], object], victim: int = VICTIM
    ) -> BaseException | None:
        """Run ``upload`` with ``victim`` set to die at ``point``; restart it; the SDK's error."""
        self.local.wait_serving(180)  # every server is up and linked before the upload
        self.crash_file(victim).write_text(point)
        error: BaseException | None = None
        try:
            upload()
        except Exception as exc:  # asserted by the caller
            error = exc
        process = self.local.processes.pop(f"server-{victim}")
        try:
            assert process.wait(timeout=30) == -9, f"server {victim} did not die at {point}"
        finally:
            process.kill()  # if it is still alive (then the test fails): a fresh start
            process.wait()
            self.crash_file(victim).write_text("")
            self.start(victim)
        return error


@pytest.fixture(scope="module")
def crashable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crashable]:
    cluster = Crashable(tmp_path_factory.mktemp("crashes"))
    yield cluster
    cluster.local.stop()


@pytest.fixture(scope="module")
def client(crashable: Crashable) -> Iterator[Cluster]:
    with Cluster.from_config(crashable.local.config_path) as cluster:
        yield cluster


def _holders(listings: list, key: str, wanted: str) -> tuple[str, ...]:
    return next((item.servers for item in listings if getattr(item.meta, key) == wanted), ())


def _settled(crashable: Crashable, holders: Callable[[], tuple[str, ...]], kept: bool) -> None:
    """Wait until the victim is back and every staged copy is settled; check all-or-nothing."""
    everyone = ("server-0", "server-1")

    def back_and_settled() -> bool:
        try:
            held = holders()
        except Exception:  # server 1 is still starting
            return False
        return held == (everyone if kept else ()) and not crashable.staged(VICTIM)

    _wait_until(back_and_settled, "the server is back and holds the upload on all or none")
    _wait_until(lambda: not crashable.staged(0), "server 0 has no staged copy left")


OUTCOMES = {"early": False, "middle": False, "late": False, "commit": True, "committed": True}


@pytest.mark.parametrize("moment", list(OUTCOMES))
def test_a_dataset_upload_is_on_every_server_or_none(
    crashable: Crashable, client: Cluster, moment: str
) -> None:
    rows = ROWS if moment == "middle" else SMALL
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(rows, FEATURES)), rng.integers(0, 2, rows)
    dataset_id = f"crash-{moment}"
    error = crashable.crash_at(
        f"dataset:{moment}", lambda: client.share_dataset(x, y, dataset_id=dataset_id)
    )
    kept = OUTCOMES[moment]
    if kept:
        assert error is None, f"the leader committed it, the SDK must say so: {error!r}"
    else:
        assert isinstance(error, UploadAborted), repr(error)
        assert "did not happen" in str(error) and "safe to retry" in str(error)
    _settled(crashable, lambda: _holders(client.list_datasets(), "dataset_id", dataset_id), kept)
    if kept:  # both servers hold shares of this very upload
        values = crashable.reconstructed("datasets", dataset_id)
        np.testing.assert_allclose(values["features"], x, atol=1e-4)
    else:  # safe to retry: the same id uploads cleanly
        client.share_dataset(x[:100], y[:100], dataset_id=dataset_id)
        held = _holders(client.list_datasets(), "dataset_id", dataset_id)
        assert held == ("server-0", "server-1")


# "committed" (the reply lost after a commit) is covered by the data set test
MODEL_MOMENTS = {"early": False, "staging": False, "late": False, "commit": True}


@pytest.mark.parametrize("moment", list(MODEL_MOMENTS))
def test_a_model_upload_is_on_every_server_or_none(
    crashable: Crashable, client: Cluster, moment: str
) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    sample = torch.ones(1, 4)
    model_id = f"crash-{moment}"
    error = crashable.crash_at(
        f"model:{moment}", lambda: client.share_model(model, sample, model_id=model_id)
    )
    kept = MODEL_MOMENTS[moment]
    if kept:
        assert error is None, f"the leader committed it, the SDK must say so: {error!r}"
    else:
        assert isinstance(error, UploadAborted), repr(error)
        assert "did not happen" in str(error) and "safe to retry" in str(error)
    _settled(crashable, lambda: _holders(client.list_models(), "model_id", model_id), kept)
    if kept:  # both servers hold shares of this very upload
        values = crashable.reconstructed("models", model_id)
        for name, weight in model.state_dict().items():
            np.testing.assert_allclose(values[name], weight.numpy(), atol=1e-4)
    if moment in ("late", "commit"):  # usable for MPC once the cluster serves again
        crashable.local.wait_serving(120)
        x = torch.randn(2, 4)
        if kept:
            with torch.no_grad():
                expected = model(x)
            assert (client.predict(model_id, x) - expected).abs().max().item() < 1e-2
        else:
            with pytest.raises(ModelNotFound):
                client.predict(model_id, x)


def test_a_leader_killed_at_its_commit_decision_commits_what_every_server_staged(
    crashable: Crashable, client: Cluster
) -> None:
    """Server 0 dies deciding, before its own rename: no server was told anything. The SDK
    cannot learn the outcome while it is down; once it is back, every server re-announces its
    staged copy, and the leader (which remembers nothing) commits what all of them hold."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(1000, FEATURES)), rng.integers(0, 2, 1000)
    error = crashable.crash_at(
        "dataset:commit", lambda: client.share_dataset(x, y, dataset_id="leader-crash"), victim=0
    )
    assert isinstance(error, UploadUnresolved), repr(error)
    assert "on every server or on none" in str(error)
    _settled(
        crashable, lambda: _holders(client.list_datasets(), "dataset_id", "leader-crash"), True
    )
    np.testing.assert_allclose(
        crashable.reconstructed("datasets", "leader-crash")["features"], x, atol=1e-4
    )
    crashable.local.wait_serving(120)
