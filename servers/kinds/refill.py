"""The ``refill`` kind: top up the fast engine's bundle pools while no prediction waits.

The dealer makes per-forward bundles ahead of time; a party keeps a bounded
pool per (model, batch-size bucket) in use (``servers/mpc/fast/service/pool.py``).
The leader runs a refill job once the worker has been idle for
``fast_refill_idle_ms`` and a pool in use is below ``fast_pool_bundles``; like
every job it runs on both parties in the leader's sequence, so both pools get
the same bundles in the same order. A prediction that finds its pool empty
asks the dealer on demand instead (one dealer round trip inside the job).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ppml.servers.kinds.base import JobKind, JobStats, Planner
from ppml.servers.mpc.fast.service.party import CommChannel, FastInference

KIND = "refill"


@dataclass(frozen=True)
class RefillJob:
    model_id: str
    bucket: int  # rows per bundle (a power of two)
    count: int  # bundles


class RefillPlanner(Planner):
    """Asks rank 0's pools (this process) what is short, once the worker is idle."""

    priority = 8  # after predictions and long work, before a heartbeat
    kinds = (KIND,)

    def __init__(self, fast: FastInference, idle_s: float) -> None:
        self._fast = fast
        self._idle_s = idle_s

    def next_job(self, now: float, idle_since: float) -> tuple[str, Any] | None:
        if now - idle_since < self._idle_s:
            return None
        want = self._fast.next_refill()
        return None if want is None else (KIND, RefillJob(*want))

    def next_wakeup(self, idle_since: float) -> float | None:
        return idle_since + self._idle_s if self._fast.next_refill() is not None else None


class RefillKind(JobKind):
    name = KIND
    job_type = RefillJob

    def planner(self) -> Planner | None:
        fast = self.env.fast
        if fast is None:
            return None
        return RefillPlanner(fast, self.env.config.serving.fast_refill_idle_ms / 1000.0)

    def run(self, seq: int, job: RefillJob, taken: None) -> JobStats:
        if self.env.fast is None:
            raise RuntimeError("a refill job on a server without fast inference")
        self.env.fast.refill(CommChannel(), job.model_id, job.bucket, job.count)
        return JobStats()

    def abort(self, job: RefillJob, taken: None, reason: str) -> None:
        if self.env.fast is not None:  # the pools may differ now: start them afresh
            self.env.fast.session_lost()
