"""Tests for ppml.servers.control.job_queue.JobQueue (pure logic, explicit clock)."""

from __future__ import annotations

import pytest

from ppml.proto.domain import commands as cmd
from ppml.servers.control.job_queue import End, Policy, Step
from ppml.servers.control.job_queue import JobQueue as Queue

NAMES = ["leader", "server-1", "server-2"]


POLICIES = {"evaluate": Policy(0), "train": Policy(1, serial=True, stateful=True)}


def JobQueue(world_size: int) -> Queue:
    return Queue(world_size, POLICIES)


def _train(job_id: str = "job-1", steps: int = 3, timeout_s: float = 60.0) -> cmd.Announce:
    return cmd.Announce("train", job_id, "", steps, timeout_s)


def _evaluate(request_id: str = "eval-1", timeout_s: float = 60.0) -> cmd.Announce:
    return cmd.Announce("evaluate", request_id, "", 1, timeout_s)


def _announce_all(q: Queue, announce: cmd.Announce, now: float = 0.0, ranks: int = 3) -> None:
    for rank in range(ranks):
        q.announce(rank, announce, now)


def _run_step(q: Queue) -> Step | End | None:
    job = q.next_job()
    if isinstance(job, Step):
        q.done(job.job_id, ok=True)
    return job


# ---------------------------------------------------------------- readiness


def test_job_is_ready_only_once_every_rank_announced() -> None:
    q = JobQueue(3)
    q.announce(0, _train(), 0.0)
    q.announce(2, _train(), 0.1)
    assert q.next_job() is None
    assert not q.has_work
    q.announce(2, _train(), 0.2)  # a repeat does not count twice
    assert q.next_job() is None
    q.announce(1, _train(), 0.3)
    assert q.has_work
    assert q.next_job() == Step("train", "job-1", 0)


def test_evaluation_is_ready_only_once_every_rank_announced() -> None:
    q = JobQueue(2)
    q.announce(1, _evaluate(), 0.0)
    assert q.next_job() is None
    q.announce(0, _evaluate(), 0.0)
    assert q.next_job() == Step("evaluate", "eval-1", 0)


# ---------------------------------------------------------------- steps


def test_steps_are_issued_in_order_one_at_a_time() -> None:
    q = JobQueue(3)
    _announce_all(q, _train(steps=4))
    issued = []
    for expected in range(4):
        job = q.next_job()
        assert job == Step("train", "job-1", expected)
        assert q.next_job() is None  # the step is still running
        assert not q.has_work
        assert len(q) == 1
        q.done(job.job_id, ok=True)
        issued.append(job.step)
    assert issued == [0, 1, 2, 3]
    assert len(q) == 0  # removed after the last step
    assert q.next_job() is None
    assert not q.has_work


def test_step_is_repeated_until_done() -> None:
    q = JobQueue(2)
    _announce_all(q, _train(steps=2), ranks=2)
    assert q.next_job() == Step("train", "job-1", 0)
    assert q.next_job() is None
    assert q.next_job() is None
    q.done("job-1", ok=True)
    assert q.next_job() == Step("train", "job-1", 1)


def test_jobs_run_one_at_a_time_oldest_first() -> None:
    q = JobQueue(2)
    _announce_all(q, _train("old", steps=2), ranks=2)
    _announce_all(q, _train("new", steps=1), ranks=2)
    first = q.next_job()
    assert first == Step("train", "old", 0)
    assert q.next_job() is None  # "new" waits while "old" has a step running
    q.done(first.job_id, ok=True)
    assert _run_step(q) == Step("train", "old", 1)
    assert _run_step(q) == Step("train", "new", 0)
    assert len(q) == 0


def test_evaluation_goes_before_training_steps() -> None:
    q = JobQueue(2)
    _announce_all(q, _train(steps=5), ranks=2)
    _announce_all(q, _evaluate("eval-1"), ranks=2)
    assert q.next_job() == Step("evaluate", "eval-1", 0)
    assert q.next_job() == Step("train", "job-1", 0)  # the evaluation is in flight


def test_evaluation_goes_between_steps_of_a_running_job() -> None:
    q = JobQueue(2)
    _announce_all(q, _train(steps=5), ranks=2)
    step = q.next_job()
    assert step == Step("train", "job-1", 0)
    _announce_all(q, _evaluate("eval-1"), ranks=2)
    evaluation = q.next_job()
    assert evaluation == Step("evaluate", "eval-1", 0)
    q.done(step.job_id, ok=True)
    q.done(evaluation.job_id, ok=True)
    assert len(q) == 1  # the evaluation's single step is done: gone
    assert q.next_job() == Step("train", "job-1", 1)


def test_evaluation_is_removed_after_it_ran() -> None:
    q = JobQueue(2)
    _announce_all(q, _evaluate(), ranks=2)
    job = q.next_job()
    assert job == Step("evaluate", "eval-1", 0)
    assert q.next_job() is None
    q.done(job.job_id, ok=True)
    assert len(q) == 0
    assert q.next_job() is None


# ---------------------------------------------------------------- ends


def test_pending_ends_go_first() -> None:
    q = JobQueue(2)
    _announce_all(q, _train("a", steps=5), ranks=2)
    _announce_all(q, _evaluate("eval-1"), ranks=2)
    _announce_all(q, _train("b", steps=5), ranks=2)
    q.cancel("b", "cancelled by hospital-a")
    assert q.next_job() == End("b", "cancelled", "cancelled by hospital-a")
    assert q.next_job() == Step("evaluate", "eval-1", 0)
    assert q.next_job() == Step("train", "a", 0)


def test_ends_come_out_in_order() -> None:
    q = JobQueue(2)
    for job_id in ("a", "b", "c"):
        _announce_all(q, _train(job_id), ranks=2)
    q.cancel("b", "first")
    q.cancel("a", "second")
    assert q.next_job() == End("b", "cancelled", "first")
    assert q.next_job() == End("a", "cancelled", "second")
    assert q.next_job() == Step("train", "c", 0)


def test_cancel_ends_the_job_and_stops_its_steps() -> None:
    q = JobQueue(2)
    _announce_all(q, _train(steps=10), ranks=2)
    assert _run_step(q) == Step("train", "job-1", 0)
    q.cancel("job-1", "cancelled by hospital-a")
    assert q.has_work
    assert q.next_job() == End("job-1", "cancelled", "cancelled by hospital-a")
    assert q.next_job() is None
    assert len(q) == 0
    assert not q.has_work


def test_cancel_while_a_step_runs() -> None:
    q = JobQueue(2)
    _announce_all(q, _train(steps=10), ranks=2)
    step = q.next_job()
    assert step == Step("train", "job-1", 0)
    q.cancel("job-1", "stop")
    q.done(step.job_id, ok=True)  # the step finishing afterwards changes nothing
    assert q.next_job() == End("job-1", "cancelled", "stop")
    assert q.next_job() is None


def test_cancel_of_a_job_not_yet_ready() -> None:
    q = JobQueue(3)
    q.announce(0, _train(), 0.0)
    q.cancel("job-1", "changed my mind")
    assert q.next_job() == End("job-1", "cancelled", "changed my mind")
    assert len(q) == 0
    assert q.next_deadline() is None


def test_cancel_of_unknown_or_finished_job_is_ignored() -> None:
    q = JobQueue(2)
    q.cancel("nope", "x")
    assert q.next_job() is None
    _announce_all(q, _train(steps=1), ranks=2)
    assert _run_step(q) == Step("train", "job-1", 0)
    q.cancel("job-1", "too late")
    assert q.next_job() is None
    assert not q.has_work


def test_failed_step_fails_the_job_with_its_reason() -> None:
    q = JobQueue(2)
    _announce_all(q, _train(steps=10), ranks=2)
    assert _run_step(q) == Step("train", "job-1", 0)
    step = q.next_job()
    assert step == Step("train", "job-1", 1)
    q.done(step.job_id, ok=False, reason="server-1: out of memory")
    assert q.next_job() == End("job-1", "failed", "server-1: out of memory")
    assert q.next_job() is None
    assert len(q) == 0


def test_failed_evaluation_ends_it() -> None:
    q = JobQueue(2)
    _announce_all(q, _evaluate(), ranks=2)
    job = q.next_job()
    assert job is not None
    q.done(job.job_id, ok=False, reason="link lost")
    assert q.next_job() == End("eval-1", "failed", "link lost")
    assert len(q) == 0


def test_done_of_an_unknown_job_is_ignored() -> None:
    q = JobQueue(2)
    _announce_all(q, _train(steps=2), ranks=2)
    q.done("other", ok=False, reason="x")
    assert q.next_job() == Step("train", "job-1", 0)


@pytest.mark.parametrize(
    "second",
    [_train(steps=12), cmd.Announce("evaluate", "job-1", "", 10, 60.0)],
    ids=["steps", "kind"],
)
def test_disagreement_fails_the_job(second: cmd.Announce) -> None:
    q = JobQueue(2)
    q.announce(0, _train(steps=10), 0.0)
    q.announce(1, second, 0.0)
    end = q.next_job()
    assert isinstance(end, End)
    assert (end.job_id, end.state) == ("job-1", "failed")
    assert "disagree" in end.reason
    assert "10 steps" in end.reason and f"{second.size}" in end.reason
    assert q.next_job() is None
    assert len(q) == 0


# ---------------------------------------------------------------- deadlines and ranks


def test_expire_fails_jobs_not_announced_by_every_rank_in_time() -> None:
    q = JobQueue(3)
    q.announce(0, _train("late", timeout_s=10.0), 100.0)
    q.announce(0, _train("other", timeout_s=50.0), 100.0)
    q.expire(109.9, NAMES)
    assert q.next_job() is None
    q.expire(110.0, NAMES)
    end = q.next_job()
    assert isinstance(end, End)
    assert (end.job_id, end.state) == ("late", "failed")
    assert "server-1" in end.reason and "server-2" in end.reason
    assert "leader" not in end.reason
    assert q.next_job() is None
    assert len(q) == 1  # "other" still waits


def test_expire_names_only_the_missing_servers() -> None:
    q = JobQueue(3)
    q.announce(0, _train(timeout_s=1.0), 0.0)
    q.announce(2, _train(timeout_s=1.0), 0.5)
    q.expire(5.0, NAMES)
    end = q.next_job()
    assert isinstance(end, End)
    assert "missing: server-1)" in end.reason


def test_expire_keeps_ready_jobs() -> None:
    q = JobQueue(2)
    _announce_all(q, _train(timeout_s=1.0), 0.0, ranks=2)
    q.expire(1000.0, NAMES[:2])
    assert q.next_job() == Step("train", "job-1", 0)


def test_abandon_rank_fails_only_jobs_that_rank_held() -> None:
    q = JobQueue(3)
    _announce_all(q, _train("everywhere"))
    q.announce(0, _train("without-2"), 0.0)
    q.announce(1, _train("without-2"), 0.0)
    q.announce(2, _train("only-2"), 0.0)
    q.abandon_rank(2, "server-2 restarted")
    ends = [q.next_job(), q.next_job()]
    assert ends == [
        End("everywhere", "failed", "server-2 restarted"),
        End("only-2", "failed", "server-2 restarted"),
    ]
    assert len(q) == 1
    q.announce(2, _train("without-2"), 0.0)
    assert q.next_job() == Step("train", "without-2", 0)


def test_next_deadline() -> None:
    q = JobQueue(2)
    assert q.next_deadline() is None
    q.announce(0, _train("a", timeout_s=30.0), 10.0)
    q.announce(0, _evaluate("e", timeout_s=5.0), 12.0)
    assert q.next_deadline() == pytest.approx(17.0)
    q.announce(1, _evaluate("e"), 13.0)  # ready: no longer waits for a deadline
    assert q.next_deadline() == pytest.approx(40.0)
    q.announce(1, _train("a"), 14.0)
    assert q.next_deadline() is None


def test_deadline_is_set_by_the_first_announce() -> None:
    q = JobQueue(3)
    q.announce(0, _train(timeout_s=10.0), 0.0)
    q.announce(1, _train(timeout_s=10.0), 8.0)
    assert q.next_deadline() == pytest.approx(10.0)
    q.expire(10.0, NAMES)
    end = q.next_job()
    assert isinstance(end, End) and "server-2" in end.reason


def test_a_late_announce_of_an_ended_job_is_ignored() -> None:
    queue = JobQueue(2)
    queue.announce(0, _train("j"), 0.0)
    queue.cancel("j", "cancelled by owner")
    assert queue.next_job() == End("j", "cancelled", "cancelled by owner")
    queue.announce(1, _train("j"), 1.0)
    assert len(queue) == 0 and queue.next_deadline() is None
    queue.expire(1000.0, ["server-0", "server-1"])
    assert queue.next_job() is None


def test_a_session_restart_fails_started_training_jobs_only() -> None:
    queue = JobQueue(2)
    for job_id in ("started", "waiting"):
        for rank in (0, 1):
            queue.announce(rank, _train(job_id, steps=5), 0.0)
    step = queue.next_job()
    assert step == Step("train", "started", 0)
    queue.done(step.job_id, True)
    queue.abandon_started("dealer connected while the job was in progress")
    assert queue.next_job() == End(
        "started", "failed", "dealer connected while the job was in progress"
    )
    assert queue.next_job() == Step("train", "waiting", 0)


def test_servers_holding_different_things_under_one_id_fail_the_job() -> None:
    q = JobQueue(2)
    q.announce(0, cmd.Announce("train", "job-1", "fingerprint-a", 3, 60.0), 0.0)
    q.announce(1, cmd.Announce("train", "job-1", "fingerprint-b", 3, 60.0), 0.0)
    end = q.next_job()
    assert isinstance(end, End) and end.state == "failed" and "disagree" in end.reason
