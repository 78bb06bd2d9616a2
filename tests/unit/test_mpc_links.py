"""Framed one-way links (over socket pairs), the hello, and the TLS settings."""

from __future__ import annotations

import socket
import ssl
import threading
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from ppml.proto.deploy.tls import issue_server_cert, make_ca
from ppml.servers.mpc.network import links
from ppml.servers.mpc.network.links import DIRECT_BYTES, HEADER, MAX_FRAME_BYTES, InLink, OutLink
from ppml.servers.mpc.network.mesh import Peer, SessionParams, new_epoch_tag
from ppml.servers.mpc.network.tls_links import RECV, SEND, Hello, TlsIdentity, make_context


class Pair:
    """An OutLink and the InLink at the other end of a socket pair."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        a, b = socket.socketpair()
        self.sockets = (a, b)
        self.out = OutLink(a, "peer", self._error)  # type: ignore[arg-type]
        self.inn = InLink(b, "peer", self._error)  # type: ignore[arg-type]

    def _error(self, reason: str) -> RuntimeError:
        self.errors.append(reason)
        return RuntimeError(reason)

    def close(self) -> None:
        self.out.close(5.0)
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    link = Pair()
    yield link
    link.close()


def _view(tensor: torch.Tensor) -> memoryview:
    from ppml.servers.mpc.network.links import byte_view

    return byte_view(tensor)


@pytest.mark.parametrize(
    "tensor",
    [
        torch.tensor(7),
        torch.arange(10, dtype=torch.int64),
        torch.zeros(0, dtype=torch.int64),
        torch.randn(3, 4),
        torch.tensor([True, False, True]),
        torch.arange(DIRECT_BYTES, dtype=torch.int64).reshape(-1, 16),  # queued, coalesced
        torch.arange(600_000, dtype=torch.int64),  # larger than the socket buffers
    ],
    ids=["scalar", "small", "empty", "float", "bool", "medium", "large"],
)
def test_a_tensor_arrives_intact(pair: Pair, tensor: torch.Tensor) -> None:
    request = pair.out.post(_view(tensor))
    received = {}

    def read() -> None:
        received["t"] = pair.inn.read_into(torch.empty_like(tensor))

    reader = threading.Thread(target=read)
    reader.start()
    request.wait()
    reader.join(10)
    assert torch.equal(received["t"], tensor)
    assert pair.errors == []


def test_posted_receives_complete_in_order(pair: Pair) -> None:
    first, second, third = (torch.full((4,), v, dtype=torch.int64) for v in (1, 2, 3))
    for tensor in (first, second, third):
        pair.out.post(_view(tensor)).wait()
    a, b = torch.empty(4, dtype=torch.int64), torch.empty(4, dtype=torch.int64)
    request_a, request_b = pair.inn.post(a), pair.inn.post(b)
    request_b.wait()  # waiting on the later one reads the earlier one first
    assert request_a.is_completed() and torch.equal(a, first) and torch.equal(b, second)
    assert torch.equal(pair.inn.read_into(torch.empty(4, dtype=torch.int64)), third)


def test_a_non_contiguous_target_is_filled(pair: Pair) -> None:
    sent = torch.arange(6, dtype=torch.int64).reshape(2, 3)
    pair.out.post(_view(sent)).wait()
    target = torch.zeros(3, 2, dtype=torch.int64).t()
    pair.inn.post(target).wait()
    assert torch.equal(target, sent)


def test_objects_travel_as_bytes(pair: Pair) -> None:
    pair.out.post(memoryview(b"terminate")).wait()
    assert pair.inn.read_bytes() == b"terminate"


def test_both_sides_sending_large_payloads_at_once_do_not_deadlock() -> None:
    a, b = Pair(), Pair()  # a: left -> right, b: right -> left
    payload = torch.arange(2_000_000, dtype=torch.int64)  # 16 MB each way
    try:
        sent = [a.out.post(_view(payload)), b.out.post(_view(payload))]
        got_a = a.inn.read_into(torch.empty_like(payload))
        got_b = b.inn.read_into(torch.empty_like(payload))
        for request in sent:
            request.wait()
        assert torch.equal(got_a, payload) and torch.equal(got_b, payload)
    finally:
        a.close()
        b.close()


def test_a_size_mismatch_is_a_protocol_error(pair: Pair) -> None:
    pair.out.post(_view(torch.zeros(3, dtype=torch.int64))).wait()
    with pytest.raises(RuntimeError, match="protocol error"):
        pair.inn.read_into(torch.empty(4, dtype=torch.int64))


def test_a_closed_peer_fails_the_read(pair: Pair) -> None:
    pair.sockets[0].shutdown(socket.SHUT_RDWR)
    with pytest.raises(RuntimeError, match="closed the link"):
        pair.inn.read_into(torch.empty(1, dtype=torch.int64))


def test_a_silent_peer_fails_the_read_after_the_timeout(pair: Pair) -> None:
    pair.sockets[1].settimeout(0.2)
    with pytest.raises(RuntimeError, match=r"no data from peer for 0\.2 s"):
        pair.inn.read_into(torch.empty(1, dtype=torch.int64))


def test_a_broken_link_fails_every_later_send(pair: Pair) -> None:
    pair.sockets[1].close()
    big = torch.zeros(1_000_000, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="sending to peer"):
        for _ in range(20):
            pair.out.post(_view(big)).wait()
    with pytest.raises(RuntimeError):
        pair.out.post(_view(torch.zeros(1, dtype=torch.int64)))


# ---------------------------------------------------------------- hello


@pytest.mark.parametrize("sender", [0, 1, 3])
@pytest.mark.parametrize("receiver", [1, 2, 4])
@pytest.mark.parametrize("direction", [SEND, RECV])
def test_hello_round_trip(sender: int, receiver: int, direction: int) -> None:
    hello = Hello(new_epoch_tag(), sender, receiver, direction)
    assert Hello.unpack(hello.pack()) == hello
    assert len(hello.pack()) == Hello.SIZE


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1],
        lambda b: b"x" + b[1:],
        lambda b: b[:8] + b"\x00\x02" + b[10:],
        lambda b: b[:-1] + b"\x07",
    ],
    ids=["short", "magic", "version", "direction"],
)
def test_hello_rejects_anything_else(mutate: Any) -> None:
    with pytest.raises(ValueError):
        Hello.unpack(mutate(Hello(bytes(16), 0, 1, SEND).pack()))


# ---------------------------------------------------------------- TLS settings


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> TlsIdentity:
    directory = tmp_path_factory.mktemp("tls")
    ca = make_ca(directory)
    files = issue_server_cert(ca, directory, "server-1", ["127.0.0.1"])
    return TlsIdentity(ca.cert, files.cert, files.key)


@pytest.mark.parametrize("server_side", [True, False])
def test_contexts_are_mutual_tls_13_without_tickets(
    identity: TlsIdentity, server_side: bool
) -> None:
    context = make_context(identity, server_side)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.options & ssl.OP_NO_TICKET
    if server_side:
        assert context.num_tickets == 0


def _params(identity: TlsIdentity, **changes: Any) -> SessionParams:
    fields: dict[str, Any] = {
        "rank": 1,
        "world_size": 2,
        "peers": (
            Peer("server-0"),
            Peer("server-1", "127.0.0.1", 1),
            Peer("dealer", "127.0.0.1", 2),
        ),
        "identity": identity,
        "epoch": new_epoch_tag(),
    }
    fields.update(changes)
    return SessionParams(**fields)


def test_session_params_are_validated(identity: TlsIdentity) -> None:
    params = _params(identity)
    assert params.names == ("server-0", "server-1", "dealer")
    assert params.join_timeout_s == params.timeout_s == 120.0
    with pytest.raises(ValueError, match="epoch"):
        _params(identity, epoch=b"short")
    with pytest.raises(ValueError, match="own certificate name"):
        _params(identity, peers=(Peer("a"), Peer("a", "h", 1)))
    with pytest.raises(ValueError, match="rank"):
        _params(identity, rank=5)
    with pytest.raises(ValueError, match="MPC address"):
        _ = Peer("server-0").address
    assert len({new_epoch_tag() for _ in range(100)}) == 100


# ---------------------------------------------------------------- reductions


def test_integer_reductions_leave_the_callers_tensor_alone() -> None:
    from torch.distributed import ReduceOp

    from ppml.servers.mpc.network.reduce_ops import combine

    own = torch.tensor([2**62, 1], dtype=torch.int64)
    received = [torch.tensor([2**62, 2]), torch.tensor([2**62, 4])]
    total = combine([received[0], own, received[1]], ReduceOp.SUM, own=1)
    assert total.tolist() == [-(2**62), 7]  # wraps mod 2^64
    assert own.tolist() == [2**62, 1]
    xor = combine([own, torch.tensor([3, 3])], ReduceOp.BXOR, own=0)
    assert xor.tolist() == [2**62 ^ 3, 2]
    assert own.tolist() == [2**62, 1]


def test_float_reductions_run_in_rank_order_without_touching_inputs() -> None:
    from torch.distributed import ReduceOp

    from ppml.servers.mpc.network.reduce_ops import combine

    parts = [torch.tensor([v], dtype=torch.float64) for v in (1e16, 1.0, -1e16)]
    expected = (parts[0] + parts[1]) + parts[2]
    assert torch.equal(combine(parts, ReduceOp.SUM, own=2), expected)
    assert parts[0].item() == 1e16
    with pytest.raises(ValueError, match="unsupported"):
        combine(parts, ReduceOp.MAX, own=0)


def _raw_pair(max_frame_bytes: int) -> tuple[socket.socket, InLink, list[str]]:
    errors: list[str] = []

    def error(reason: str) -> RuntimeError:
        errors.append(reason)
        return RuntimeError(reason)

    a, b = socket.socketpair()
    return a, InLink(b, "peer", error, max_frame_bytes), errors  # type: ignore[arg-type]


@pytest.mark.parametrize("read", ["bytes", "tensor"])
def test_a_declared_length_over_the_cap_ends_the_link_before_any_allocation(read: str) -> None:
    sender, link, errors = _raw_pair(max_frame_bytes=1 << 20)
    sender.sendall(HEADER.pack(1 << 62))  # 4 EiB declared, nothing sent
    tracemalloc.start()
    try:
        with pytest.raises(RuntimeError, match="over the limit of 1048576"):
            if read == "bytes":
                link.read_bytes()
            else:
                link.read_into(torch.empty(4, dtype=torch.int64))
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
        sender.close()
    assert len(errors) == 1 and "declared a frame of 4611686018427387904 bytes" in errors[0]


def test_a_long_frame_grows_with_the_bytes_that_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(links, "GROW_BYTES", 1024)
    sender, link, _ = _raw_pair(max_frame_bytes=MAX_FRAME_BYTES)
    payload = bytes(range(256)) * 400  # 100 KiB: read in growing steps
    sender.sendall(HEADER.pack(len(payload)) + payload)
    assert link.read_bytes() == payload
    sender.sendall(HEADER.pack(1 << 30) + b"x" * 5000)  # 1 GiB declared (under the cap), 5 kB sent
    sender.close()
    tracemalloc.start()
    try:
        with pytest.raises(RuntimeError, match="closed the link"):
            link.read_bytes()
        assert tracemalloc.get_traced_memory()[1] < 1 << 20  # not the gigabyte
    finally:
        tracemalloc.stop()
