"""``ppml deploy check`` on loopback: each failure is named precisely.

The MPC endpoints are ppml's real MPC listeners (``servers/mpc/network/listener.py``)
with the bundles' certificates; the gRPC endpoints are TLS servers presenting
the bundles' server certificates, as a ppml-server's gRPC port does.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ppml.client.cli import main
from ppml.client.deploy.check import check
from ppml.client.deploy.local import free_port
from ppml.client.deploy.provision import DealerSpec, PartySpec, Plan, provision
from ppml.proto.deploy.tls import TlsFiles, issue_server_cert
from ppml.proto.deploy.topology import load_config
from ppml.servers.mpc.network.listener import Listener
from ppml.servers.mpc.network.tls_links import TlsIdentity

HOST = "127.0.0.1"


class TlsServer:
    """Accepts connections and completes a TLS handshake (like a gRPC port), nothing more."""

    def __init__(self, port: int, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.context.set_alpn_protocols(["h2"])
        self.sock = socket.create_server((HOST, port))
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with (
                contextlib.suppress(OSError),
                self.context.wrap_socket(conn, server_side=True) as tls,
            ):
                tls.settimeout(2)
                with contextlib.suppress(OSError):
                    tls.recv(1)

    def close(self) -> None:
        self.sock.close()


def _plan(prefix: str = "") -> Plan:
    return Plan(
        parties=(
            PartySpec("s0", HOST, free_port(), free_port()),
            PartySpec("s1", HOST, free_port(), free_port()),
        ),
        dealer=DealerSpec("dealer", HOST, free_port()),
        clients=("alice",),
    )


def _identity(bundle: Path, name: str) -> TlsIdentity:
    return TlsIdentity(
        bundle / "tls" / "ca.pem", bundle / "tls" / f"{name}.pem", bundle / "tls" / f"{name}.key"
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Plan, Path, list[object]]]:
    plan = _plan()
    out = tmp_path / "bundles"
    provision(out, plan)
    started: list[object] = []
    yield plan, out, started
    for thing in started:
        thing.close()  # type: ignore[attr-defined]


def _start_all(plan: Plan, out: Path, started: list[object], skip: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    for party in plan.parties:
        bundle = out / party.name
        if f"{party.name}/grpc" not in skip:
            started.append(
                TlsServer(
                    party.grpc_port,
                    bundle / "tls" / f"{party.name}.pem",
                    bundle / "tls" / f"{party.name}.key",
                )
            )
        if party.name != "s0" and f"{party.name}/mpc" not in skip:
            started.append(Listener((HOST, party.mpc_port), _identity(bundle, party.name)))
    if "dealer/mpc" not in skip:
        started.append(Listener((HOST, plan.dealer.mpc_port), _identity(out / "dealer", "dealer")))


def _by_peer(reports: list, kind: str) -> dict[str, object]:  # type: ignore[type-arg]
    return {r.link.peer: r for r in reports if r.link.kind == kind}


def test_every_link_of_every_host_is_ok(cluster) -> None:  # type: ignore[no-untyped-def]
    plan, out, started = cluster
    _start_all(plan, out, started)
    expected = {
        "s0": {("mpc", "s1"), ("mpc", "dealer")},
        "s1": {("grpc", "s0"), ("mpc", "dealer")},
        "dealer": {("grpc", "s0")},
        "alice": {("grpc", "s0"), ("grpc", "s1")},
    }
    for name, links in expected.items():
        folder = out / "clients" / name if name == "alice" else out / name
        reports = check(load_config(folder / "cluster.toml"), name, timeout=2)
        assert {(r.link.kind, r.link.peer) for r in reports} == links, name
        assert all(r.ok for r in reports), [r.detail for r in reports]


def test_closed_port_is_named(cluster, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    plan, out, started = cluster
    _start_all(plan, out, started, skip={"s1/mpc"})
    reports = check(load_config(out / "s0" / "cluster.toml"), "s0", timeout=2)
    s1 = _by_peer(reports, "mpc")["s1"]
    assert not s1.reachable and not s1.tls_ok and not s1.identity_ok  # type: ignore[attr-defined]
    address = f"{HOST}:{plan.parties[1].mpc_port}"
    assert "connection refused" in s1.detail and address in s1.detail  # type: ignore[attr-defined]
    assert _by_peer(reports, "mpc")["dealer"].ok  # type: ignore[attr-defined]
    # the CLI prints the same verdict and exits 1
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "deploy",
                "check",
                "--config",
                str(out / "s0" / "cluster.toml"),
                "--as",
                "s0",
                "--timeout",
                "2",
            ]
        )
    assert exit_.value.code == 1
    printed = capsys.readouterr().out
    assert "connection refused" in printed and "1/2 links ok" in printed


def test_wrong_address_another_process_answers(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan, out, started = cluster
    _start_all(plan, out, started)
    text = (out / "s0" / "cluster.toml").read_text()
    wrong = tmp_path / "wrong"
    (wrong).mkdir()
    # s1's MPC address typed as the dealer's: the dealer's certificate answers
    text = text.replace(f"{HOST}:{plan.parties[1].mpc_port}", f"{HOST}:{plan.dealer.mpc_port}")
    for sub in ("tls", "secrets"):
        (wrong / sub).symlink_to(out / "s0" / sub)
    (wrong / "cluster.toml").write_text(text)
    reports = check(load_config(wrong / "cluster.toml"), "s0", timeout=2)
    s1 = _by_peer(reports, "mpc")["s1"]
    assert s1.reachable and s1.tls_ok and not s1.identity_ok  # type: ignore[attr-defined]
    assert "certificate names 'dealer', expected 's1'" in s1.detail  # type: ignore[attr-defined]


def test_wrong_address_nobody_there_times_out_or_is_unreachable(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan, out, started = cluster
    _start_all(plan, out, started)
    text = (out / "clients" / "alice" / "cluster.toml").read_text()
    # TEST-NET-1 (RFC 5737): never routed; the SYN goes nowhere or has no route
    text = text.replace(f"{HOST}:{plan.parties[1].grpc_port}", "192.0.2.1:50051")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for sub in ("tls", "secrets"):
        (wrong / sub).symlink_to(out / "clients" / "alice" / sub)
    (wrong / "cluster.toml").write_text(text)
    reports = check(load_config(wrong / "cluster.toml"), "alice", timeout=0.5)
    s1 = _by_peer(reports, "grpc")["s1"]
    assert not s1.reachable  # type: ignore[attr-defined]
    assert "192.0.2.1:50051" in s1.detail  # type: ignore[attr-defined]
    # which of these depends on the network between (a firewall may also reject)
    verdicts = ("timed out after 0.5s", "no route", "connection refused")
    assert any(v in s1.detail for v in verdicts), s1.detail  # type: ignore[attr-defined]
    assert _by_peer(reports, "grpc")["s0"].ok  # type: ignore[attr-defined]


def test_dropped_connection_attempts_time_out(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A port whose SYNs are silently dropped (as behind a firewall) is named as a timeout."""
    plan, out, started = cluster
    _start_all(plan, out, started, skip={"s1/grpc"})
    # a listener that never accepts, its backlog full: Linux drops further SYNs
    black_hole = socket.socket()
    black_hole.bind((HOST, plan.parties[1].grpc_port))
    black_hole.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect((HOST, plan.parties[1].grpc_port))
        fillers.append(filler)
    try:
        reports = check(
            load_config(out / "clients" / "alice" / "cluster.toml"), "alice", timeout=0.5
        )
    finally:
        for sock in [*fillers, black_hole]:
            sock.close()
    s1 = _by_peer(reports, "grpc")["s1"]
    assert not s1.reachable  # type: ignore[attr-defined]
    assert "timed out after 0.5s" in s1.detail, s1.detail  # type: ignore[attr-defined]
    assert f"{HOST}:{plan.parties[1].grpc_port}" in s1.detail  # type: ignore[attr-defined]
    assert _by_peer(reports, "grpc")["s0"].ok  # type: ignore[attr-defined]


def test_certificate_of_another_ca_is_named(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan, out, started = cluster
    other = tmp_path / "other"
    provision(other, plan)  # same names and addresses, another CA
    # the dealer answers with another cluster's certificate
    _start_all(plan, out, started, skip={"dealer/mpc"})
    started.append(Listener((HOST, plan.dealer.mpc_port), _identity(other / "dealer", "dealer")))
    reports = check(load_config(out / "s1" / "cluster.toml"), "s1", timeout=2)
    dealer = _by_peer(reports, "mpc")["dealer"]
    assert dealer.reachable and not dealer.tls_ok  # type: ignore[attr-defined]
    assert "not signed by this cluster's CA" in dealer.detail  # type: ignore[attr-defined]
    # and the other way round: our certificate is from another CA, so the listener refuses it
    reports = check(load_config(other / "s0" / "cluster.toml"), "s0", timeout=2)
    s1 = _by_peer(reports, "mpc")["s1"]
    assert s1.reachable and not s1.tls_ok  # type: ignore[attr-defined]
    assert "not signed by this cluster's CA" in s1.detail or "rejected our certificate" in s1.detail  # type: ignore[attr-defined]


def test_listener_rejecting_our_certificate_is_named(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan, out, started = cluster
    _start_all(plan, out, started, skip={"s1/mpc"})
    # s1's listener trusts another CA but presents a certificate of ours: s0's is refused
    other = tmp_path / "other"
    provision(other, plan)
    identity = TlsIdentity(
        other / "s1" / "tls" / "ca.pem",
        out / "s1" / "tls" / "s1.pem",
        out / "s1" / "tls" / "s1.key",
    )
    started.append(Listener((HOST, plan.parties[1].mpc_port), identity))
    reports = check(load_config(out / "s0" / "cluster.toml"), "s0", timeout=2)
    s1 = _by_peer(reports, "mpc")["s1"]
    assert s1.reachable and not s1.tls_ok, s1.detail  # type: ignore[attr-defined]
    assert "rejected our certificate" in s1.detail  # type: ignore[attr-defined]


def test_grpc_certificate_for_another_host_is_named(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan, out, started = cluster
    _start_all(plan, out, started, skip={"s1/grpc"})
    ca = TlsFiles(out / "ca" / "ca.pem", out / "ca" / "ca.key")
    files = issue_server_cert(ca, tmp_path / "elsewhere", "s1", ["10.9.9.9"])
    started.append(TlsServer(plan.parties[1].grpc_port, files.cert, files.key))
    reports = check(load_config(out / "clients" / "alice" / "cluster.toml"), "alice", timeout=2)
    s1 = _by_peer(reports, "grpc")["s1"]
    assert s1.reachable and not s1.tls_ok  # type: ignore[attr-defined]
    assert "not valid for that host" in s1.detail  # type: ignore[attr-defined]


def test_free_ports_avoid_the_ephemeral_range_and_never_repeat() -> None:
    """Outgoing connections take their local port from the ephemeral range; a listener's
    port chosen there could be taken before it binds (a cluster failing to start)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(20000 <= port < low for port in ports)
