"""The leader (rank 0): decides which MPC job every party runs next.

It holds one control link per follower and one for the dealer. When every
link is up and no session is, it starts a new epoch (all parties and the
dealer join a fresh rendezvous). While the session is up it turns announced
requests into batched jobs (:mod:`ppml.servers.control.scheduler`), sends every job
to every party in the same order, drops requests that cannot run, and sends
a small heartbeat job when idle so no party or the dealer sits in a
collective long enough to hit the process-group timeout.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time

from ppml.proto.deploy.topology import ClusterConfig
from ppml.proto.domain import commands as cmd
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.servers.control.holds import PendingTable
from ppml.servers.control.job_queue import JobQueue
from ppml.servers.control.scheduler import Drop, Scheduler
from ppml.servers.mpc.worker import MpcWorker

log = logging.getLogger(__name__)

Outbox = queue.Queue[cmd.LeaderCommand | None]


class Leader:
    def __init__(self, config: ClusterConfig, worker: MpcWorker, pending: PendingTable) -> None:
        serving = config.serving
        self._config = config
        self._worker = worker
        self._pending = pending
        self._names = [p.name for p in config.parties]
        self._scheduler = Scheduler(
            config.world_size,
            serving.max_batch_rows,
            serving.max_wait_ms / 1000.0,
            serving.max_delay_ms / 1000.0,
        )
        self._heartbeat_s = serving.heartbeat_s
        self._jobs = JobQueue(config.world_size)
        self._last_change = ""
        self._links: dict[int, Outbox] = {}
        self._dealer_stats = cmd.DealerStats({}, 0)
        self._cond = threading.Condition()
        self.incarnation = secrets.token_hex(6)
        self.epoch = 0
        self.state = "down"  # down | joining | up
        self._retry_at = 0.0
        self._in_flight = False
        self._seq = 0
        self._last_job = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="leader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # ------------------------------------------------------------ links

    def attach(self, hello: cmd.Hello) -> Outbox:
        """Register a follower's or the dealer's link; any change restarts the session."""
        ws = self._config.world_size
        expected = "dealer" if hello.rank == ws else "party"
        if not 1 <= hello.rank <= ws or hello.role != expected:
            raise PpmlError(
                ErrorCode.INVALID_ARGUMENT, f"bad hello: rank {hello.rank} role {hello.role!r}"
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
            if rank < self._config.world_size:
                drop = self._scheduler.drop_rank(rank, time.monotonic(), self._name(rank))
                if drop:
                    self._apply_drop(drop)
            self._membership_changed(f"{self._name(rank)} disconnected", rank)

    def _name(self, rank: int) -> str:
        return self._names[rank] if rank < len(self._names) else self._config.dealer_name

    def _membership_changed(self, why: str, rank: int) -> None:
        log.info("%s; MPC session will restart", why)
        self._last_change = why
        reason = f"{why} while the job was in progress"
        if rank < self._config.world_size:
            self._jobs.abandon_rank(rank, reason)
        self._jobs.abandon_started(reason)  # every party rejoins: in-memory runs are gone
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

    # ------------------------------------------------------------ requests

    def announce(self, rank: int, announce: cmd.Announce) -> bool:
        """A party holds its share of a request. False if no session is up."""
        with self._cond:
            if self.state != "up":
                if rank != 0:
                    self._apply_drop(
                        Drop((announce.request_id,), "the cluster's MPC session is restarting")
                    )
                return False
            drop = self._scheduler.announce(
                rank,
                announce.request_id,
                announce.model_id,
                announce.rows,
                announce.timeout_s,
                time.monotonic(),
            )
            if drop:
                self._apply_drop(drop)
            self._cond.notify_all()
            return True

    def announce_job(self, rank: int, announce: cmd.JobAnnounce) -> bool:
        """A party holds a valid training job or evaluation request."""
        with self._cond:
            self._jobs.announce(rank, announce, time.monotonic())
            self._cond.notify_all()
            return True

    def cancel_job(self, rank: int, cancel: cmd.CancelJob) -> bool:
        with self._cond:
            self._jobs.cancel(cancel.job_id, cancel.reason)
            self._cond.notify_all()
            return True

    def submit(self, rank: int, message: cmd.PartyMessage) -> bool:
        """Route a party's announcement (rank 0 calls this directly)."""
        if isinstance(message, cmd.Announce):
            return self.announce(rank, message)
        if isinstance(message, cmd.JobAnnounce):
            return self.announce_job(rank, message)
        if isinstance(message, cmd.CancelJob):
            return self.cancel_job(rank, message)
        return False

    def _apply_drop(self, drop: Drop) -> None:
        command = cmd.DropRequests(drop.request_ids, drop.reason)
        for rank, outbox in self._links.items():
            if rank < self._config.world_size:
                outbox.put(command)
        self._pending.fail(
            list(drop.request_ids), PpmlError(ErrorCode.PREDICTION_ABORTED, drop.reason)
        )

    @property
    def backlog(self) -> int:
        with self._cond:
            return self._scheduler.backlog + len(self._jobs)

    # ------------------------------------------------------------ worker callbacks

    def on_joined(self, epoch: int, ok: bool, error: str) -> None:
        with self._cond:
            if epoch != self.epoch or self.state != "joining":
                return
            if ok:
                log.info("MPC epoch %d is up", epoch)
                self.state = "up"
                self._last_job = time.monotonic()
            else:
                self.state = "down"
                self._retry_at = time.monotonic() + 1.0
            self._cond.notify_all()

    def on_job_done(self, job: cmd.RunJob, ok: bool) -> None:
        with self._cond:
            self._in_flight = False
            self._last_job = time.monotonic()
            if isinstance(job.job, cmd.PredictJob):
                self._scheduler.job_done(job.job.model_id, len(job.job.request_ids), self._last_job)
            else:
                self._scheduler.job_done(None, 0, self._last_job)
                self._jobs.done(job.job, ok, self._failure_reason())
            if not ok and job.epoch == self.epoch and self.state == "up":
                self.state = "down"
                self._retry_at = time.monotonic() + 0.2
            self._cond.notify_all()

    def _failure_reason(self) -> str:
        cause = f" ({self._last_change})" if self._last_change else ""
        return f"an MPC step failed on some party{cause}: a server or the dealer went away"

    # ------------------------------------------------------------ decisions

    def _broadcast(self, command: cmd.JoinEpoch | cmd.RunJob) -> None:
        for rank, outbox in self._links.items():
            if isinstance(command, cmd.JoinEpoch) or rank < self._config.world_size:
                outbox.put(command)
        self._worker.submit(command)

    def _step(self, now: float) -> float:
        """Make every decision due now; returns how long to sleep."""
        for drop in self._scheduler.expire(now, self._names):
            self._apply_drop(drop)
        self._jobs.expire(now, self._names)
        if self.state == "down" and len(self._links) == self._config.world_size:
            if now >= self._retry_at and not self._in_flight:
                self.epoch += 1
                self.state = "joining"
                log.info("starting MPC epoch %d", self.epoch)
                self._broadcast(cmd.JoinEpoch(self.epoch, f"{self.incarnation}-{self.epoch}"))
            else:
                return max(0.01, self._retry_at - now)
        if self.state != "up" or self._in_flight:
            wake = self._scheduler.next_wakeup()
            return 1.0 if wake is None else max(0.001, min(1.0, wake - now))
        job = self._scheduler.next_job(now)
        if job is not None:
            self._run(cmd.PredictJob(job.model_id, job.request_ids, job.rows))
            return 0.0
        long_job = self._jobs.next_job()
        if long_job is not None:
            self._run(long_job)
            return 0.0
        if now - self._last_job >= self._heartbeat_s:
            self._run(cmd.HeartbeatJob())
            return 0.0
        wakes = [self._scheduler.next_wakeup(), self._jobs.next_deadline()]
        until = min([self._last_job + self._heartbeat_s, *(w for w in wakes if w is not None)])
        return max(0.0005, until - now)

    def _run(self, job: cmd.Job) -> None:
        self._seq += 1
        self._in_flight = True
        self._broadcast(cmd.RunJob(self._seq, self.epoch, job))

    def _loop(self) -> None:
        while True:
            with self._cond:
                sleep = self._step(time.monotonic())
                if sleep > 0:
                    self._cond.wait(sleep)
