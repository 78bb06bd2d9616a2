"""The ``end_job`` kind: every party ends some long work (cancelled or failed) in order.

It needs no MPC session, so a job cancelled or failed while the session is
down still ends everywhere, in the same place of the job sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

from ppml.servers.kinds.base import JobKind, JobStats, KindEnv

KIND = "end_job"


@dataclass(frozen=True)
class EndJob:
    job_id: str
    state: str  # "failed" | "cancelled"
    reason: str


class EndKind(JobKind):
    name = KIND
    job_type = EndJob
    needs_session = False

    def __init__(self, env: KindEnv) -> None:
        super().__init__(env)
        self._kinds: dict[str, JobKind] = {}

    def attach(self, kinds: dict[str, JobKind]) -> None:
        self._kinds = kinds

    def run(self, seq: int, job: EndJob, taken: None) -> JobStats:
        for kind in self._kinds.values():  # set by attach() before any job runs
            kind.ended(job.job_id, job.state, job.reason)
        return JobStats()
