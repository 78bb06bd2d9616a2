"""Outsiders get nothing from a live session's MPC listeners, and nothing else listens.

A session of 2 parties + the dealer joins and waits; the test then knocks on
rank 1's and the dealer's MPC listeners as an outsider, lists every listening
socket of the three processes, and finally lets the session compute, which
must still be correct.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mpc_cluster import MpcCluster
from probing import knock, listening, outsider

from ppml.proto.deploy.tls import TlsFiles, issue_server_cert, make_ca
from ppml.servers.mpc.network.tls_links import ACCEPTED, SEND, Hello


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MpcCluster]:
    cluster = MpcCluster(tmp_path_factory.mktemp("probe"), 2)
    try:
        cluster.start("probe")
        for rank in range(2):
            cluster.wait_for(f"joined-{rank}")
        yield cluster
    finally:
        cluster.stop()


def _hello(cluster: MpcCluster, sender: int, receiver: int) -> bytes:
    return Hello(bytes.fromhex(cluster.epochs[0]), sender, receiver, SEND).pack()


def test_outsiders_are_refused(live: MpcCluster, tmp_path: Path) -> None:
    foreign_ca = make_ca(tmp_path / "foreign", "another CA")
    foreign = issue_server_cert(foreign_ca, tmp_path / "foreign", "server-0", ["127.0.0.1"])
    intruder = issue_server_cert(live.ca, tmp_path / "cluster", "intruder", ["127.0.0.1"])
    member = TlsFiles(*(Path(p) for p in live.config["certs"]["server-1"]))
    for rank in (1, live.dealer_rank):
        address = live.address(rank)
        attempts = {
            "plaintext": knock(address, None, _hello(live, 0, rank)),
            "no client certificate": knock(address, outsider(None), _hello(live, 0, rank)),
            "another CA": knock(address, outsider(foreign), _hello(live, 0, rank)),
            "cluster CA, wrong name": knock(address, outsider(intruder), _hello(live, 0, rank)),
        }
        if rank == live.dealer_rank:  # a member claiming another member's rank
            attempts["member as rank 0"] = knock(address, outsider(member), _hello(live, 0, rank))
        for what, answer in attempts.items():
            assert ACCEPTED not in answer, (rank, what)
            assert answer == b"" or answer[0] == 0x15, (rank, what, answer)  # at most an alert


def test_nothing_listens_but_the_configured_addresses(live: MpcCluster) -> None:
    assert listening(live.pid(0)) == set()  # rank 0 dials everybody
    assert listening(live.pid(1)) == {live.address(1)}
    assert listening(live.pid(live.dealer_rank)) == {live.address(live.dealer_rank)}


def test_the_session_still_computes_after_the_probes(live: MpcCluster) -> None:
    (live.out / "go").touch()
    results = live.results()
    for rank in range(2):
        assert results[rank]["error"] < 1e-3
    assert results[live.dealer_rank]["epochs"][0]["reason"] == "session ended by the leader"
