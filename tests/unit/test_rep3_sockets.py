"""Tests for ppml.servers.mpc.rep3.sockets: three parties as threads over real loopback TCP."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from ppml.servers.mpc.fast.prg import KeyedPRG, Ring
from ppml.servers.mpc.rep3 import keys, rss
from ppml.servers.mpc.rep3.local import run_three
from ppml.servers.mpc.rep3.rounds import Expect, Round, run
from ppml.servers.mpc.rep3.sockets import SocketNet, connect, listen

RNG = KeyedPRG()


def tcp_mesh(body: Callable[[SocketNet], Any], timeout_s: float = 20.0) -> list[Any]:
    listeners = [listen() for _ in range(3)]
    addresses = [s.getsockname()[:2] for s in listeners]

    def party(i: int) -> Any:
        net = connect(i, listeners[i], addresses, timeout_s)
        try:
            return body(net)
        finally:
            net.close()

    try:
        return run_three([lambda i=i: party(i) for i in range(3)])
    finally:
        for s in listeners:
            s.close()


def test_products_over_tcp_are_exact_and_counted_like_the_queue_links() -> None:
    x, y = RNG.ring((50_000,)), RNG.ring((50_000,))  # 400 kB frames: partial sends and reads
    s1, s2, t1, t2 = (RNG.ring(x.shape) for _ in range(4))
    x_sh, y_sh = [x - s1 - s2, s1, s2], [y - t1 - t2, t1, t2]

    def body(net: SocketNet) -> tuple[Ring, int, int]:
        corr = run(net, keys.agree(net.rank))
        xs = run(net, rss.reshare(corr, x_sh[net.rank]))
        ys = run(net, rss.reshare(corr, y_sh[net.rank]))
        prod = run(net, rss.open_all(net.rank, run(net, rss.mul(corr, xs, ys))))
        return prod, net.rounds, net.bytes_sent

    results = tcp_mesh(body)
    for prod, rounds, sent in results:
        assert np.array_equal(prod, x * y)
        assert rounds == 5  # keys, two inputs, the product, the opening
        assert sent == 32 + 4 * x.nbytes


def test_a_frame_of_the_wrong_size_is_refused() -> None:
    def body(net: SocketNet) -> Any:
        n = 3 if net.rank == 1 else 2  # party 1 sends party 0 one word too many
        msg = np.zeros(n, dtype=np.int64)
        prev, nxt = keys.prev_of(net.rank), keys.next_of(net.rank)
        try:
            net.exchange({prev: [msg]}, {nxt: [Expect((2,), np.dtype(np.int64))]})
        except ValueError as e:
            return str(e)
        return None

    results = tcp_mesh(body)
    assert results[0] == "party 1 sent 24 bytes, expected 16"
    assert results[1] is None and results[2] is None


def test_a_closed_peer_is_reported_and_a_silent_one_times_out() -> None:
    one = [Expect((1,), np.dtype(np.int64))]

    def closing(net: SocketNet) -> Any:
        if net.rank == 2:
            return None  # closes its links without sending
        with pytest.raises(ConnectionError, match="party 2 closed the link"):
            net.exchange({}, {2: one})
        return True

    assert tcp_mesh(closing)[:2] == [True, True]
    timed_out = threading.Barrier(3)

    def silent(net: SocketNet) -> Any:
        if net.rank < 2:
            with pytest.raises(TimeoutError, match="no progress"):
                net.exchange({}, {2: one})
        timed_out.wait(10.0)  # party 2 keeps its links open, silent, until both gave up
        return True

    assert tcp_mesh(silent, timeout_s=0.5) == [True, True, True]


def test_a_connection_claiming_a_wrong_rank_is_refused() -> None:
    listener = listen()
    intruder = socket.create_connection(listener.getsockname()[:2])
    intruder.sendall(bytes([0]))  # party 0 accepts only higher ranks
    try:
        with pytest.raises(ConnectionError, match="said it was party 0"):
            connect(0, listener, [], timeout_s=5.0)
    finally:
        intruder.close()
        listener.close()


def test_round_with_nothing_to_do_is_free() -> None:
    def body(net: SocketNet) -> int:
        run(net, _idle())
        return net.rounds

    assert tcp_mesh(body) == [0, 0, 0]


def _idle() -> Any:
    yield Round()
    return None


def test_received_arrays_arrive_in_order_and_are_writable() -> None:
    def body(net: SocketNet) -> list[Any]:
        prev, nxt = keys.prev_of(net.rank), keys.next_of(net.rank)
        mine = [np.arange(3, dtype=np.int64) + 10 * net.rank, np.full((2, 2), net.rank, np.uint64)]
        got = net.exchange({prev: mine}, {nxt: [Expect.like(a) for a in mine]})[nxt]
        for a in got:
            a += 1  # the engine may work in place on what it receives
        return got

    results = tcp_mesh(body)
    for rank, (first, second) in enumerate(results):
        nxt = keys.next_of(rank)
        assert np.array_equal(first, np.arange(3) + 10 * nxt + 1)
        assert np.array_equal(second, np.full((2, 2), nxt + 1, np.uint64))
