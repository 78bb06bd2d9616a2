"""Work this server holds until the MPC job that uses it runs: one table for every kind.

A hold is added by the gRPC side after validation (a prediction request's
input share, an evaluation request) and removed only by the MPC worker (when
the job that includes it runs) or by a leader's drop decision, so every
party's view of a job's inputs stays identical. Whoever added a hold waits on
its future for the result.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ppml.proto.errors import ErrorCode, PpmlError

_REMEMBER_S = 600.0  # ids stay "seen" this long, to reject duplicates


def scoped_id(kind: str, owner: str, request_id: str) -> str:
    """The cluster-wide id of a caller's request: request ids are per identity and kind.

    Two identities using the same request id never meet (nor a request id and
    a training job id); the owner appears only as a hash (ids travel to the
    leader). Request ids themselves cannot contain ``:``.
    """
    tag = hashlib.sha256(owner.encode()).hexdigest()[:16]
    return f"{kind}:{tag}:{request_id}"


@dataclass
class Hold:
    id: str
    kind: str  # the job kind that will run it
    value: Any  # what that kind needs to run it here (shares, model handle, ...)
    abort_code: ErrorCode  # the error a caller gets when the hold is dropped
    received: float = field(default_factory=time.monotonic)
    future: Future[Any] = field(default_factory=Future)

    def fail(self, reason: str) -> None:
        if not self.future.done():
            self.future.set_exception(PpmlError(self.abort_code, reason))


class Holds:
    def __init__(self, remember_s: float = _REMEMBER_S) -> None:
        self._remember_s = remember_s
        self._lock = threading.Lock()
        self._holds: dict[str, Hold] = {}
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add(self, hold: Hold) -> None:
        """Register a hold; DUPLICATE_REQUEST if its id was seen recently."""
        now = time.monotonic()
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now - self._remember_s:
                self._seen.popitem(last=False)
            if hold.id in self._seen:
                raise PpmlError(
                    ErrorCode.DUPLICATE_REQUEST,
                    f"request id {hold.id.rsplit(':', 1)[-1]!r} was already used; use a fresh id",
                )
            self._seen[hold.id] = now
            self._holds[hold.id] = hold

    def take(self, ids: Iterable[str]) -> list[Hold | None]:
        """Remove and return the given holds (None for any not held here)."""
        with self._lock:
            return [self._holds.pop(i, None) for i in ids]

    def fail(self, ids: Iterable[str] | None, reason: str) -> int:
        """Drop the given (or all) holds, failing their waiters; returns how many."""
        with self._lock:
            keys = list(self._holds) if ids is None else list(ids)
            taken = [self._holds.pop(i) for i in keys if i in self._holds]
        for hold in taken:
            hold.fail(reason)
        return len(taken)

    def count(self, kind: str) -> int:
        with self._lock:
            return sum(1 for hold in self._holds.values() if hold.kind == kind)

    def __len__(self) -> int:
        with self._lock:
            return len(self._holds)
