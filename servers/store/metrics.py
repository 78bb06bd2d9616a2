"""In-memory serving metrics of one server (counts and timings; no secrets)."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ppml.proto.domain.status import JobCost, Latency, ModelServing

_WINDOW = 4096
# Requests naming a model id that is malformed or not stored here are counted
# under this label (not a valid id), so callers cannot grow the tables at will.
UNKNOWN_MODEL = "(unknown)"


@dataclass
class ModelStats:
    requests: int = 0
    batches: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # gRPC status name -> count
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))


@dataclass(frozen=True)
class Snapshot:
    uptime_s: float
    requests_total: int
    errors: dict[str, int]
    models: list[ModelServing]
    batch_sizes: dict[int, int]
    job_costs: list[JobCost]
    heartbeats: int
    last_error: str


def latency_summary(values: Iterable[float]) -> Latency:
    """Count and p50/p95/p99 of ``values`` (ms); zeros when there are none."""
    array = np.fromiter(values, dtype=float)
    if not array.size:
        return Latency(0, 0.0, 0.0, 0.0)
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return Latency(int(array.size), float(p50), float(p95), float(p99))


class ServerMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._requests = 0
        self._errors: Counter[str] = Counter()
        self._models: dict[str, ModelStats] = {}
        self._batch_sizes: Counter[int] = Counter()
        self._costs: dict[str, list[float]] = {}
        self._heartbeats = 0
        self._last_error = ""

    def record_request(self, model_id: str, latency_s: float, status: str) -> None:
        with self._lock:
            self._requests += 1
            stats = self._models.setdefault(model_id, ModelStats())
            stats.requests += 1
            if status == "OK":
                stats.latencies_ms.append(latency_s * 1000.0)
            else:
                self._errors[status] += 1
                stats.errors[status] += 1

    def record_job(
        self, kind: str, model_id: str, requests: int, rounds: int, nbytes: int, seconds: float
    ) -> None:
        with self._lock:
            cost = self._costs.setdefault(kind, [0, 0, 0, 0.0])
            cost[0] += 1
            cost[1] += rounds
            cost[2] += nbytes
            cost[3] += seconds
            if kind == "heartbeat":
                self._heartbeats += 1
            elif kind == "predict":
                self._batch_sizes[requests] += 1
                self._models.setdefault(model_id, ModelStats()).batches += 1

    def record_error(self, message: str) -> None:
        with self._lock:
            self._last_error = message

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                uptime_s=time.monotonic() - self._started,
                requests_total=self._requests,
                errors=dict(self._errors),
                models=[
                    ModelServing(
                        k, v.requests, v.batches, latency_summary(v.latencies_ms), dict(v.errors)
                    )
                    for k, v in self._models.items()
                ],
                batch_sizes=dict(self._batch_sizes),
                job_costs=[
                    JobCost(k, int(v[0]), int(v[1]), int(v[2]), v[3])
                    for k, v in sorted(self._costs.items())
                ],
                heartbeats=self._heartbeats,
                last_error=self._last_error,
            )
