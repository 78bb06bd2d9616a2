"""Outsiders get nothing from a live session's MPC listeners, and nothing else listens.

A session of 2 parties + the dealer joins and waits; the test then knocks on
rank 1's and the dealer's MPC listeners as an outsider, lists every listening
socket of the three processes, and finally lets the session compute, which
must still be correct.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from mpc_cluster import MpcCluster

from ppml.proto.deploy.tls import TlsFiles, issue_server_cert, make_ca
from ppml.servers.mpc.tls_links import ACCEPTED, SEND, Hello


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


def _knock(address: tuple[str, int], context: ssl.SSLContext | None, hello: bytes) -> bytes:
    """Connect, say ``hello`` (in TLS if a context is given), return whatever comes back."""
    raw = socket.create_connection(address, timeout=10)
    try:
        if context is None:
            raw.sendall(hello)
            return raw.recv(100)
        with context.wrap_socket(raw) as tls:
            tls.sendall(hello)
            return tls.recv(100)
    except (OSError, ssl.SSLError):
        return b""
    finally:
        raw.close()


def _outsider(files: TlsFiles | None) -> ssl.SSLContext:
    """A TLS 1.3 client that does not check the server and shows ``files`` (if any)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if files is not None:
        context.load_cert_chain(str(files.cert), str(files.key))
    return context


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
            "plaintext": _knock(address, None, _hello(live, 0, rank)),
            "no client certificate": _knock(address, _outsider(None), _hello(live, 0, rank)),
            "another CA": _knock(address, _outsider(foreign), _hello(live, 0, rank)),
            "cluster CA, wrong name": _knock(address, _outsider(intruder), _hello(live, 0, rank)),
        }
        if rank == live.dealer_rank:  # a member claiming another member's rank
            attempts["member as rank 0"] = _knock(address, _outsider(member), _hello(live, 0, rank))
        for what, answer in attempts.items():
            assert ACCEPTED not in answer, (rank, what)
            assert answer == b"" or answer[0] == 0x15, (rank, what, answer)  # at most an alert


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket the process holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                host, port = fields[1].split(":")
                if len(host) == 8:
                    address = socket.inet_ntoa(bytes.fromhex(host)[::-1])
                else:
                    address = "ipv6:" + host
                found.add((address, int(port, 16)))
    return found


def test_nothing_listens_but_the_configured_addresses(live: MpcCluster) -> None:
    assert _listening(live.pid(0)) == set()  # rank 0 dials everybody
    assert _listening(live.pid(1)) == {live.address(1)}
    assert _listening(live.pid(live.dealer_rank)) == {live.address(live.dealer_rank)}


def test_the_session_still_computes_after_the_probes(live: MpcCluster) -> None:
    (live.out / "go").touch()
    results = live.results()
    for rank in range(2):
        assert results[rank]["error"] < 1e-3
    assert results[live.dealer_rank]["epochs"][0]["reason"] == "session ended by the leader"
