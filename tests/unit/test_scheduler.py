"""Tests for ppml.servers.control.scheduler.Scheduler (pure logic, explicit clock)."""

from __future__ import annotations

import pytest

from ppml.servers.control.scheduler import Drop, Job, Scheduler

NAMES = ["server-0", "server-1", "server-2"]


def _scheduler(
    world_size: int, max_batch_rows: int = 64, max_wait_s: float = 0.0, max_delay_s: float = 0.0
) -> Scheduler:
    return Scheduler(
        world_size=world_size,
        max_batch_rows=max_batch_rows,
        max_wait_s=max_wait_s,
        max_delay_s=max_delay_s,
    )


def _announce_all(
    s: Scheduler,
    request_id: str,
    now: float,
    model_id: str = "m1",
    rows: int = 1,
    timeout_s: float = 30.0,
) -> None:
    for rank in range(s.world_size):
        assert s.announce(rank, request_id, model_id, rows, timeout_s, now) is None


# ---------------------------------------------------------------- readiness


def test_request_is_ready_only_after_every_rank_announced() -> None:
    s = _scheduler(3, max_batch_rows=64, max_wait_s=0.0, max_delay_s=0.0)
    assert s.announce(0, "r1", "m1", 2, 30.0, now=0.0) is None
    assert s.announce(2, "r1", "m1", 2, 30.0, now=0.1) is None
    assert s.next_job(now=10.0) is None  # rank 1 has not announced
    assert s.announce(1, "r1", "m1", 2, 30.0, now=0.2) is None
    assert s.next_job(now=0.2) == Job("m1", ("r1",), (2,))
    assert s.backlog == 0


def test_repeated_announce_by_one_rank_does_not_make_it_ready() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.0, max_delay_s=0.0)
    for t in range(5):
        assert s.announce(0, "r1", "m1", 1, 30.0, now=float(t)) is None
    assert s.next_job(now=5.0) is None
    assert s.backlog == 1


# ---------------------------------------------------------------- deadlines


def test_deadline_expiry_names_the_missing_servers() -> None:
    s = _scheduler(3, max_batch_rows=64, max_wait_s=0.0, max_delay_s=0.0)
    s.announce(0, "r1", "m1", 1, 5.0, now=0.0)
    s.announce(2, "r1", "m1", 1, 5.0, now=1.0)  # deadline min(5, 6) = 5
    assert s.expire(now=4.99, names=NAMES) == []
    drops = s.expire(now=5.0, names=NAMES)
    assert len(drops) == 1
    assert drops[0].request_ids == ("r1",)
    assert "server-1 had not reported holding its share" in drops[0].reason
    assert "server-0" not in drops[0].reason
    assert "server-2" not in drops[0].reason
    assert s.backlog == 0
    # the straggler's share arrives late: dropped with the same reason, never scheduled
    late = s.announce(1, "r1", "m1", 1, 5.0, now=5.5)
    assert late == Drop(("r1",), drops[0].reason)
    assert s.next_job(now=100.0) is None


def test_deadline_expiry_names_every_missing_server() -> None:
    s = _scheduler(3, max_batch_rows=64, max_wait_s=0.0, max_delay_s=0.0)
    s.announce(1, "r1", "m1", 1, 2.0, now=0.0)
    (drop,) = s.expire(now=2.0, names=NAMES)
    assert "server-0" in drop.reason and "server-2" in drop.reason
    assert "server-1" not in drop.reason


def test_deadline_is_the_earliest_of_all_announces() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.0, max_delay_s=0.0)
    s.announce(0, "r1", "m1", 1, 30.0, now=0.0)
    s.announce(0, "r1", "m1", 1, 1.0, now=0.5)  # a shorter deadline wins
    assert s.next_wakeup() == pytest.approx(1.5)
    assert [d.request_ids for d in s.expire(now=1.5, names=NAMES)] == [("r1",)]


def test_held_everywhere_but_not_started_by_its_deadline() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=10.0, max_delay_s=10.0)
    _announce_all(s, "r1", now=0.0, timeout_s=1.0)
    (drop,) = s.expire(now=1.0, names=NAMES)
    assert drop.request_ids == ("r1",)
    assert "every server held its share, but it had not started" in drop.reason
    assert "had not reported" not in drop.reason
    assert s.next_job(now=100.0) is None


def test_last_report_after_the_deadline_is_said_so() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=10.0, max_delay_s=10.0)
    s.announce(0, "r1", "m1", 1, 1.0, now=0.0)
    s.announce(1, "r1", "m1", 1, 1.0, now=1.5)  # held everywhere, but after 0.0 + 1.0
    (drop,) = s.expire(now=1.5, names=NAMES)
    assert "the last server reported holding its share only after the deadline" in drop.reason
    assert "server-1" not in drop.reason


def test_deadline_shorter_than_the_drop_margin_blames_no_server() -> None:
    """A complete request with no time left: the leader hears from server-0 first and
    drops it at once; server-1 did hold its share, so no message may say otherwise."""
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.0, max_delay_s=0.0)
    assert s.announce(0, "r1", "m1", 1, -0.05, now=0.0) is None
    (drop,) = s.expire(now=0.001, names=NAMES)  # server-1's report is still on its way
    assert drop.request_ids == ("r1",)
    assert "deadline left no time" in drop.reason
    assert "server-1" not in drop.reason and "never reached" not in drop.reason
    # server-1's report arrives: its caller gets the same explanation, not a vague one
    assert s.announce(1, "r1", "m1", 1, -0.05, now=0.002) == Drop(("r1",), drop.reason)


def test_no_time_wins_over_readiness() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=10.0, max_delay_s=10.0)
    _announce_all(s, "r1", now=0.0, timeout_s=0.0)
    (drop,) = s.expire(now=0.0, names=NAMES)
    assert "deadline left no time" in drop.reason


def test_expire_leaves_requests_before_their_deadline() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.0, max_delay_s=0.0)
    s.announce(0, "early", "m1", 1, 1.0, now=0.0)
    s.announce(0, "late", "m1", 1, 10.0, now=0.0)
    assert [d.request_ids for d in s.expire(now=2.0, names=NAMES)] == [("early",)]
    assert s.backlog == 1
    s.announce(1, "late", "m1", 1, 10.0, now=2.0)
    assert s.next_job(now=2.0) == Job("m1", ("late",), (1,))


# ---------------------------------------------------------------- mismatches and finished ids


@pytest.mark.parametrize(("model_id", "rows"), [("m2", 1), ("m1", 2)])
def test_mismatched_model_or_rows_is_dropped(model_id: str, rows: int) -> None:
    s = _scheduler(3, max_batch_rows=64, max_wait_s=0.0, max_delay_s=0.0)
    assert s.announce(0, "r1", "m1", 1, 30.0, now=0.0) is None
    drop = s.announce(1, "r1", model_id, rows, 30.0, now=0.1)
    assert isinstance(drop, Drop)
    assert drop.request_ids == ("r1",)
    assert s.backlog == 0
    # the remaining party's announce is dropped too, for the same reason; nothing ever runs
    assert s.announce(2, "r1", "m1", 1, 30.0, now=0.2) == drop
    assert s.next_job(now=100.0) is None
    assert s.expire(now=100.0, names=NAMES) == []


def test_re_announce_after_dispatch_is_dropped() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.0, max_delay_s=0.0)
    _announce_all(s, "r1", now=0.0)
    assert s.next_job(now=0.0) == Job("m1", ("r1",), (1,))
    again = s.announce(0, "r1", "m1", 1, 30.0, now=1.0)
    assert isinstance(again, Drop) and again.request_ids == ("r1",)
    assert "already ran" in again.reason
    assert s.backlog == 0
    assert s.next_job(now=2.0) is None


# ---------------------------------------------------------------- batching


def test_no_dispatch_before_max_wait_unless_full() -> None:
    # times are binary fractions so the clock arithmetic is exact
    s = _scheduler(2, max_batch_rows=8, max_wait_s=0.25, max_delay_s=4.0)
    _announce_all(s, "a", now=0.0, rows=3)
    _announce_all(s, "b", now=0.125, rows=3)
    assert s.next_job(now=0.125) is None
    assert s.next_job(now=0.25) is None  # only 0.125 s since the last announce
    assert s.next_job(now=0.37) is None
    assert s.next_job(now=0.375) == Job("m1", ("a", "b"), (3, 3))
    assert s.next_job(now=10.0) is None


def test_a_steady_burst_is_batched_until_max_delay() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.25, max_delay_s=1.0)
    ids = [f"r{i}" for i in range(12)]
    jobs: list[tuple[float, Job]] = []
    for i, rid in enumerate(ids):
        now = i * 0.125  # a new request every 0.125 s, faster than max_wait
        _announce_all(s, rid, now=now)
        job = s.next_job(now=now)
        if job is not None:
            jobs.append((now, job))
    # r0 became ready at 0.0 and has waited max_delay_s at 1.0: everything so far goes
    assert jobs == [(1.0, Job("m1", tuple(ids[:9]), (1,) * 9))]
    # the rest of the burst forms a new batch, sent once the announces stop for max_wait
    assert s.next_job(now=1.5) is None
    assert s.next_job(now=1.625) == Job("m1", tuple(ids[9:]), (1, 1, 1))


def test_an_incomplete_request_keeps_the_batch_open() -> None:
    """Announces of requests not yet ready still count as activity for that model."""
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.25, max_delay_s=4.0)
    _announce_all(s, "a", now=0.0)
    s.announce(0, "b", "m1", 1, 30.0, now=0.125)
    assert s.next_job(now=0.25) is None
    s.announce(1, "b", "m1", 1, 30.0, now=0.25)
    assert s.next_job(now=0.5) == Job("m1", ("a", "b"), (1, 1))


def test_full_batch_dispatches_immediately() -> None:
    s = _scheduler(2, max_batch_rows=8, max_wait_s=10.0, max_delay_s=10.0)
    _announce_all(s, "a", now=0.0, rows=4)
    assert s.next_job(now=0.0) is None
    _announce_all(s, "b", now=0.001, rows=4)
    assert s.next_job(now=0.001) == Job("m1", ("a", "b"), (4, 4))


def test_batch_never_exceeds_max_batch_rows() -> None:
    s = _scheduler(2, max_batch_rows=8, max_wait_s=10.0, max_delay_s=10.0)
    for i, rows in enumerate([5, 2, 3, 1]):
        _announce_all(s, f"r{i}", now=0.0, rows=rows)
    # r0 + r1 = 7; adding r2 (3) would exceed 8, so the batch is cut and goes now
    assert s.next_job(now=0.0) == Job("m1", ("r0", "r1"), (5, 2))
    # r2 + r3 = 4 rows: not full, waits for max_wait
    assert s.next_job(now=0.0) is None
    assert s.next_job(now=10.0) == Job("m1", ("r2", "r3"), (3, 1))


def test_request_larger_than_a_batch_runs_alone() -> None:
    s = _scheduler(2, max_batch_rows=4, max_wait_s=10.0, max_delay_s=10.0)
    _announce_all(s, "big", now=0.0, rows=9)
    _announce_all(s, "small", now=0.0, rows=1)
    assert s.next_job(now=0.0) == Job("m1", ("big",), (9,))
    assert s.next_job(now=0.0) is None
    assert s.next_job(now=10.0) == Job("m1", ("small",), (1,))


def test_waits_count_from_readiness_and_last_announce() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=1.0, max_delay_s=1.0)
    s.announce(0, "a", "m1", 1, 30.0, now=0.0)
    s.announce(1, "a", "m1", 1, 30.0, now=5.0)  # ready at 5.0, not 0.0
    assert s.next_job(now=5.5) is None
    assert s.next_job(now=6.0) == Job("m1", ("a",), (1,))


# ---------------------------------------------------------------- ordering


def test_fifo_within_a_model_by_readiness() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.0, max_delay_s=0.0)
    for rid in ["a", "b", "c"]:
        s.announce(0, rid, "m1", 1, 30.0, now=0.0)
    for t, rid in enumerate(["c", "a", "b"]):
        s.announce(1, rid, "m1", 1, 30.0, now=float(t))
    job = s.next_job(now=10.0)
    assert job is not None
    assert job.request_ids == ("c", "a", "b")


def test_one_model_per_job_oldest_model_first() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.0, max_delay_s=0.0)
    _announce_all(s, "a", now=0.0, model_id="m1", rows=1)
    _announce_all(s, "b", now=0.1, model_id="m2", rows=2)
    _announce_all(s, "c", now=0.2, model_id="m1", rows=3)
    assert s.next_job(now=1.0) == Job("m1", ("a", "c"), (1, 3))
    assert s.next_job(now=1.0) == Job("m2", ("b",), (2,))
    assert s.next_job(now=1.0) is None


# ---------------------------------------------------------------- parties going away


def test_drop_rank_drops_only_requests_that_rank_held() -> None:
    s = _scheduler(3, max_batch_rows=64, max_wait_s=10.0, max_delay_s=10.0)
    s.announce(0, "held-by-0-1", "m1", 1, 30.0, now=0.0)
    s.announce(1, "held-by-0-1", "m1", 1, 30.0, now=0.0)
    s.announce(0, "held-by-0", "m1", 1, 30.0, now=0.0)
    _announce_all(s, "ready", now=0.0)
    s.announce(2, "held-by-2", "m1", 1, 30.0, now=0.0)
    drop = s.drop_rank(1, now=1.0, name="server-1")
    assert drop is not None
    assert set(drop.request_ids) == {"held-by-0-1", "ready"}
    assert "server-1" in drop.reason
    assert s.backlog == 2
    assert s.next_job(now=100.0) is None  # "ready" is gone
    # the survivors can still complete
    s.announce(1, "held-by-0", "m1", 1, 30.0, now=2.0)
    s.announce(2, "held-by-0", "m1", 1, 30.0, now=2.0)
    assert s.next_job(now=20.0) == Job("m1", ("held-by-0",), (1,))
    # a dropped id cannot come back; its late holder learns why it was dropped
    assert s.announce(2, "held-by-0-1", "m1", 1, 30.0, now=3.0) == Drop(
        ("held-by-0-1",), drop.reason
    )


def test_drop_rank_with_nothing_held_returns_none() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.0, max_delay_s=0.0)
    s.announce(0, "r1", "m1", 1, 30.0, now=0.0)
    assert s.drop_rank(1, now=1.0, name="server-1") is None
    assert s.backlog == 1


def test_drop_all() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=10.0, max_delay_s=10.0)
    assert s.drop_all(now=0.0, reason="restart") is None
    s.announce(0, "a", "m1", 1, 30.0, now=0.0)
    _announce_all(s, "b", now=0.0)
    drop = s.drop_all(now=1.0, reason="restart")
    assert drop is not None and set(drop.request_ids) == {"a", "b"}
    assert drop.reason == "restart"
    assert s.backlog == 0
    assert s.next_job(now=100.0) is None
    assert s.next_wakeup() is None


# ---------------------------------------------------------------- wake-ups


def test_next_wakeup() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.5, max_delay_s=2.0)
    assert s.next_wakeup() is None
    s.announce(0, "a", "m1", 1, 10.0, now=0.0)
    assert s.next_wakeup() == pytest.approx(10.0)  # a's deadline
    s.announce(0, "b", "m1", 1, 3.0, now=1.0)
    assert s.next_wakeup() == pytest.approx(4.0)  # b's deadline is sooner
    s.announce(1, "a", "m1", 1, 10.0, now=2.0)  # a ready at 2.0
    assert s.next_wakeup() == pytest.approx(2.5)  # quiet gap ends
    assert s.next_job(now=2.25) is None
    assert s.next_job(now=2.5) == Job("m1", ("a",), (1,))
    assert s.next_wakeup() == pytest.approx(4.0)
    s.expire(now=4.0, names=NAMES)
    assert s.next_wakeup() is None


def test_next_wakeup_during_a_burst_is_the_max_delay() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.5, max_delay_s=1.0)
    _announce_all(s, "a", now=0.0)
    for i in range(1, 4):
        _announce_all(s, f"b{i}", now=i * 0.25)
    # last announce at 0.75 -> quiet at 1.25; but a has waited max_delay at 1.0
    assert s.next_wakeup() == pytest.approx(1.0)
    job = s.next_job(now=1.0)
    assert job is not None and job.request_ids == ("a", "b1", "b2", "b3")


# ---------------------------------------------------------------- bursts after a batched job


def test_after_a_batched_job_waits_for_its_clients_to_return() -> None:
    s = _scheduler(2, max_batch_rows=4, max_wait_s=0.005, max_delay_s=0.3)
    s.job_done("m1", requests=2, now=1.0)  # two clients were just answered
    _announce_all(s, "a", now=1.0)  # another group was queued meanwhile
    assert s.next_job(now=1.05) is None  # quiet, but the two answered clients may return
    assert s.next_wakeup() == pytest.approx(1.0 + 0.3)  # return window = max_delay
    _announce_all(s, "b", now=1.06)
    _announce_all(s, "c", now=1.07)
    _announce_all(s, "d", now=1.08)
    job = s.next_job(now=1.08)  # full: the burst is whole again
    assert job is not None and job.request_ids == ("a", "b", "c", "d")


def test_the_return_window_ends_once_as_many_clients_are_back() -> None:
    """Three clients answered together come back: after the quiet gap they go, without
    waiting out the window (which would add it to every cycle of a steady load)."""
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.005, max_delay_s=0.3)
    s.job_done("m1", requests=3, now=1.0)
    _announce_all(s, "a", now=1.01)
    _announce_all(s, "b", now=1.011)
    assert s.next_job(now=1.02) is None  # quiet, but one of the three is still on its way
    assert s.next_wakeup() == pytest.approx(1.3)
    _announce_all(s, "c", now=1.021)
    assert s.next_wakeup() == pytest.approx(1.026)  # the quiet gap after c, not the window
    assert s.next_job(now=1.025) is None
    job = s.next_job(now=1.026)
    assert job is not None and job.request_ids == ("a", "b", "c")


def test_return_window_is_bounded() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.005, max_delay_s=0.3)
    s.job_done("m1", requests=5, now=1.0)
    _announce_all(s, "a", now=1.0)
    assert s.next_job(now=1.29) is None
    job = s.next_job(now=1.301)
    assert job is not None and job.request_ids == ("a",)


def test_a_sequential_client_skips_the_quiet_gap() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.005, max_delay_s=0.3)
    s.job_done("m1", requests=1, now=1.0)
    s.announce(0, "next", "m1", 1, 30.0, now=1.001)
    assert s.next_job(now=1.001) is None  # not ready: one server has not reported it
    s.announce(1, "next", "m1", 1, 30.0, now=1.002)
    assert s.next_wakeup() == pytest.approx(1.002)
    assert s.next_job(now=1.002) == Job("m1", ("next",), (1,))


def test_a_second_client_brings_the_quiet_gap_back() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.005, max_delay_s=0.3)
    s.job_done("m1", requests=1, now=1.0)
    _announce_all(s, "a", now=1.002)
    s.announce(0, "b", "m1", 1, 30.0, now=1.002)  # another client's request is on its way
    assert s.next_job(now=1.002) is None
    s.announce(1, "b", "m1", 1, 30.0, now=1.003)
    assert s.next_job(now=1.0075) is None  # quiet gap counts from b's announce
    assert s.next_job(now=1.008) == Job("m1", ("a", "b"), (1, 1))


def test_the_first_request_for_a_model_waits_the_quiet_gap() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.005, max_delay_s=0.3)
    _announce_all(s, "a", now=1.0)
    assert s.next_job(now=1.0) is None
    s.job_done("other", requests=1, now=1.001)  # another model's sequential client
    assert s.next_job(now=1.001) is None
    assert s.next_job(now=1.0075) == Job("m1", ("a",), (1,))


def test_max_delay_counts_from_when_the_worker_was_free() -> None:
    s = _scheduler(2, max_batch_rows=64, max_wait_s=0.1, max_delay_s=0.2)
    _announce_all(s, "queued", now=0.0)  # ready while a long job ran
    s.job_done(None, 0, now=5.0)
    _announce_all(s, "other", now=5.05)  # keeps the model from going quiet
    assert s.next_job(now=5.1) is None  # waited 5 s, but only 0.1 s of it idle
    job = s.next_job(now=5.21)
    assert job is not None and job.request_ids == ("queued", "other")
