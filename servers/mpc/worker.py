"""The one MPC worker of a server: runs the leader's commands, in order.

CrypTen has one communicator per process and every party must run the same
collectives in the same order, so all MPC happens on this single thread. The
gRPC threads only validate and hold work. Each job is run by its kind (see
``ppml.servers.kinds``): the kind takes what this server holds for the job,
runs it inside the session, or aborts it. A job that fails (a peer died, the
dealer went away) is aborted, and the worker leaves the session at once so
that its peers' collectives fail fast too; the leader then starts a new epoch
and the worker joins it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ppml.proto.domain import commands as cmd
from ppml.servers.mpc import session as mpc_session
from ppml.servers.mpc.network.mesh import SessionParams
from ppml.servers.store.metrics import ServerMetrics

log = logging.getLogger(__name__)

_LEAVE = "leave"
_STOP = "stop"
NOT_UP = "the MPC session is not up on this server; retry shortly"
WENT_AWAY = "a server or the dealer went away during the MPC job; retry"
JOB_FAILED = "the MPC job failed on every server alike; the MPC session goes on"

JoinCallback = Callable[[int, bool, str], None]
JobCallback = Callable[[cmd.RunJob, bool, bool], None]  # (job, ok, session still sound)


class Stats(Protocol):
    @property
    def model_id(self) -> str: ...
    @property
    def requests(self) -> int: ...


class WorkerKind(Protocol):
    """What the worker asks of a job kind (``ppml.servers.kinds.base.JobKind``)."""

    @property
    def needs_session(self) -> bool: ...

    def take(self, job: Any) -> Any: ...
    def run(self, seq: int, job: Any, taken: Any) -> Stats: ...
    def abort(self, job: Any, taken: Any, reason: str) -> None: ...
    def session_lost(self, reason: str) -> None: ...


class MpcWorker:
    def __init__(
        self,
        rank: int,
        session_params: Callable[[str], SessionParams],
        metrics: ServerMetrics,
        kinds: Mapping[str, WorkerKind],
        on_joined: JoinCallback,
        on_job_done: JobCallback,
    ) -> None:
        self.rank = rank
        self._session_params = session_params  # epoch tag -> this party's session parameters
        self._metrics = metrics
        self._kinds = kinds
        self._on_joined = on_joined
        self._on_job_done = on_job_done
        self._commands: queue.Queue[object] = queue.Queue()
        self.epoch: int | None = None  # joined epoch, None when not in a session
        self.running = ""  # the kind of the job being run now (for status)
        self._thread = threading.Thread(target=self._run, name="mpc-worker", daemon=True)

    @property
    def serving(self) -> bool:
        return self.epoch is not None

    def start(self) -> None:
        self._thread.start()

    def submit(self, command: cmd.JoinEpoch | cmd.RunJob) -> None:
        self._commands.put(command)

    def leave(self) -> None:
        self._commands.put(_LEAVE)

    def stop(self, timeout: float = 5.0) -> None:
        self._commands.put(_STOP)
        self._thread.join(timeout)

    @property
    def backlog(self) -> int:
        return self._commands.qsize()

    # ------------------------------------------------------------ thread

    def _run(self) -> None:
        while True:
            command = self._commands.get()
            if command == _STOP:
                self._leave()
                return
            if command == _LEAVE:
                self._leave()
            elif isinstance(command, cmd.JoinEpoch):
                self._join(command)
            elif isinstance(command, cmd.RunJob):
                self._execute(command)

    def _leave(self) -> None:
        if self.epoch is not None or mpc_session.is_joined():
            mpc_session.leave()
        self.epoch = None
        for kind in self._kinds.values():
            kind.session_lost("this server left the MPC session mid-job")

    def _join(self, command: cmd.JoinEpoch) -> None:
        self._leave()
        try:
            mpc_session.join(self._session_params(command.tag))
        except Exception as exc:
            log.warning("could not join MPC epoch %d: %s", command.epoch, exc)
            self._metrics.record_error(f"join epoch {command.epoch} failed: {exc}")
            mpc_session.leave()
            self._on_joined(command.epoch, False, str(exc))
            return
        self.epoch = command.epoch
        log.info("joined MPC epoch %d as rank %d", command.epoch, self.rank)
        self._on_joined(command.epoch, True, "")

    def _execute(self, command: cmd.RunJob) -> None:
        self.running = command.kind
        try:
            self._run_job(command)
        finally:
            self.running = ""

    def _run_job(self, command: cmd.RunJob) -> None:
        kind = self._kinds[command.kind]
        taken = kind.take(command.job)
        if kind.needs_session and self.epoch != command.epoch:
            kind.abort(command.job, taken, NOT_UP)
            self._on_job_done(command, False, False)
            return
        before = mpc_session.comm_stats() if kind.needs_session else (0, 0)
        started = time.perf_counter()
        try:
            stats = kind.run(command.seq, command.job, taken)
        except Exception as exc:
            log.warning("MPC job %d (%s) failed: %s", command.seq, command.kind, exc)
            self._metrics.record_error(f"job {command.seq} failed: {exc}")
            if kind.needs_session and mpc_session.survives_job_failure():
                # every party failed this job alike: only this job ends, other work goes on
                kind.abort(command.job, taken, f"{JOB_FAILED} ({type(exc).__name__})")
                self._on_job_done(command, False, True)
                return
            kind.abort(command.job, taken, WENT_AWAY)
            self._leave()
            self._on_job_done(command, False, False)
            return
        if not kind.needs_session:  # bookkeeping, no MPC: nothing to count
            self._on_job_done(command, True, True)
            return
        after = mpc_session.comm_stats()
        self._metrics.record_job(
            command.kind,
            stats.model_id,
            stats.requests,
            after[0] - before[0],
            after[1] - before[1],
            time.perf_counter() - started,
        )
        self._on_job_done(command, True, True)
