"""The leader (rank 0): decides which MPC job every party runs next.

It holds one control link per follower and one for the dealer. When every
link is up and no session is, it starts a new epoch (all parties and the
dealer join a fresh rendezvous). While the session is up it asks its
planners (one per group of job kinds, see ``ppml.servers.kinds``), in order,
for the next job, sends every job to every party in the same order, and drops
announced work that cannot run. The planners are pure; this class owns the
links, the epoch and the clock.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ppml.proto.deploy.topology import ClusterConfig
from ppml.proto.domain import commands as cmd
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.servers.control.holds import Holds

log = logging.getLogger(__name__)

Outbox = queue.Queue[cmd.LeaderCommand | None]


class Dropping(Protocol):
    @property
    def ids(self) -> tuple[str, ...]: ...
    @property
    def reason(self) -> str: ...


class LeaderPlanner(Protocol):
    """What the leader asks of a planner (``ppml.servers.kinds.base.Planner``)."""

    kinds: tuple[str, ...]

    @property
    def accepts_while_down(self) -> bool: ...

    def announce(self, rank: int, announce: cmd.Announce, now: float) -> Sequence[Dropping]: ...
    def cancel(self, job_id: str, reason: str) -> None: ...
    def expire(self, now: float, names: list[str]) -> Sequence[Dropping]: ...
    def next_job(self, now: float, idle_since: float) -> tuple[str, Any] | None: ...
    def next_wakeup(self, idle_since: float) -> float | None: ...
    def done(self, kind: str, job: Any, ok: bool, reason: str, now: float) -> None: ...
    def rank_lost(self, rank: int, name: str, reason: str, now: float) -> Sequence[Dropping]: ...
    def session_restarted(self, reason: str) -> None: ...
    @property
    def backlog(self) -> int: ...


class Leader:
    def __init__(
        self,
        config: ClusterConfig,
        run_here: Callable[[cmd.JoinEpoch | cmd.RunJob], None],
        holds: Holds,
        planners: Sequence[LeaderPlanner],
        clock: Callable[[], float] = time.monotonic,
        new_tag: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        self._config = config
        self._new_tag = new_tag  # each epoch's tag: fresh randomness, sent over TLS links
        self._run_here = run_here  # this server's own MPC worker
        self._holds = holds
        self._planners = list(planners)
        self._by_kind = {kind: p for p in self._planners for kind in p.kinds}
        self._clock = clock
        self._names = [p.name for p in config.parties]
        self._last_change = ""
        self._links: dict[int, Outbox] = {}
        self._dealer_stats = cmd.DealerStats({}, 0)
        self._cond = threading.Condition()
        self.epoch = 0
        self.state = "down"  # down | joining | up
        self._retry_at = 0.0
        self._in_flight = False
        self._seq = 0
        self._last_job = clock()
        self._thread = threading.Thread(target=self._loop, name="leader", daemon=True)
        # who decides staged uploads (``ppml.servers.control.uploads``); set by the server
        self.on_staged: Callable[[int, cmd.Staged], None] = lambda rank, staged: None

    def start(self) -> None:
        self._thread.start()

    # ------------------------------------------------------------ links

    def attach(self, hello: cmd.Hello, identity: str | None = None) -> Outbox:
        """Register a follower's or the dealer's link; any change restarts the session.

        ``identity`` is the link's authenticated peer (None only when auth is
        off, under ``--insecure``): a rank is bound to its own identity, so no
        peer can claim another's place.
        """
        ws = self._config.world_size
        expected = "dealer" if hello.rank == ws else "party"
        last = ws if self._config.has_dealer else ws - 1
        if not 1 <= hello.rank <= last or hello.role != expected:
            raise PpmlError(
                ErrorCode.INVALID_ARGUMENT, f"bad hello: rank {hello.rank} role {hello.role!r}"
            )
        if identity is not None and identity != self._config.peer_name(hello.rank):
            raise PpmlError(
                ErrorCode.PERMISSION_DENIED,
                f"peer {identity!r} may not link as rank {hello.rank} "
                f"({self._config.peer_name(hello.rank)!r})",
            )
        outbox: Outbox = queue.Queue()
        with self._cond:
            old = self._links.pop(hello.rank, None)
            if old is not None:
                old.put(None)
            self._links[hello.rank] = outbox
            self._membership_changed(f"{self._name(hello.rank)} connected", hello.rank)
        return outbox

    def detach(self, rank: int, outbox: Outbox) -> None:
        with self._cond:
            if self._links.get(rank) is not outbox:
                return
            del self._links[rank]
            self._membership_changed(f"{self._name(rank)} disconnected", rank)

    def _name(self, rank: int) -> str:
        return self._names[rank] if rank < len(self._names) else self._config.dealer_name

    def _membership_changed(self, why: str, rank: int) -> None:
        log.info("%s; MPC session will restart", why)
        self._last_change = why
        reason = f"{why} while the job was in progress"
        now = self._clock()
        for planner in self._planners:
            if rank < self._config.world_size:
                for drop in planner.rank_lost(rank, self._name(rank), reason, now):
                    self._apply_drop(drop.ids, drop.reason)
            planner.session_restarted(reason)  # every party rejoins: in-memory state is gone
        self.state = "down"
        self._retry_at = 0.0
        self._cond.notify_all()

    @property
    def links_up(self) -> list[str]:
        with self._cond:
            return [self._name(rank) for rank in sorted(self._links)]

    @property
    def dealer_connected(self) -> bool:
        with self._cond:
            return self._config.world_size in self._links

    def record_dealer_stats(self, stats: cmd.DealerStats) -> None:
        """The dealer's latest running totals (reported over its link)."""
        with self._cond:
            self._dealer_stats = stats

    @property
    def dealer_stats(self) -> cmd.DealerStats:
        with self._cond:
            return self._dealer_stats

    # ------------------------------------------------------------ party messages

    def submit(self, rank: int, message: cmd.PartyMessage) -> bool:
        """A party's announcement or cancel request (rank 0 calls this directly).

        False if the work cannot be accepted now (e.g. a prediction while the
        session is down; the announcing follower's request is dropped).
        """
        if isinstance(message, cmd.Staged):  # uploads need no MPC session
            self.on_staged(rank, message)
            return True
        with self._cond:
            if isinstance(message, cmd.Announce):
                planner = self._by_kind.get(message.kind)
                if planner is None:
                    return False
                if self.state != "up" and not planner.accepts_while_down:
                    if rank != 0:
                        self._apply_drop((message.id,), "the cluster's MPC session is restarting")
                    return False
                for drop in planner.announce(rank, message, self._clock()):
                    self._apply_drop(drop.ids, drop.reason)
            elif isinstance(message, cmd.CancelJob):
                for planner in self._planners:
                    planner.cancel(message.job_id, message.reason)
            else:
                return False
            self._cond.notify_all()
            return True

    def send_upload_decision(self, rank: int | None, decision: cmd.UploadDecision) -> None:
        """Tell one follower (every follower, for None) the decision on a staged upload."""
        with self._cond:
            for to, outbox in self._links.items():
                if 0 < to < self._config.world_size and rank in (None, to):
                    outbox.put(decision)

    def _apply_drop(self, ids: tuple[str, ...], reason: str) -> None:
        command = cmd.DropRequests(ids, reason)
        for rank, outbox in self._links.items():
            if rank < self._config.world_size:
                outbox.put(command)
        self._holds.fail(ids, reason)

    @property
    def backlog(self) -> int:
        with self._cond:
            return sum(planner.backlog for planner in self._planners)

    # ------------------------------------------------------------ worker callbacks

    def on_joined(self, epoch: int, ok: bool, error: str) -> None:
        with self._cond:
            if epoch != self.epoch or self.state != "joining":
                return
            if ok:
                log.info("MPC epoch %d is up", epoch)
                self.state = "up"
                self._last_job = self._clock()
            else:
                self.state = "down"
                self._retry_at = self._clock() + 1.0
            self._cond.notify_all()

    def on_job_done(self, run: cmd.RunJob, ok: bool, session_sound: bool = False) -> None:
        """The job ran (``ok``) or failed here; a failure with ``session_sound`` was the
        job's own (every party failed it alike): it ends, the session goes on."""
        with self._cond:
            self._in_flight = False
            self._last_job = self._clock()
            if ok:
                reason = ""
            elif session_sound:
                reason = "the MPC job failed on every server alike (the session went on)"
            else:
                reason = self._failure_reason()
            for planner in self._planners:
                planner.done(run.kind, run.job, ok, reason, self._last_job)
            if not ok and not session_sound and run.epoch == self.epoch and self.state == "up":
                self.state = "down"
                self._retry_at = self._clock() + 0.2
            self._cond.notify_all()

    def _failure_reason(self) -> str:
        cause = f" ({self._last_change})" if self._last_change else ""
        return f"an MPC step failed on some party{cause}: a server or the dealer went away"

    # ------------------------------------------------------------ decisions

    def _broadcast(self, command: cmd.JoinEpoch | cmd.RunJob) -> None:
        for rank, outbox in self._links.items():
            if isinstance(command, cmd.JoinEpoch) or rank < self._config.world_size:
                outbox.put(command)
        self._run_here(command)

    def _step(self, now: float) -> float:
        """Make every decision due now; returns how long to sleep."""
        for planner in self._planners:
            for drop in planner.expire(now, self._names):
                self._apply_drop(drop.ids, drop.reason)
        if self.state == "down" and len(self._links) == self._config.leader_links:
            if now >= self._retry_at and not self._in_flight:
                self.epoch += 1
                self.state = "joining"
                log.info("starting MPC epoch %d", self.epoch)
                self._broadcast(cmd.JoinEpoch(self.epoch, self._new_tag()))
            else:
                return max(0.01, self._retry_at - now)
        wakes = [p.next_wakeup(self._last_job) for p in self._planners]
        until = min([now + 1.0, *(w for w in wakes if w is not None)])
        if self.state != "up" or self._in_flight:
            # Nothing can be dispatched before the job ends or the session is up, and both
            # notify: a wake-up already due (a batch waiting to go) would only spin this
            # loop every millisecond against the worker. Wait for one still ahead.
            ahead = [w for w in wakes if w is not None and w > now]
            return max(0.001, min([1.0, *(w - now for w in ahead)]))
        for planner in self._planners:
            chosen = planner.next_job(now, self._last_job)
            if chosen is not None:
                self._seq += 1
                self._in_flight = True
                self._broadcast(cmd.RunJob(self._seq, self.epoch, *chosen))
                return 0.0
        return max(0.0005, until - now)

    def _loop(self) -> None:
        while True:
            with self._cond:
                sleep = self._step(self._clock())
                if sleep > 0:
                    self._cond.wait(sleep)
