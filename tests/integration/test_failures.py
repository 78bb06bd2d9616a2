"""Crashes, restarts, readiness and idle periods, with real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ppml.client import Cluster, PredictionAborted, ServerUnavailable
from ppml.client.deploy.local import LocalCluster, write_local_topology


def _big_cnn_input(rows: int) -> torch.Tensor:
    return torch.randn(rows, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("victim", ["server-1", "server-0"])
def test_killing_a_server_mid_request_fails_fast_then_recovers(
    restartable_cluster: LocalCluster, cnn: torch.nn.Module, victim: str
) -> None:
    cluster = Cluster.from_config(restartable_cluster.config_path)
    model_id = cluster.share_model(cnn, _big_cnn_input(1), name="survivor")
    x = _big_cnn_input(2048)  # several seconds of MPC
    outcome: dict[str, Any] = {}

    def request() -> None:
        started = time.monotonic()
        try:
            cluster.predict(model_id, x, timeout=60)
            outcome["result"] = "answered"
        except Exception as exc:  # recorded and asserted below
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=request)
    with Cluster.from_config(restartable_cluster.config_path) as monitor:
        victim_rank = int(victim.rsplit("-", 1)[1])

        def running() -> bool:
            return monitor.status()[victim_rank].running_job == "predict"

        thread.start()
        _wait_until(lambda: running() or bool(outcome), "the prediction's MPC job runs")
        assert not outcome, f"the request ended before the kill: {outcome}"
    restartable_cluster.kill(victim)
    thread.join(30)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), ServerUnavailable | PredictionAborted), outcome
    assert outcome["elapsed"] < 30  # failed fast, well inside its 60 s deadline

    rank = int(victim.rsplit("-", 1)[1])
    restartable_cluster.start_server(rank)
    restartable_cluster.wait_serving(timeout=120)
    small = _big_cnn_input(4)
    with torch.no_grad():
        expected = cnn(small)
    assert (cluster.predict(model_id, small) - expected).abs().max().item() < 1e-2
    cluster.close()


def test_health_is_not_serving_until_peers_and_dealer(tmp_path: Path) -> None:
    local = LocalCluster(parties=2, directory=tmp_path)
    write_local_topology(tmp_path, 2)
    try:
        local.start_server(0)
        local.start_server(1)
        with Cluster.from_config(local.config_path) as cluster:

            def follower_linked() -> bool:  # both servers up and talking to each other
                try:
                    return "server-1" in cluster.status()[0].links_up
                except ServerUnavailable:
                    return False

            _wait_until(follower_linked, "server-1 linked to the leader")
            reports = cluster.status()
            assert not any(r.serving for r in reports)  # no dealer: no MPC session
            assert cluster.health() == {"server-0": False, "server-1": False}
            local.start_dealer()
            local.wait_serving(timeout=60)
            assert cluster.health() == {"server-0": True, "server-1": True}
    finally:
        local.stop()


def test_idle_cluster_outlives_the_mpc_timeout(tmp_path: Path, mlp: torch.nn.Module) -> None:
    # Every collective times out after 4 s, yet heartbeats keep an idle cluster up.
    serving = {"mpc_timeout_s": 4, "heartbeat_s": 1}
    with (
        LocalCluster(parties=2, directory=tmp_path, serving=serving) as local,
        Cluster.from_config(local.config_path) as cluster,
    ):
        model_id = cluster.share_model(mlp, torch.zeros(1, 64))
        epoch = cluster.status()[0].mpc_epoch
        # idle for more than twice the collective timeout (heartbeat_s = 1): heartbeats only
        _wait_until(
            lambda: all(r.heartbeats >= 9 for r in cluster.status()), "9 heartbeats", timeout=60
        )
        x = torch.ones(1, 64) * 0.1
        with torch.no_grad():
            assert (cluster.predict(model_id, x) - mlp(x)).abs().max().item() < 1e-2
        reports = cluster.status()
    assert [r.mpc_epoch for r in reports] == [epoch, epoch]  # no session restart
    assert all(r.heartbeats >= 9 for r in reports)


DRIVER = """
import sys, time
from ppml.client.deploy.local import LocalCluster
local = LocalCluster(parties=2, directory=sys.argv[1]).start()
print(" ".join(str(p.pid) for p in local.processes.values()), flush=True)
time.sleep(600)
"""


def test_servers_die_with_a_driver_that_is_killed(tmp_path: Path) -> None:
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path / "cluster")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert driver.stdout is not None
        pids = [int(p) for p in driver.stdout.readline().split()]
        assert len(pids) == 3  # two servers and the dealer, all serving
        driver.send_signal(signal.SIGKILL)  # no clean-up code runs in the driver
        driver.wait(10)

        def alive(pid: int) -> bool:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().split()[2]
            except FileNotFoundError:
                return False
            return state not in ("Z", "X")

        _wait_until(lambda: not any(alive(pid) for pid in pids), "the servers exited", 30)
    finally:
        if driver.poll() is None:
            driver.kill()
