"""Two parties in one process: queue-based ``exchange`` callables and a two-thread runner.

For tests and in-process benchmarks only; a server passes its own
``exchange`` (its authenticated link to the peer) to the engine instead.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TypeVar

from ppml.servers.mpc.fast.prg import Ring

T = TypeVar("T")


def queue_exchanges(
    timeout_s: float = 30.0,
) -> tuple[Callable[[Ring], Ring], Callable[[Ring], Ring]]:
    """Connected ``(exchange_0, exchange_1)``: each sends a copy of its array, gets the peer's."""
    inbox: tuple[queue.Queue[Ring], queue.Queue[Ring]] = (queue.Queue(), queue.Queue())

    def make(me: int) -> Callable[[Ring], Ring]:
        def exchange(mine: Ring) -> Ring:
            inbox[1 - me].put(mine.copy())
            return inbox[me].get(timeout=timeout_s)

        return exchange

    return make(0), make(1)


def run_pair(
    party0: Callable[[], T], party1: Callable[[], T], timeout_s: float = 60.0
) -> tuple[T, T]:
    """Run ``party0`` here and ``party1`` in a thread; return both results or re-raise an error."""
    result: dict[int, T] = {}
    errors: list[BaseException] = []

    def run1() -> None:
        try:
            result[1] = party1()
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    thread = threading.Thread(target=run1, name="fast-party-1", daemon=True)
    thread.start()
    try:
        result[0] = party0()
    finally:
        thread.join(timeout_s)
    if errors:
        raise errors[0]
    if thread.is_alive():
        raise TimeoutError("party 1 did not finish")
    return result[0], result[1]
