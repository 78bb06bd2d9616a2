"""Strangers flooding a server's MPC port: the cluster keeps serving and its log stays short.

Ranks >= 1 listen for MPC links where anyone can connect before a certificate
is checked. A stranger holds 2,000 silent TCP connections to server-1's MPC
port and keeps opening more while the dealer restarts, which makes every
party link a new epoch through that same listener.
"""

from __future__ import annotations

import resource
import socket
import threading
import time
from collections.abc import Callable

import pytest
import torch

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster

HELD = 2000
STRANGER = "127.0.0.2"  # another loopback address: the stranger is not a peer's host


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


class Flood(threading.Thread):
    """Opens and holds ``HELD`` connections, then keeps opening (and closing) more."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.held: list[socket.socket] = []
        self.churned = 0
        self.stop = threading.Event()

    def _open(self) -> socket.socket | None:
        try:
            return socket.create_connection(self.address, timeout=5, source_address=(STRANGER, 0))
        except OSError:  # the listener's backlog was full for a moment: try again
            return None

    def run(self) -> None:
        while len(self.held) < HELD and not self.stop.is_set():
            conn = self._open()
            if conn is not None:
                self.held.append(conn)
        while not self.stop.is_set():
            conn = self._open()
            if conn is not None:
                conn.close()
                self.churned += 1

    def close(self) -> None:
        self.stop.set()
        self.join(30)
        for conn in self.held:
            conn.close()


@pytest.fixture(scope="module", autouse=True)
def _room_for_the_flood() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = HELD + 1024
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def test_a_flood_of_strangers_neither_stops_the_listener_nor_fills_the_log(
    restartable_cluster: LocalCluster,
) -> None:
    local = restartable_cluster  # heartbeat_s 2: the leader notices the dealer's restart soon
    host, port = local.config.party(1).mpc_address.rsplit(":", 1)
    log = local.log("server-1")
    torch.manual_seed(0)  # public: a test model
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.full((2, 4), 0.25)
    with torch.no_grad():
        expected = model(x)
    with Cluster.from_config(local.config_path) as cluster:
        model_id = cluster.share_model(model, x[:1])
        epoch = cluster.status()[0].mpc_epoch
        lines_before = len(log.read_bytes().splitlines())
        flood = Flood((host, int(port)))
        flood.start()
        try:
            _wait_until(lambda: len(flood.held) >= HELD, f"{HELD} connections are held")
            assert (cluster.predict(model_id, x) - expected).abs().max().item() < 1e-2
            # a new epoch must link through the flooded listener while strangers keep coming
            local.kill("dealer")
            local.start_dealer()
            _wait_until(
                lambda: all(r.serving and r.mpc_epoch > epoch for r in cluster.status()),
                "every party serves a new epoch",
            )
            assert flood.churned > 0 and flood.is_alive()  # the flood went on all along
            assert (cluster.predict(model_id, x) - expected).abs().max().item() < 1e-2
        finally:
            flood.close()
        assert (cluster.predict(model_id, x) - expected).abs().max().item() < 1e-2
    grown = log.read_bytes().splitlines()[lines_before:]
    refusals = [line for line in grown if b"refused" in line]
    assert len(refusals) <= 3, refusals[:10]  # one summary line per 30 s at most
    assert len(grown) < 100, grown[-20:]  # the epoch change logs a few lines, the flood none
