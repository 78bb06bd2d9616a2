"""Three parties in one process: queue links with round and byte counts, and a runner.

For tests and in-process benchmarks only; a server's :class:`Net` is its
authenticated links to the other two servers (``servers/mpc/rep3/service``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ppml.servers.mpc.rep3.keys import PARTIES
from ppml.servers.mpc.rep3.rounds import Array, Expect, Received

T = TypeVar("T")


class QueueNet:
    """One party's end of an in-process mesh; counts its rounds and the bytes it sends, and
    keeps every array it receives in ``received`` (for tests of what a party sees)."""

    def __init__(
        self, rank: int, boxes: dict[tuple[int, int], queue.Queue[list[Array]]], timeout_s: float
    ) -> None:
        self.rank = rank
        self._boxes = boxes
        self._timeout_s = timeout_s
        self.rounds = 0
        self.bytes_sent = 0
        self.received: list[Array] = []

    def exchange(self, send: dict[int, list[Array]], expect: dict[int, list[Expect]]) -> Received:
        if not send and not expect:
            return {}
        self.rounds += 1
        for peer, arrays in send.items():
            self.bytes_sent += sum(a.nbytes for a in arrays)
            self._boxes[(self.rank, peer)].put([a.copy() for a in arrays])
        got: Received = {}
        for peer, specs in expect.items():
            arrays = self._boxes[(peer, self.rank)].get(timeout=self._timeout_s)
            if [Expect.like(a) for a in arrays] != specs:
                raise ValueError(f"party {self.rank}: party {peer} sent other arrays than expected")
            got[peer] = arrays
            self.received.extend(arrays)
        return got


def mesh(timeout_s: float = 60.0) -> tuple[QueueNet, QueueNet, QueueNet]:
    boxes: dict[tuple[int, int], queue.Queue[list[Array]]] = {
        (i, j): queue.Queue() for i in range(PARTIES) for j in range(PARTIES) if i != j
    }
    return tuple(QueueNet(i, boxes, timeout_s) for i in range(PARTIES))  # type: ignore[return-value]


def run_three(parties: list[Callable[[], Any]], timeout_s: float = 120.0) -> list[Any]:
    """Run party 0 here and parties 1, 2 in threads; return the three results or re-raise."""
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = parties[i]()
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in (1, 2)]
    for t in threads:
        t.start()
    run(0)
    for t in threads:
        t.join(timeout_s)
    if errors:
        raise errors[0]
    if any(t.is_alive() for t in threads):
        raise TimeoutError("a party did not finish")
    return [results[i] for i in range(PARTIES)]
