"""The process's MPC listener admits exactly the configured rank, for the open epoch."""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ppml.client.deploy.local import free_port
from ppml.proto.deploy.tls import issue_server_cert, make_ca
from ppml.servers.mpc.network.listener import ADMIT_TIMEOUT_S, Listener, RefusalLog
from ppml.servers.mpc.network.mesh import new_epoch_tag
from ppml.servers.mpc.network.tls_links import RECV, SEND, Hello, TlsIdentity, dial, make_context

NAMES = ("server-0", "server-1")


def _identity(directory: Path, ca_name: str, name: str) -> TlsIdentity:
    ca = make_ca(directory / ca_name, ca_name)
    files = issue_server_cert(ca, directory / ca_name, name, ["127.0.0.1"])
    return TlsIdentity(ca.cert, files.cert, files.key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsIdentity]:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory / "cluster")
    found = {}
    for name in (*NAMES, "intruder"):
        files = issue_server_cert(ca, directory / "cluster", name, ["127.0.0.1"])
        found[name] = TlsIdentity(ca.cert, files.cert, files.key)
    found["foreign"] = _identity(directory, "foreign", "server-0")  # right name, other CA
    return found


@pytest.fixture
def listener(pki: dict[str, TlsIdentity]) -> Iterator[Listener]:
    server = Listener(("127.0.0.1", free_port()), pki["server-1"])
    yield server
    server.close()


def _dial(listener: Listener, who: TlsIdentity, hello: Hello, expect: str = "server-1") -> object:
    context = make_context(who, server_side=False)
    return dial(listener.address, context, expect, hello, time.monotonic() + 1.0)


def test_the_configured_rank_is_admitted_in_both_directions(
    listener: Listener, pki: dict[str, TlsIdentity]
) -> None:
    tag = new_epoch_tag()
    listener.open_epoch(tag, 1, NAMES)
    up = _dial(listener, pki["server-0"], Hello(tag, 0, 1, SEND))
    down = _dial(listener, pki["server-0"], Hello(tag, 0, 1, RECV))
    links = listener.collect({(0, SEND), (0, RECV)}, time.monotonic() + 5)
    assert set(links) == {(0, SEND), (0, RECV)}
    with pytest.raises(RuntimeError, match="no MPC link"):  # a second link for the same slot
        _dial(listener, pki["server-0"], Hello(tag, 0, 1, SEND))
    for sock in (up, down, *links.values()):
        sock.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("who", "sender", "stale"),
    [
        ("server-0", 0, True),  # stale or unknown epoch
        ("intruder", 0, False),  # cluster CA, but not rank 0's certificate
        ("server-1", 0, False),  # a member claiming another rank
        ("server-0", 1, False),  # a rank that does not dial this one
    ],
)
def test_everything_else_is_refused(
    listener: Listener, pki: dict[str, TlsIdentity], who: str, sender: int, stale: bool
) -> None:
    tag = new_epoch_tag()
    listener.open_epoch(tag, 1, NAMES)
    hello = Hello(new_epoch_tag() if stale else tag, sender, 1, SEND)
    with pytest.raises(RuntimeError, match="no MPC link"):
        _dial(listener, pki[who], hello)
    with pytest.raises(RuntimeError, match="did not link"):
        listener.collect({(sender, SEND)}, time.monotonic() + 0.2)


def test_a_certificate_from_another_ca_is_refused(
    listener: Listener, pki: dict[str, TlsIdentity]
) -> None:
    tag = new_epoch_tag()
    listener.open_epoch(tag, 1, NAMES)
    with pytest.raises(RuntimeError):
        _dial(listener, pki["foreign"], Hello(tag, 0, 1, SEND))


def test_the_dialer_checks_the_listener_name_before_saying_anything(
    listener: Listener, pki: dict[str, TlsIdentity]
) -> None:
    tag = new_epoch_tag()
    listener.open_epoch(tag, 1, NAMES)
    with pytest.raises(RuntimeError, match="presented 'server-1', expected 'dealer'"):
        _dial(listener, pki["server-0"], Hello(tag, 0, 1, SEND), expect="dealer")


def test_closing_the_epoch_drops_waiting_links(
    listener: Listener, pki: dict[str, TlsIdentity]
) -> None:
    tag = new_epoch_tag()
    listener.open_epoch(tag, 1, NAMES)
    sock = _dial(listener, pki["server-0"], Hello(tag, 0, 1, SEND))
    listener.close_epoch(tag)
    assert sock.recv(1) == b""  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="closed"):
        listener.collect({(0, SEND)}, time.monotonic() + 0.2)


def _held_connections(listener: Listener, count: int) -> list[socket.socket]:
    return [socket.create_connection(listener.address, timeout=5) for _ in range(count)]


def test_strangers_holding_connections_cannot_keep_a_member_out(
    listener: Listener, pki: dict[str, TlsIdentity]
) -> None:
    tag = new_epoch_tag()
    listener.open_epoch(tag, 1, NAMES)
    held = _held_connections(listener, 300)  # silent: no TLS hello, never closed by them
    try:
        # beyond the handshake slots they are closed at once (EOF on the stranger's side)
        held[-1].settimeout(5)
        assert held[-1].recv(1) == b""
        context = make_context(pki["server-0"], server_side=False)
        started = time.monotonic()
        sock = dial(listener.address, context, "server-1", Hello(tag, 0, 1, SEND), started + 20)
        assert time.monotonic() - started < ADMIT_TIMEOUT_S + 5
        assert set(listener.collect({(0, SEND)}, time.monotonic() + 5)) == {(0, SEND)}
        sock.close()
    finally:
        for conn in held:
            conn.close()


def test_the_accept_loop_survives_an_error_admitting_a_connection(
    listener: Listener, pki: dict[str, TlsIdentity], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_submit = listener._pool.submit
    failures: list[int] = []

    def submit_failing_once(*args: object) -> object:
        if not failures:
            failures.append(1)
            raise RuntimeError("can't start new thread")
        return real_submit(*args)

    monkeypatch.setattr(listener._pool, "submit", submit_failing_once)
    tag = new_epoch_tag()
    listener.open_epoch(tag, 1, NAMES)
    context = make_context(pki["server-0"], server_side=False)
    deadline = time.monotonic() + 10
    sock = dial(listener.address, context, "server-1", Hello(tag, 0, 1, SEND), deadline)
    assert failures == [1]  # the first attempt hit the error; the dial's retry got in
    sock.close()


def test_refusals_are_logged_as_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    refusals = RefusalLog(interval_s=0.2)
    with caplog.at_level(logging.WARNING, logger="ppml.servers.mpc.network.listener"):
        for index in range(1000):
            refusals.note(("10.0.0.1", index), "no certificate")
        assert len(caplog.records) == 1
        deadline = time.monotonic() + 5
        while len(caplog.records) < 2:
            assert time.monotonic() < deadline
            refusals.note(("10.0.0.1", 0), "no certificate")
    assert "refused 1 MPC" in caplog.records[0].getMessage()
    later = re.match(r"refused (\d+) MPC", caplog.records[1].getMessage())
    assert later is not None and int(later.group(1)) >= 1000  # the 999 held back, and more
