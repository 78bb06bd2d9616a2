"""The test relay forwards both ways, records what passes, and can delay it."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from ppml.servers.mpc.network.relay import Relay
from ppml.servers.mpc.network.tls_links import recv_exact


def _echo_server() -> tuple[socket.socket, tuple[str, int]]:
    server = socket.create_server(("127.0.0.1", 0))
    return server, server.getsockname()[:2]


def test_forwards_both_ways_and_records(tmp_path: Path) -> None:
    server, address = _echo_server()
    with Relay(address, record_dir=tmp_path) as relay:
        client = socket.create_connection(relay.address)
        upstream, _ = server.accept()
        payload = bytes(range(256)) * 4000  # 1 MB, more than one chunk
        client.sendall(payload)
        assert recv_exact(upstream, len(payload)) == payload
        upstream.sendall(b"answer")
        assert recv_exact(client, 6) == b"answer"
        client.close()
        upstream.close()
    server.close()
    assert (tmp_path / "conn0-up.bin").read_bytes() == payload
    assert (tmp_path / "conn0-down.bin").read_bytes() == b"answer"


def test_adds_a_one_way_delay(tmp_path: Path) -> None:
    server, address = _echo_server()
    with Relay(address, delay_s=0.2) as relay:
        client = socket.create_connection(relay.address)
        upstream, _ = server.accept()
        started = time.monotonic()
        client.sendall(b"ping")
        assert recv_exact(upstream, 4) == b"ping"
        upstream.sendall(b"pong")
        assert recv_exact(client, 4) == b"pong"
        assert time.monotonic() - started >= 0.4  # a lower bound: never delivered early
        client.close()
        upstream.close()
    server.close()
