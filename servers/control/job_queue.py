"""The leader's queue of long MPC work, e.g. training jobs and evaluations (pure).

Prediction batches (:mod:`ppml.servers.control.scheduler`) always go first; the
leader asks this queue for work only when no prediction batch is ready, so
predictions are answered between training steps. Work is ready once every
party has announced it (each validated its own copy). Each kind of long work
comes with a :class:`Policy`: pending ends (cancel/failure, applied by every
party in sequence) go first, then kinds by priority (evaluations, short,
before training steps). A ``serial`` kind runs only its oldest ready item,
step by step, so training jobs run one at a time and the rest stay queued;
a ``stateful`` kind's started work is lost when the MPC session restarts.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ppml.proto.domain import commands as cmd

FAILED, CANCELLED = "failed", "cancelled"
_REMEMBER_ENDED = 4096


@dataclass(frozen=True)
class Policy:
    priority: int  # lower runs first
    serial: bool = False  # only the oldest ready item of this kind runs (step by step)
    stateful: bool = False  # started items keep secret state in memory on every party


@dataclass(frozen=True)
class Step:
    """Run step ``step`` (0-based) of item ``job_id`` of ``kind`` on every party."""

    kind: str
    job_id: str
    step: int


@dataclass(frozen=True)
class End:
    """Every party ends item ``job_id`` with ``state`` (failed or cancelled)."""

    job_id: str
    state: str
    reason: str


@dataclass
class _Entry:
    job_id: str
    kind: str
    steps: int
    deadline: float
    group: str = ""  # a fingerprint of the public inputs: every party must announce the same
    holders: set[int] = field(default_factory=set)
    next_step: int = 0
    in_flight: bool = False


class JobQueue:
    def __init__(self, world_size: int, policies: dict[str, Policy]) -> None:
        self._world_size = world_size
        self._policies = policies
        self._order = sorted(policies, key=lambda kind: policies[kind].priority)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._ends: list[End] = []
        self._ended: OrderedDict[str, None] = OrderedDict()  # recent ids: late announces ignored

    # ------------------------------------------------------------ inputs

    def announce(self, rank: int, announce: cmd.Announce, now: float) -> None:
        if announce.id in self._ended:
            return
        if announce.kind not in self._policies:
            raise ValueError(f"no long-work policy for kind {announce.kind!r}")
        entry = self._entries.get(announce.id)
        if entry is None:
            entry = _Entry(
                announce.id, announce.kind, announce.size, now + announce.timeout_s, announce.group
            )
            self._entries[announce.id] = entry
        if (announce.kind, announce.size, announce.group) != (entry.kind, entry.steps, entry.group):
            self._end(
                entry.job_id,
                FAILED,
                f"the servers disagree about the job ({entry.kind}, {entry.steps} steps vs "
                f"{announce.kind}, {announce.size}, or different models or data under the same "
                "ids): do they hold the same model and data sets?",
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
        """The MPC session restarts: stateful work past step 0 lost its secret state."""
        for entry in list(self._entries.values()):
            stateful = self._policies[entry.kind].stateful
            if stateful and (entry.next_step > 0 or entry.in_flight):
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
        self._ends.append(End(job_id, state, reason))
        self._forget_later(job_id)

    def _forget_later(self, job_id: str) -> None:
        self._ended[job_id] = None
        while len(self._ended) > _REMEMBER_ENDED:
            self._ended.popitem(last=False)

    # ------------------------------------------------------------ decisions

    def _ready(self, entry: _Entry) -> bool:
        return len(entry.holders) == self._world_size and not entry.in_flight

    def next_job(self) -> Step | End | None:
        if self._ends:
            return self._ends.pop(0)
        for kind in self._order:
            serial = self._policies[kind].serial
            for entry in self._entries.values():
                if entry.kind != kind or len(entry.holders) < self._world_size:
                    continue
                if not entry.in_flight:
                    entry.in_flight = True
                    return Step(kind, entry.job_id, entry.next_step)
                if serial:
                    break  # one item of a serial kind at a time, one step at a time
        return None

    def done(self, job_id: str, ok: bool, reason: str = "") -> None:
        """Item ``job_id``'s step ran everywhere (``ok``) or failed somewhere."""
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
