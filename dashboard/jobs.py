"""Training jobs as the cluster sees them: every server's record of a job, merged.

The servers run a job's MPC steps together, so they normally report the same
state. When they do not (one server failed it, or never got it) the job's
overall state is the most severe one reported, and :attr:`ClusterJob.agreed`
is false so that the page can flag it. Pure functions: a snapshot in, jobs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ppml.dashboard.data import ClusterSnapshot
from ppml.dashboard.records import Record

STATES = ("running", "queued", "succeeded", "failed", "cancelled")  # as the page counts them
ACTIVE = ("running", "queued")
ABSENT = "absent"  # a server that listed its jobs, without this one
# Overall state of a job the servers disagree on: the first of these any server reports
SEVERITY = ("failed", "cancelled", "running", "queued", "succeeded")


@dataclass(frozen=True)
class ClusterJob:
    record: Record  # the lowest-ranked server's record: names, spec, progress
    states: dict[str, str]  # server -> state, ABSENT where it answered without the job
    reasons: dict[str, str]  # server -> why it failed or was cancelled there (non-empty only)

    def get(self, key: str, default: Any = None) -> Any:
        return self.record.get(key, default)

    @property
    def job_id(self) -> str:
        return str(self.get("job_id", ""))

    @property
    def agreed(self) -> bool:
        return len(set(self.states.values())) <= 1

    @property
    def state(self) -> str:
        reported = set(self.states.values())
        return next((s for s in SEVERITY if s in reported), ABSENT)

    @property
    def active(self) -> bool:
        """Some server still runs the job or has it queued."""
        return any(s in ACTIVE for s in self.states.values())

    @property
    def progress(self) -> float:
        """Steps done out of steps total, 0..1."""
        total = int(self.get("steps_total", 0) or 0)
        if self.state == "succeeded":
            return 1.0
        return min(1.0, int(self.get("steps_done", 0) or 0) / total) if total else 0.0

    def describe_states(self) -> str:
        """``running``, or ``failed (server-0: running, server-1: failed)`` when they differ."""
        if self.agreed:
            return self.state
        each = ", ".join(f"{server}: {state}" for server, state in self.states.items())
        return f"{self.state} ({each})"

    def describe_reason(self) -> str:
        """Why it failed or was cancelled; per server unless they all agree on state and reason."""
        if self.agreed and len(set(self.reasons.values())) <= 1:
            return next(iter(self.reasons.values()), "")
        return "; ".join(f"{server}: {reason}" for server, reason in self.reasons.items())


def cluster_jobs(snapshot: ClusterSnapshot) -> list[ClusterJob]:
    """Every job any server listed: active ones first (running, then queued, oldest
    first), then finished ones, newest first."""
    by_id: dict[str, list[Record]] = {}
    for record in snapshot.training_jobs:
        by_id.setdefault(str(record.get("job_id", "")), []).append(record)
    ranks = {s.name: s.rank for s in snapshot.servers}
    answered = [s.name for s in snapshot.servers if s.answered("jobs")]
    merged = []
    for records in by_id.values():
        records.sort(key=lambda r: ranks.get(str(r.get("server", "")), len(ranks)))
        reported = {str(r.get("server", "")): r for r in records}
        states = {name: str(r.get("state", "")) for name, r in reported.items()}
        states.update({name: ABSENT for name in answered if name not in reported})
        states = dict(sorted(states.items(), key=lambda kv: ranks.get(kv[0], len(ranks))))
        reasons = {name: str(r["reason"]) for name, r in reported.items() if r.get("reason")}
        merged.append(ClusterJob(records[0], states, reasons))
    return sorted(merged, key=_order)


def _order(job: ClusterJob) -> tuple[int, int, int]:
    created = int(job.get("created_unix_ms", 0) or 0)
    if job.active:
        return (0, 0 if "running" in job.states.values() else 1, created)
    return (1, 0, -created)


def count_states(jobs: list[ClusterJob]) -> dict[str, int]:
    """Jobs per overall state, every state of :data:`STATES` included."""
    counts = dict.fromkeys(STATES, 0)
    for job in jobs:
        if job.state in counts:
            counts[job.state] += 1
    return counts
