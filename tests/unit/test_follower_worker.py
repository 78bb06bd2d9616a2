"""A follower applying the leader's decisions, and the MPC worker running kinds: alone.

The follower's link is never started (its messages are fed in directly); the
worker runs fake kinds and a fake MPC session (join/leave/counters), so the
ordering, abort and session rules are checked without CrypTen.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from fakes import cluster_config

from ppml.proto.domain import commands as cmd
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.servers.control.follower import Follower
from ppml.servers.control.holds import Hold, Holds
from ppml.servers.kinds.base import JobStats
from ppml.servers.mpc import session as mpc_session
from ppml.servers.mpc import worker as worker_module
from ppml.servers.mpc.worker import MpcWorker
from ppml.servers.store.metrics import ServerMetrics

# ---------------------------------------------------------------- follower


def _follower(ran: list[Any], left: list[bool], holds: Holds) -> Follower:
    return Follower(
        cluster_config(2), 1, ran.append, lambda: left.append(True), holds, {}, "token", True
    )


def test_follower_replays_the_leaders_commands_in_order() -> None:
    ran: list[Any] = []
    follower = _follower(ran, [], Holds())
    commands = [
        cmd.JoinEpoch(1, "a-1"),
        cmd.RunJob(1, 1, "predict", object()),
        cmd.RunJob(2, 1, "heartbeat", object()),
        cmd.JoinEpoch(2, "a-2"),
    ]
    for command in commands:
        follower._on_command(command)
    assert ran == commands


def test_follower_applies_a_drop_to_its_holds() -> None:
    holds = Holds()
    hold = Hold("r1", "predict", None, ErrorCode.PREDICTION_ABORTED)
    holds.add(hold)
    follower = _follower([], [], holds)
    follower._on_command(cmd.DropRequests(("r1", "unknown"), "share never reached server-0"))
    with pytest.raises(PpmlError) as excinfo:
        hold.future.result(timeout=0)
    assert "never reached server-0" in str(excinfo.value)
    assert len(holds) == 0


def test_losing_the_leader_fails_every_hold_and_leaves_the_session() -> None:
    holds = Holds()
    hold = Hold("e1", "evaluate", None, ErrorCode.EVALUATION_ABORTED)
    holds.add(hold)
    left: list[bool] = []
    heard: list[str] = []
    follower = _follower([], left, holds)
    follower.on_lost(heard.append)
    follower._on_lost("link to leader failed: UNAVAILABLE")
    with pytest.raises(PpmlError) as excinfo:
        hold.future.result(timeout=0)
    assert excinfo.value.code == ErrorCode.EVALUATION_ABORTED
    assert left == [True]
    assert heard == ["lost contact with the leader: link to leader failed: UNAVAILABLE"]


# ---------------------------------------------------------------- worker


@dataclass
class FakeKind:
    needs_session: bool = True
    fail: bool = False
    log: list[str] = field(default_factory=list)

    def take(self, job: Any) -> Any:
        self.log.append(f"take {job}")
        return f"held {job}"

    def run(self, seq: int, job: Any, taken: Any) -> JobStats:
        self.log.append(f"run {seq} {job} {taken}")
        if self.fail:
            raise RuntimeError("Connection closed by peer")
        return JobStats("model-1", 2)

    def abort(self, job: Any, taken: Any, reason: str) -> None:
        self.log.append(f"abort {job} {taken}: {reason}")

    def session_lost(self, reason: str) -> None:
        self.log.append("session lost")


class FakeSession:
    def __init__(self) -> None:
        self.joined = False
        self.rounds = 0
        self.fail_join = False
        self.sound_after_failure = False  # did every party fail the job alike?

    def survives_job_failure(self) -> bool:
        return self.joined and self.sound_after_failure

    def join(self, *args: Any) -> None:
        if self.fail_join:
            raise RuntimeError("peer unreachable")
        self.joined = True

    def leave(self) -> None:
        self.joined = False

    def is_joined(self) -> bool:
        return self.joined

    def comm_stats(self) -> tuple[int, int]:
        self.rounds += 7
        return self.rounds, self.rounds * 100


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> FakeSession:
    fake = FakeSession()
    for name in ("join", "leave", "is_joined", "comm_stats", "survives_job_failure"):
        monkeypatch.setattr(mpc_session, name, getattr(fake, name))
    return fake


class Run:
    """A worker with fake kinds, driven command by command (no thread)."""

    def __init__(self) -> None:
        self.kinds = {"mpc": FakeKind(), "bookkeeping": FakeKind(needs_session=False)}
        self.metrics = ServerMetrics()
        self.joined: list[tuple[int, bool, str]] = []
        self.done: list[tuple[int, bool]] = []
        self.sound: list[bool] = []
        self.worker = MpcWorker(
            1,
            lambda tag: tag,  # type: ignore[arg-type,return-value]  # the fake session takes it
            self.metrics,
            self.kinds,
            lambda epoch, ok, error: self.joined.append((epoch, ok, error)),
            lambda run, ok, sound: (self.done.append((run.seq, ok)), self.sound.append(sound)),
        )

    def send(self, command: object) -> None:
        if isinstance(command, cmd.JoinEpoch):
            self.worker._join(command)  # leaves any old session first
            for kind in self.kinds.values():
                kind.log.clear()
        else:
            assert isinstance(command, cmd.RunJob)
            self.worker._execute(command)


def test_a_job_for_another_epoch_is_aborted_without_mpc(session: FakeSession) -> None:
    run = Run()
    run.send(cmd.RunJob(1, 1, "mpc", "j1"))
    assert run.kinds["mpc"].log == ["take j1", f"abort j1 held j1: {worker_module.NOT_UP}"]
    assert run.done == [(1, False)]


def test_a_joined_worker_runs_the_job_and_counts_its_cost(session: FakeSession) -> None:
    run = Run()
    run.send(cmd.JoinEpoch(3, "x-3"))
    assert run.joined == [(3, True, "")] and run.worker.serving
    run.send(cmd.RunJob(5, 3, "mpc", "j1"))
    assert run.kinds["mpc"].log == ["take j1", "run 5 j1 held j1"]
    assert run.done == [(5, True)]
    (cost,) = run.metrics.snapshot().job_costs
    assert (cost.kind, cost.jobs, cost.rounds, cost.bytes) == ("mpc", 1, 7, 700)


def test_a_failing_job_is_aborted_and_the_worker_leaves_the_session(
    session: FakeSession,
) -> None:
    run = Run()
    run.send(cmd.JoinEpoch(1, "x-1"))
    run.kinds["mpc"].fail = True
    run.send(cmd.RunJob(2, 1, "mpc", "j1"))
    log = run.kinds["mpc"].log
    assert log[:2] == ["take j1", "run 2 j1 held j1"]
    assert log[2] == f"abort j1 held j1: {worker_module.WENT_AWAY}"
    assert "session lost" in log
    assert run.done == [(2, False)]
    assert not run.worker.serving and not session.joined


def test_a_job_every_party_fails_alike_ends_alone_and_the_session_goes_on(
    session: FakeSession,
) -> None:
    run = Run()
    run.send(cmd.JoinEpoch(1, "x-1"))
    run.kinds["mpc"].fail = True
    session.sound_after_failure = True
    run.send(cmd.RunJob(2, 1, "mpc", "j1"))
    log = run.kinds["mpc"].log
    assert log[2].startswith(f"abort j1 held j1: {worker_module.JOB_FAILED}")
    assert "session lost" not in log
    assert run.done == [(2, False)] and run.sound == [True]
    assert run.worker.serving and session.joined
    run.kinds["mpc"].fail = False
    run.send(cmd.RunJob(3, 1, "mpc", "j2"))  # the next job runs in the same session
    assert run.done[-1] == (3, True)


def test_bookkeeping_jobs_run_in_order_even_while_the_session_is_down(
    session: FakeSession,
) -> None:
    run = Run()
    run.send(cmd.RunJob(1, 7, "bookkeeping", "end"))
    assert run.kinds["bookkeeping"].log == ["take end", "run 1 end held end"]
    assert run.done == [(1, True)]
    assert run.metrics.snapshot().job_costs == []


def test_a_failed_join_is_reported_and_leaves_no_session(session: FakeSession) -> None:
    run = Run()
    session.fail_join = True
    run.send(cmd.JoinEpoch(2, "x-2"))
    assert run.joined == [(2, False, "peer unreachable")]
    assert not run.worker.serving


def test_the_worker_thread_applies_commands_in_submission_order(session: FakeSession) -> None:
    run = Run()
    finished = threading.Event()

    def done(r: cmd.RunJob, ok: bool, sound: bool) -> None:
        run.done.append((r.seq, ok))
        if r.seq == 3:
            finished.set()

    run.worker._on_job_done = done
    run.worker.start()
    run.worker.submit(cmd.JoinEpoch(1, "x-1"))
    for seq in (1, 2, 3):
        run.worker.submit(cmd.RunJob(seq, 1, "mpc", f"j{seq}"))
    assert finished.wait(5)
    run.worker.stop()
    assert run.done == [(1, True), (2, True), (3, True)]
