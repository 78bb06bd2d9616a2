"""The leader's planner for long work: kinds whose jobs every party announces first.

Training jobs and evaluations (and any kind with a ``long_work`` policy) go
through one :class:`~ppml.servers.control.job_queue.JobQueue`: ready once every
party announced the same id, run step by step, ended everywhere (as an
``end_job``) when cancelled, failed, abandoned or not announced in time.
"""

from __future__ import annotations

from typing import Any

from ppml.proto.domain import commands as cmd
from ppml.servers.control.job_queue import End, JobQueue, Step
from ppml.servers.kinds import end
from ppml.servers.kinds.base import Drop, JobKind, Planner


class LongWorkPlanner(Planner):
    priority = 1  # after prediction batches

    def __init__(self, world_size: int, kinds: dict[str, JobKind]) -> None:
        self._kinds = {name: kind for name, kind in kinds.items() if kind.long_work}
        self.kinds = tuple(self._kinds)
        policies = {name: kind.long_work for name, kind in self._kinds.items() if kind.long_work}
        self._queue = JobQueue(world_size, policies)
        self._running: Step | None = None  # the step in flight (the leader runs one job at a time)

    def announce(self, rank: int, announce: cmd.Announce, now: float) -> list[Drop]:
        self._queue.announce(rank, announce, now)
        return []

    def cancel(self, job_id: str, reason: str) -> None:
        self._queue.cancel(job_id, reason)

    def expire(self, now: float, names: list[str]) -> list[Drop]:
        self._queue.expire(now, names)
        return []

    def next_job(self, now: float, idle_since: float) -> tuple[str, Any] | None:
        item = self._queue.next_job()
        if isinstance(item, End):
            return end.KIND, end.EndJob(item.job_id, item.state, item.reason)
        if isinstance(item, Step):
            self._running = item
            return item.kind, self._kinds[item.kind].step_job(item)
        return None

    def next_wakeup(self, idle_since: float) -> float | None:
        return self._queue.next_deadline()

    def done(self, kind: str, job: Any, ok: bool, reason: str, now: float) -> None:
        running, self._running = self._running, None
        if running is not None and kind == running.kind:
            self._queue.done(running.job_id, ok, reason)

    def rank_lost(self, rank: int, name: str, reason: str, now: float) -> list[Drop]:
        self._queue.abandon_rank(rank, reason)
        return []

    def session_restarted(self, reason: str) -> None:
        self._queue.abandon_started(reason)

    @property
    def backlog(self) -> int:
        return len(self._queue)
