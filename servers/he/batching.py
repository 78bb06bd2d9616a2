"""Concurrent CKKS requests of one identity share an evaluation.

Requests under different keys can never share a ciphertext, but requests of
the *same* identity, model and context can: each client packs its images
from region 0 of a ``single``-layout ciphertext and leaves the rest zero, so
the server rotates request ``k``'s ciphertext right by its offset (``offset *
R`` slots: one or two rotations, ~10 ms) and adds them up. One evaluation
(~0.4 s) then serves up to a group's worth of images, and every member gets
the same output ciphertext with the row its images start at: all of it
decrypts under the same identity's key, so nothing crosses tenants.

Like the MPC path's dynamic batching, nothing waits on purpose: the first
request of a batch leads it and takes the server's evaluation lock; requests
that arrive while the lock is busy join the open batch until the leader gets
the lock and closes it. Only ``single``-layout requests of one group are
merged (``batch``-layout requests fill their groups themselves, and would
need one rotation per kernel position).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tenseal import sealapi

Key = tuple[str, str, str]  # identity, model id, context fingerprint


@dataclass
class _Member:
    ciphertext: sealapi.Ciphertext
    rows: int
    offset: int
    done: threading.Event = field(default_factory=threading.Event)
    result: bytes = b""
    error: BaseException | None = None


@dataclass
class _Batch:
    members: list[_Member] = field(default_factory=list)
    used: int = 0
    closed: bool = False


@dataclass(frozen=True)
class Shared:
    ciphertext: bytes
    first_row: int
    requests: int


class Batcher:
    def __init__(self, run_lock: threading.Lock) -> None:
        self._run_lock = run_lock
        self._lock = threading.Lock()
        self._open: dict[Key, _Batch] = {}

    def submit(
        self,
        key: Key,
        ciphertext: sealapi.Ciphertext,
        rows: int,
        capacity: int,
        evaluate: Callable[[list[tuple[sealapi.Ciphertext, int]]], bytes],
    ) -> Shared:
        """Join (or lead) the open batch of ``key``; ``evaluate`` gets (ciphertext, offset)s."""
        with self._lock:
            batch = self._open.get(key)
            leader = batch is None or batch.closed or batch.used + rows > capacity
            if leader:
                batch = _Batch()
                self._open[key] = batch
            assert batch is not None
            member = _Member(ciphertext, rows, batch.used)
            batch.members.append(member)
            batch.used += rows
        if leader:
            self._lead(key, batch, evaluate)
        member.done.wait()
        if member.error is not None:
            raise member.error
        return Shared(member.result, member.offset, len(batch.members))

    def _lead(
        self,
        key: Key,
        batch: _Batch,
        evaluate: Callable[[list[tuple[sealapi.Ciphertext, int]]], bytes],
    ) -> None:
        with self._run_lock:
            with self._lock:
                batch.closed = True
                if self._open.get(key) is batch:
                    del self._open[key]
            try:
                out = evaluate([(m.ciphertext, m.offset) for m in batch.members])
                for m in batch.members:
                    m.result = out
            except BaseException as e:  # every member hears of it, then the leader re-raises
                for m in batch.members:
                    m.error = e
            finally:
                for m in batch.members:
                    m.done.set()
