"""This server's requests waiting for MPC: their input shares and waiters.

Entries are added by the gRPC handler after validation and removed only by
the MPC worker (when the job that includes them runs) or by a leader's drop
decision, so every party's view of a job's inputs stays identical.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.shares import Ring

_REMEMBER_S = 600.0  # ids stay "seen" this long, to reject duplicates


@dataclass(frozen=True)
class PredictOutcome:
    share: Ring
    batch_requests: int
    job_seq: int


@dataclass
class PendingRequest:
    request_id: str
    model_id: str
    share: Ring
    model: Any  # the model handle, held so a concurrent delete cannot break the job
    received: float = field(default_factory=time.monotonic)
    future: Future[PredictOutcome] = field(default_factory=Future)

    @property
    def rows(self) -> int:
        return int(self.share.shape[0])


class PendingTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, PendingRequest] = {}
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add(self, request: PendingRequest) -> None:
        """Register a request; DUPLICATE_REQUEST if its id was seen recently."""
        now = time.monotonic()
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now - _REMEMBER_S:
                self._seen.popitem(last=False)
            if request.request_id in self._seen:
                raise PpmlError(
                    ErrorCode.DUPLICATE_REQUEST,
                    f"request id {request.request_id!r} was already used; use a fresh id",
                )
            self._seen[request.request_id] = now
            self._pending[request.request_id] = request

    def take(self, request_ids: list[str]) -> list[PendingRequest | None]:
        """Remove and return the given requests (None for any not held here)."""
        with self._lock:
            return [self._pending.pop(rid, None) for rid in request_ids]

    def fail(self, request_ids: list[str] | None, error: PpmlError) -> int:
        """Fail the given (or all) pending requests; returns how many."""
        with self._lock:
            ids = list(self._pending) if request_ids is None else request_ids
            taken = [self._pending.pop(rid) for rid in ids if rid in self._pending]
        for request in taken:
            if not request.future.done():
                request.future.set_exception(error)
        return len(taken)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)
