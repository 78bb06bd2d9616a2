"""The leader's queue of long MPC work: training jobs and evaluations (pure).

Prediction batches (:mod:`ppml.servers.control.scheduler`) always go first; the
leader asks this queue for work only when no prediction batch is ready, so
predictions are answered between training steps. A job or evaluation is
ready once every party has announced it (each validated its own copy).
Order: pending ends (cancel/failure, applied by every party in sequence),
then evaluations (short), then the oldest ready training job's next step.
Jobs run one at a time; the rest stay queued.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ppml.proto.domain import commands as cmd

FAILED, CANCELLED = "failed", "cancelled"
_REMEMBER_ENDED = 4096


@dataclass
class _Entry:
    job_id: str
    kind: str  # "train" | "evaluate"
    steps: int
    deadline: float
    holders: set[int] = field(default_factory=set)
    next_step: int = 0
    in_flight: bool = False


class JobQueue:
    def __init__(self, world_size: int) -> None:
        self._world_size = world_size
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._ends: list[cmd.EndJob] = []
        self._ended: OrderedDict[str, None] = OrderedDict()  # recent ids: late announces ignored

    # ------------------------------------------------------------ inputs

    def announce(self, rank: int, announce: cmd.JobAnnounce, now: float) -> None:
        if announce.job_id in self._ended:
            return
        entry = self._entries.get(announce.job_id)
        if entry is None:
            entry = _Entry(announce.job_id, announce.kind, announce.steps, now + announce.timeout_s)
            self._entries[announce.job_id] = entry
        if (announce.kind, announce.steps) != (entry.kind, entry.steps):
            self._end(
                entry.job_id,
                FAILED,
                f"the servers disagree about the job ({entry.kind}, {entry.steps} steps vs "
                f"{announce.kind}, {announce.steps}): do they hold the same data sets?",
            )
            return
        entry.holders.add(rank)

    def cancel(self, job_id: str, reason: str) -> None:
        """Every party ends the job; unknown or finished ids are ignored."""
        if job_id in self._entries:
            self._end(job_id, CANCELLED, reason)

    def abandon_rank(self, rank: int, reason: str) -> None:
        """Party ``rank`` left or came back: it dropped every job it held."""
        for entry in list(self._entries.values()):
            if rank in entry.holders:
                self._end(entry.job_id, FAILED, reason)

    def abandon_started(self, reason: str) -> None:
        """The MPC session restarts: training jobs past step 0 lost their secret state."""
        for entry in list(self._entries.values()):
            if entry.kind == "train" and (entry.next_step > 0 or entry.in_flight):
                self._end(entry.job_id, FAILED, reason)

    def expire(self, now: float, names: list[str]) -> None:
        """Fail work that not every party announced in time."""
        for entry in list(self._entries.values()):
            if len(entry.holders) < self._world_size and now >= entry.deadline:
                missing = [names[r] for r in range(self._world_size) if r not in entry.holders]
                self._end(
                    entry.job_id,
                    FAILED,
                    f"not every server accepted it in time (missing: {', '.join(missing)})",
                )

    def _end(self, job_id: str, state: str, reason: str) -> None:
        self._entries.pop(job_id, None)
        self._ends.append(cmd.EndJob(job_id, state, reason))
        self._forget_later(job_id)

    def _forget_later(self, job_id: str) -> None:
        self._ended[job_id] = None
        while len(self._ended) > _REMEMBER_ENDED:
            self._ended.popitem(last=False)

    # ------------------------------------------------------------ decisions

    def _ready(self, entry: _Entry) -> bool:
        return len(entry.holders) == self._world_size and not entry.in_flight

    def next_job(self) -> cmd.TrainStep | cmd.EvaluateJob | cmd.EndJob | None:
        if self._ends:
            return self._ends.pop(0)
        for entry in self._entries.values():
            if entry.kind == "evaluate" and self._ready(entry):
                entry.in_flight = True
                return cmd.EvaluateJob(entry.job_id)
        for entry in self._entries.values():
            if entry.kind == "train" and len(entry.holders) == self._world_size:
                if entry.in_flight:
                    return None  # one step at a time
                entry.in_flight = True
                return cmd.TrainStep(entry.job_id, entry.next_step)
        return None

    def done(self, job: cmd.Job, ok: bool, reason: str = "") -> None:
        """The job's step ran everywhere (``ok``) or failed somewhere."""
        if isinstance(job, cmd.TrainStep):
            job_id = job.job_id
        elif isinstance(job, cmd.EvaluateJob):
            job_id = job.request_id
        else:
            return
        entry = self._entries.get(job_id)
        if entry is None:
            return
        entry.in_flight = False
        if not ok:
            self._end(job_id, FAILED, reason)
            return
        entry.next_step += 1
        if entry.next_step >= entry.steps:
            del self._entries[job_id]
            self._forget_later(job_id)

    # ------------------------------------------------------------ views

    def next_deadline(self) -> float | None:
        pending = [e.deadline for e in self._entries.values() if len(e.holders) < self._world_size]
        return min(pending) if pending else None

    @property
    def has_work(self) -> bool:
        return bool(self._ends) or any(
            len(e.holders) == self._world_size and not e.in_flight for e in self._entries.values()
        )

    def __len__(self) -> int:
        return len(self._entries)
