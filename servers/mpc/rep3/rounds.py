"""Protocols as generators of communication rounds, and running several in lockstep.

A protocol step is a generator that yields one :class:`Round` at a time
(what this party sends to whom, and what it expects from whom) and is sent
back what it received. Writing protocols this way lets :func:`gather`
merge the rounds of independent protocols into one exchange per round (for
example a truncation's opening riding on a comparison circuit's first AND),
so latency is the longest protocol's round count, not the sum
(:func:`gather`).

Every party runs the same protocols in the same order with the same shapes,
so a receiver knows what each message holds: messages carry raw array bytes
only (:class:`Expect` gives shape and dtype), and :class:`Net` moves one list
of arrays per peer per round.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
T = TypeVar("T")


@dataclass(frozen=True)
class Expect:
    """One array this party will receive: its shape and dtype."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    @classmethod
    def like(cls, array: Array) -> Expect:
        return cls(tuple(array.shape), array.dtype)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # np.prod costs ~10 us a call


@dataclass
class Round:
    """One round of one protocol: arrays to send per peer, arrays expected per peer."""

    send: dict[int, list[Array]] = field(default_factory=dict)
    expect: dict[int, list[Expect]] = field(default_factory=dict)


Received = dict[int, list[Array]]
Steps = Generator[Round, Received, T]


class Net(Protocol):
    """This party's links to the other two: one simultaneous exchange per call."""

    rank: int

    def exchange(self, send: dict[int, list[Array]], expect: dict[int, list[Expect]]) -> Received:
        """Send every list, then receive every expected list (all arrays of one peer at once)."""
        ...


def run(net: Net, steps: Steps[T]) -> T:
    """Drive a protocol to its end over ``net``, one exchange per round."""
    try:
        step = next(steps)
        while True:
            step = steps.send(net.exchange(step.send, step.expect))
    except StopIteration as stop:
        return stop.value


def gather(*protocols: Steps[Any]) -> Steps[list[Any]]:
    """Run independent protocols side by side, merging their ``k``-th rounds into one.

    Results come back in the order given; the rounds taken are the longest
    protocol's. Every party must gather the same protocols in the same order.
    """
    results: list[Any] = [None] * len(protocols)
    pending: dict[int, Round] = {}
    for i, proto in enumerate(protocols):
        _advance(proto, None, i, pending, results)
    while pending:
        if len(pending) == 1:  # the others are done: pass this one's rounds through as they are
            ((i, step),) = pending.items()
            got = yield step
            pending = {}
            _advance(protocols[i], got, i, pending, results)
            continue
        current = sorted(pending.items())
        merged = Round()
        for _, step in current:
            for peer, arrays in step.send.items():
                merged.send.setdefault(peer, []).extend(arrays)
            for peer, specs in step.expect.items():
                merged.expect.setdefault(peer, []).extend(specs)
        got = yield merged
        offsets = dict.fromkeys(got, 0)
        pending = {}
        for i, step in current:
            mine: Received = {}
            for peer, specs in step.expect.items():
                start = offsets[peer]
                mine[peer] = got[peer][start : start + len(specs)]
                offsets[peer] = start + len(specs)
            _advance(protocols[i], mine, i, pending, results)
    return results


def _advance(
    proto: Steps[Any], value: Received | None, i: int, pending: dict[int, Round], results: list[Any]
) -> None:
    try:
        pending[i] = proto.send(value) if value is not None else next(proto)
    except StopIteration as stop:
        results[i] = stop.value


def pack(arrays: Sequence[Array]) -> bytes:
    """The bytes of a message: the arrays' raw little-endian bytes, back to back."""
    return b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)


def unpack(data: bytes | bytearray | memoryview, specs: Sequence[Expect]) -> list[Array]:
    """Split a message back into arrays; raises ValueError if its size is not what was expected."""
    total = sum(s.nbytes for s in specs)
    if len(data) != total:
        raise ValueError(f"message of {len(data)} bytes, expected {total}")
    out: list[Array] = []
    offset = 0
    for s in specs:
        out.append(
            np.frombuffer(data, dtype=s.dtype, count=s.nbytes // s.dtype.itemsize, offset=offset)
            .reshape(s.shape)
            .copy()
        )
        offset += s.nbytes
    return out
