"""The rolling history of snapshots and the tables the charts are drawn from.

Servers report cumulative counters (requests, errors, MPC bytes); rates come
from the deltas between two snapshots of the same server. A counter that went
down means the server restarted, and the new value is the delta since then.
Every function here is pure: snapshots in, pandas frames out.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Sequence

import pandas as pd

from ppml.dashboard.data import ClusterSnapshot
from ppml.proto.domain.status import StatusReport

HISTORY_S = 600.0  # charts show the last ten minutes
RATE_WINDOW_S = 10.0  # the "requests/s" in tables: averaged over about this long


class History:
    """Snapshots of the last ``max_age_s`` seconds, oldest first."""

    def __init__(self, max_age_s: float = HISTORY_S) -> None:
        self.max_age_s = max_age_s
        self._items: deque[ClusterSnapshot] = deque()

    def add(self, snapshot: ClusterSnapshot) -> None:
        if self._items and snapshot.taken_at <= self._items[-1].taken_at:
            return  # the same refresh seen twice (or a clock step back): keep it monotonic
        self._items.append(snapshot)
        while self._items and snapshot.taken_at - self._items[0].taken_at > self.max_age_s:
            self._items.popleft()

    @property
    def snapshots(self) -> list[ClusterSnapshot]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


def counter_delta(previous: int, current: int) -> int:
    """Increase of a cumulative counter; a drop means a restart from zero."""
    return current - previous if current >= previous else current


def _time(unix_s: float) -> pd.Timestamp:
    return pd.Timestamp(unix_s, unit="s", tz="UTC")


def _reports(snapshot: ClusterSnapshot) -> dict[str, StatusReport]:
    return {s.name: s.status for s in snapshot.servers if s.status is not None}


def _pairs(
    snapshots: Sequence[ClusterSnapshot],
) -> Iterable[tuple[float, float, str, StatusReport, StatusReport]]:
    """(time, seconds, server, before, after) for each server seen in consecutive snapshots."""
    for before, after in itertools.pairwise(snapshots):
        dt = after.taken_at - before.taken_at
        if dt <= 0:
            continue
        old = _reports(before)
        for name, report in _reports(after).items():
            if name in old:
                yield after.taken_at, dt, name, old[name], report


def request_rates(snapshots: Sequence[ClusterSnapshot]) -> pd.DataFrame:
    """Requests/s per server and model between consecutive snapshots."""
    rows = []
    for t, dt, name, old, new in _pairs(snapshots):
        previous = {m.model_id: m.requests for m in old.models}
        for m in new.models:
            delta = counter_delta(previous.get(m.model_id, 0), m.requests)
            rows.append({"time": _time(t), "server": name, "model": m.model_id, "rps": delta / dt})
    return pd.DataFrame(rows, columns=["time", "server", "model", "rps"])


def recent_rates(snapshots: Sequence[ClusterSnapshot]) -> dict[tuple[str, str], float]:
    """(server, model id) -> requests/s over the last ~RATE_WINDOW_S seconds."""
    if len(snapshots) < 2:
        return {}
    latest = snapshots[-1]
    start = next(
        (s for s in snapshots[:-1] if latest.taken_at - s.taken_at <= RATE_WINDOW_S),
        snapshots[-2],
    )
    dt = latest.taken_at - start.taken_at
    old, new = _reports(start), _reports(latest)
    rates: dict[tuple[str, str], float] = {}
    for name, report in new.items():
        if name not in old or dt <= 0:
            continue
        previous = {m.model_id: m.requests for m in old[name].models}
        for m in report.models:
            rates[(name, m.model_id)] = counter_delta(previous.get(m.model_id, 0), m.requests) / dt
    return rates


def latency_series(snapshots: Sequence[ClusterSnapshot]) -> pd.DataFrame:
    """p50/p95/p99 (ms) per server and model at every snapshot that has any."""
    rows = []
    for snapshot in snapshots:
        for name, report in _reports(snapshot).items():
            for m in report.models:
                if m.latency.count == 0:
                    continue
                latency = m.latency
                quantiles = {"p50": latency.p50_ms, "p95": latency.p95_ms, "p99": latency.p99_ms}
                for quantile, ms in quantiles.items():
                    rows.append(
                        {
                            "time": _time(snapshot.taken_at),
                            "server": name,
                            "model": m.model_id,
                            "quantile": quantile,
                            "ms": ms,
                        }
                    )
    return pd.DataFrame(rows, columns=["time", "server", "model", "quantile", "ms"])


def queue_series(snapshots: Sequence[ClusterSnapshot]) -> pd.DataFrame:
    rows = [
        {"time": _time(s.taken_at), "server": name, "queue_depth": report.queue_depth}
        for s in snapshots
        for name, report in _reports(s).items()
    ]
    return pd.DataFrame(rows, columns=["time", "server", "queue_depth"])


def mpc_throughput(snapshots: Sequence[ClusterSnapshot]) -> pd.DataFrame:
    """MPC bytes/s and rounds/s per server and job kind between consecutive snapshots."""
    rows = []
    for t, dt, name, old, new in _pairs(snapshots):
        previous = {c.kind: c for c in old.mpc_cost}
        for c in new.mpc_cost:
            before = previous.get(c.kind)
            rows.append(
                {
                    "time": _time(t),
                    "server": name,
                    "kind": c.kind,
                    "bytes_per_s": counter_delta(before.bytes if before else 0, c.bytes) / dt,
                    "rounds_per_s": counter_delta(before.rounds if before else 0, c.rounds) / dt,
                }
            )
    return pd.DataFrame(rows, columns=["time", "server", "kind", "bytes_per_s", "rounds_per_s"])
