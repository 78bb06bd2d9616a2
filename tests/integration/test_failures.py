"""Crashes, restarts, readiness and idle periods, with real processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ppml.client import Cluster, PredictionAborted, ServerUnavailable
from ppml.proto.deploy.local import LocalCluster, write_local_topology


def _big_cnn_input(rows: int) -> torch.Tensor:
    return torch.randn(rows, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("victim", ["server-1", "server-0"])
def test_killing_a_server_mid_request_fails_fast_then_recovers(
    fresh_cluster: LocalCluster, cnn: torch.nn.Module, victim: str
) -> None:
    cluster = Cluster.from_config(fresh_cluster.config_path)
    model_id = cluster.share_model(cnn, _big_cnn_input(1), name="survivor")
    x = _big_cnn_input(256)  # several seconds of MPC
    outcome: dict[str, Any] = {}

    def request() -> None:
        started = time.monotonic()
        try:
            cluster.predict(model_id, x, timeout=20)
            outcome["result"] = "answered"
        except Exception as exc:  # recorded and asserted below
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=request)
    with Cluster.from_config(fresh_cluster.config_path) as monitor:
        victim_rank = int(victim.rsplit("-", 1)[1])

        def depth() -> int:
            return monitor.status()[victim_rank].queue_depth

        thread.start()
        _wait_until(lambda: depth() > 0 or bool(outcome), "the victim holds the request")
        # the MPC job takes the request out of the queue: it is now running everywhere
        _wait_until(lambda: depth() == 0 or bool(outcome), "the MPC job started")
        assert not outcome, f"the request ended before the kill: {outcome}"
    fresh_cluster.kill(victim)
    thread.join(30)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), ServerUnavailable | PredictionAborted), outcome
    assert outcome["elapsed"] < 20

    rank = int(victim.rsplit("-", 1)[1])
    fresh_cluster.start_server(rank)
    fresh_cluster.wait_serving(timeout=120)
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
