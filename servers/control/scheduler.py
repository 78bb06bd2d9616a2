"""The leader's scheduling decisions, as pure logic (no I/O, injectable clock).

* A request becomes *ready* once every compute party has announced that it
  holds its share (same model id and row count everywhere).
* A request not started by its deadline is dropped by every party, with one
  reason that says what the leader knows: the deadline left no time at all,
  which parties had not reported their share (the leader cannot tell a share
  that never arrived from a report still in flight), or that every party held
  it but it could not start in time. A party that reports a dropped request
  late gets the same reason.
* Dynamic batching: ready requests for one model are merged into one job of
  at most ``max_batch_rows`` rows. The job is dispatched when the batch is
  full, when no new request for that model has been announced for
  ``max_wait_s`` (a quiet gap: a burst of concurrent clients lands in one
  job however long the burst takes to arrive), or when its oldest request
  has waited ``max_delay_s`` since the worker was free (time spent queued
  behind a running job is not batching delay).
* A model whose last job served a single request has a sequential client:
  its next lone request, with no other request for the model announced
  anywhere, is dispatched as soon as it is ready, without the quiet gap.
  Concurrent clients still batch: requests that arrive while a job runs
  queue behind it, and a multi-request job switches the gap back on.
* After a job of several requests finishes, the next job for that model waits
  up to ``max_delay_s`` for those clients to send again (unless it is
  full). Without this, a burst that was once split in two stays split: each
  half becomes ready exactly while the other half's job runs.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

_FORGET_S = 600.0


def _shown(request_id: str) -> str:
    """The caller's own request id (servers scope ids as ``kind:owner-tag:id``)."""
    return request_id.rsplit(":", 1)[-1]


@dataclass
class Tracked:
    request_id: str
    model_id: str
    rows: int
    deadline: float
    holders: set[int] = field(default_factory=set)
    ready_at: float | None = None
    no_time: bool = False  # some party reported it with its deadline already passed


@dataclass(frozen=True)
class Job:
    model_id: str
    request_ids: tuple[str, ...]
    rows: tuple[int, ...]


@dataclass(frozen=True)
class Drop:
    request_ids: tuple[str, ...]
    reason: str


class Scheduler:
    def __init__(
        self,
        world_size: int,
        max_batch_rows: int,
        max_wait_s: float,
        max_delay_s: float,
        forget_s: float = _FORGET_S,
    ) -> None:
        self._forget_s = forget_s  # answered or dropped ids are remembered this long
        self.world_size = world_size
        self.max_batch_rows = max_batch_rows
        self.max_wait_s = max_wait_s
        self.max_delay_s = max(max_delay_s, max_wait_s)
        self.return_window_s = self.max_delay_s
        self._last_announce: dict[str, float] = {}
        self._idle_since = 0.0
        self._last_batch: dict[str, tuple[int, float]] = {}  # model -> (requests, done at)
        self._tracked: dict[str, Tracked] = {}
        self._ready: OrderedDict[str, Tracked] = OrderedDict()
        # request id -> (when, drop reason; "" once dispatched)
        self._finished: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def _finish(self, request_id: str, now: float, reason: str = "") -> None:
        entry = self._tracked.pop(request_id, None)
        if entry is not None and not any(
            e.model_id == entry.model_id for e in self._tracked.values()
        ):
            self._last_announce.pop(entry.model_id, None)
        self._ready.pop(request_id, None)
        self._finished[request_id] = (now, reason)
        while self._finished and next(iter(self._finished.values()))[0] < now - self._forget_s:
            self._finished.popitem(last=False)

    def announce(
        self, rank: int, request_id: str, model_id: str, rows: int, timeout_s: float, now: float
    ) -> Drop | None:
        """Record that ``rank`` holds its share; returns a drop decision if it must go."""
        if request_id in self._finished:
            # the same reason every other party's caller got; "" if it already ran
            reason = self._finished[request_id][1] or (
                f"request {_shown(request_id)!r} already ran; a request id can be used only once"
            )
            return Drop((request_id,), reason)
        entry = self._tracked.get(request_id)
        if entry is None:
            entry = Tracked(request_id, model_id, rows, now + timeout_s)
            self._tracked[request_id] = entry
        elif entry.model_id != model_id or entry.rows != rows:
            reason = (
                "servers received different models (or different models under one id) or "
                f"row counts for request {_shown(request_id)!r}"
            )
            self._finish(request_id, now, reason)
            return Drop((request_id,), reason)
        entry.deadline = min(entry.deadline, now + timeout_s)
        entry.no_time = entry.no_time or timeout_s <= 0
        entry.holders.add(rank)
        self._last_announce[model_id] = now
        if len(entry.holders) == self.world_size and entry.ready_at is None:
            entry.ready_at = now
            self._ready[request_id] = entry
        return None

    def expire(self, now: float, names: list[str]) -> list[Drop]:
        """Drop requests whose deadline passed before they could run."""
        drops = []
        for entry in list(self._tracked.values()):
            if entry.deadline > now:
                continue
            reason = self._expired_reason(entry, names)
            self._finish(entry.request_id, now, reason)
            drops.append(Drop((entry.request_id,), reason))
        return drops

    def _expired_reason(self, entry: Tracked, names: list[str]) -> str:
        """Why an expired request is dropped, saying only what the leader knows."""
        request = f"request {_shown(entry.request_id)!r}"
        dropped = "every server dropped it"
        if entry.no_time:
            return (
                f"{request}: its deadline left no time to run it (the servers stop waiting "
                f"shortly before the caller's deadline, and that time had passed); {dropped}"
            )
        if entry.ready_at is None:
            missing = ", ".join(names[r] for r in range(self.world_size) if r not in entry.holders)
            return (
                f"{request}: {missing} had not reported holding its share by the deadline "
                f"(its share, or its report, came late or not at all); {dropped}"
            )
        if entry.ready_at >= entry.deadline:
            return (
                f"{request}: the last server reported holding its share only after the "
                f"deadline; {dropped}"
            )
        return (
            f"{request}: every server held its share, but it had not started by the deadline "
            f"(the MPC worker was busy with earlier jobs, or batching waited longer than the "
            f"time left); {dropped}"
        )

    def drop_rank(self, rank: int, now: float, name: str) -> Drop | None:
        """A party went away: drop every undispatched request it held."""
        gone = [e.request_id for e in self._tracked.values() if rank in e.holders]
        reason = f"{name} went away before the request could run; retry"
        for request_id in gone:
            self._finish(request_id, now, reason)
        if not gone:
            return None
        return Drop(tuple(gone), reason)

    def drop_all(self, now: float, reason: str) -> Drop | None:
        gone = list(self._tracked)
        for request_id in gone:
            self._finish(request_id, now, reason)
        return Drop(tuple(gone), reason) if gone else None

    def next_job(self, now: float) -> Job | None:
        """The next batch to run, or None if nothing should run yet."""
        if not self._ready:
            return None
        oldest = next(iter(self._ready.values()))
        batch = [e for e in self._ready.values() if e.model_id == oldest.model_id]
        chosen: list[Tracked] = []
        rows = 0
        for entry in batch:
            if chosen and rows + entry.rows > self.max_batch_rows:
                break
            chosen.append(entry)
            rows += entry.rows
        assert oldest.ready_at is not None
        full = rows >= self.max_batch_rows or len(chosen) < len(batch)
        quiet = now - self._last_announce.get(oldest.model_id, 0.0) >= self.max_wait_s
        overdue = now - max(oldest.ready_at, self._idle_since) >= self.max_delay_s
        if not (
            full
            or overdue
            or self._sequential(oldest.model_id)
            or (quiet and not self._returning(oldest.model_id, now, len(batch)))
        ):
            return None
        for entry in chosen:
            self._finish(entry.request_id, now)
        return Job(
            oldest.model_id,
            tuple(e.request_id for e in chosen),
            tuple(e.rows for e in chosen),
        )

    def _sequential(self, model_id: str) -> bool:
        """Is the one request known for this model from a client that waits for each answer?"""
        if self._last_batch.get(model_id, (0, 0.0))[0] != 1:
            return False
        return sum(1 for e in self._tracked.values() if e.model_id == model_id) == 1

    def _returning(self, model_id: str, now: float, ready: int) -> bool:
        """Are the clients of the last multi-request job for this model likely on their way?

        Only while fewer requests for it are ``ready`` than that job answered: once
        as many are back, waiting longer would only add the window to each cycle.
        """
        requests, done_at = self._last_batch.get(model_id, (0, 0.0))
        return requests > 1 and now - done_at < self.return_window_s and ready < requests

    def job_done(self, model_id: str | None, requests: int, now: float) -> None:
        """The worker finished a job (``model_id`` None for non-predict jobs)."""
        self._idle_since = now
        if model_id is not None:
            self._last_batch[model_id] = (requests, now)

    def next_wakeup(self) -> float | None:
        """When :meth:`next_job` or :meth:`expire` may next have something to do."""
        times = [e.deadline for e in self._tracked.values()]
        if self._ready:
            oldest = next(iter(self._ready.values()))
            assert oldest.ready_at is not None
            times.append(max(oldest.ready_at, self._idle_since) + self.max_delay_s)
            quiet_at = self._last_announce.get(oldest.model_id, 0.0) + self.max_wait_s
            if self._sequential(oldest.model_id):
                quiet_at = oldest.ready_at
            requests, done_at = self._last_batch.get(oldest.model_id, (0, 0.0))
            ready = sum(1 for e in self._ready.values() if e.model_id == oldest.model_id)
            if requests > 1 and ready < requests:
                quiet_at = max(quiet_at, done_at + self.return_window_s)
            times.append(quiet_at)
        return min(times) if times else None

    @property
    def backlog(self) -> int:
        return len(self._tracked)
