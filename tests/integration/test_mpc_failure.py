"""A party dies mid-computation: the others fail at once, then rejoin a new epoch.

Rank 1 is killed while the session computes in a loop. Rank 0 and the dealer
must raise ``RuntimeError`` within about a second (not after the 60 s
timeout), leave, and join epoch 1 in the same processes with a restarted
rank 1, where results are correct again. In epoch 1 (timeout 5 s) rank 1 then
goes silent without dying: rank 0 fails once the timeout has passed.
"""

from __future__ import annotations

from pathlib import Path

from mpc_cluster import MpcCluster

FAIL_FAST_S = 2.0  # generous for two loaded cores; the failure is driven by EOF, not a timer
TIMEOUT_S = 5.0


def test_survivors_fail_fast_then_rejoin_a_new_epoch_in_process(tmp_path: Path) -> None:
    cluster = MpcCluster(
        tmp_path, 2, epochs=2, timeouts=[(60.0, 120.0), (TIMEOUT_S, 120.0)], silence_s=12.0
    )
    try:
        cluster.start("fail")
        cluster.wait_for("computing-0-0")
        cluster.wait_for("computing-0-1")
        survivors = (cluster.pid(0), cluster.pid(cluster.dealer_rank))
        killed_at = cluster.kill(1)
        cluster.start("fail", ranks=[1], first_epoch=1)  # a restarted rank 1, for epoch 1 only
        results = cluster.results()
    finally:
        cluster.stop()
    assert survivors == (cluster.pid(0), cluster.pid(cluster.dealer_rank))

    killed, rejoined, stalled = results[0]["events"]
    assert killed["epoch"] == 0 and "server-1" in killed["error"]
    assert 0 <= killed["failed_at"] - killed_at < FAIL_FAST_S, killed
    first, second = results[cluster.dealer_rank]["epochs"]
    assert first["reason"].startswith("session failed"), first
    assert first["at"] - killed_at < FAIL_FAST_S, first

    assert rejoined == {"epoch": 1, "ok": True, "iterations": 3}
    assert results[1]["events"] == [{"epoch": 1, "ok": True, "iterations": 3}]
    assert second["reason"].startswith("session failed"), second  # rank 0 left it broken

    assert f"no data from server-1 for {TIMEOUT_S} s" in stalled["error"], stalled
    waited = stalled["failed_at"] - stalled["stalled_at"]
    assert TIMEOUT_S - 0.5 <= waited < 30, waited
