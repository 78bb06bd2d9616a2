"""Sane-update checks in MPC and a job failing on one party only, between real processes.

Two compute parties and the dealer (``mpc_job_checks.py``), a session with
the default 120 s timeout:

* the range check on secret weights (``servers/mpc/aggregation/update_checks.py``)
  accepts exactly the weights in range, for edge values, the ring's extremes
  and garbage shares, opening one bit per participant;
* a job every party fails alike ends there and the session goes on;
* a job that fails on rank 0 only, after its last collective, while rank 1
  completed it and went idle, ends on rank 0 within seconds (not after the
  120 s timeout: the failure barrier is bounded), and rank 1's next job fails
  at once (rank 0 broke the session), so the leader restarts the session
  within seconds instead of stalling every job for two minutes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ppml.proto.domain import federations as fed
from ppml.servers.mpc.session import FAILURE_BARRIER_S
from tests.integration.mpc_cluster import MpcCluster
from tests.integration.mpc_job_checks import expected_valid, weight_cases

ENDS_WITHIN_S = 20.0  # generous for two loaded cores; the session's timeout is 120 s
FAILS_AT_ONCE_S = 3.0


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, dict]]:
    cluster = MpcCluster(tmp_path_factory.mktemp("checks"), 2, timeouts=[(120.0, 120.0)])
    try:
        cluster.start("checks")
        yield cluster.results(timeout=200)
    finally:
        cluster.stop()


def test_weight_range_check_opens_exactly_the_valid_bits(results: dict[int, dict]) -> None:
    values = weight_cases()
    plain = expected_valid(values, 1, fed.MAX_UPDATE_WEIGHT)
    dp = expected_valid(values, 1, 1)
    inside = [True, True, True, False, False, False, False, True, True]  # edges
    assert plain == inside + [False] * (len(values) - len(inside))  # ring extremes, garbage
    assert dp == [False, True] + [False] * (len(values) - 2)
    for rank in (0, 1):
        assert results[rank]["events"]["plain"] == plain
        assert results[rank]["events"]["dp"] == dp
        assert results[rank]["outcomes"]["range"]["ok"] is True


def test_a_job_every_party_fails_alike_keeps_the_session(results: dict[int, dict]) -> None:
    for rank in (0, 1):
        outcome = results[rank]["outcomes"]["both"]
        assert (outcome["ok"], outcome["sound"]) == (False, True)
        assert "failed on every server alike" in results[rank]["events"]["both-abort"]


def test_a_job_failing_on_one_party_only_ends_everywhere_within_seconds(
    results: dict[int, dict],
) -> None:
    leader, follower = results[0], results[1]
    raised = leader["events"]["rank0-raised"]
    ended = leader["outcomes"]["rank0"]
    assert (ended["ok"], ended["sound"]) == (False, False)  # the session is restarted
    waited = ended["at"] - raised
    assert FAILURE_BARRIER_S - 0.5 <= waited < ENDS_WITHIN_S, waited
    assert follower["outcomes"]["rank0"]["ok"] is True  # rank 1 completed it and went idle
    after = follower["outcomes"]["after"]
    assert (after["ok"], after["sound"]) == (False, False)
    assert after["at"] - follower["outcomes"]["after-started"] < FAILS_AT_ONCE_S
    assert after["at"] - raised < ENDS_WITHIN_S
