"""Federations as the cluster sees them: every server's record merged, as tables.

The leader (rank 0) closes each round and the other servers follow it, so a
federation's settings and rounds come from the lowest-ranked server that
listed it; the page flags servers whose state differs. Everything here is
public: who was invited, who took part in or dropped out of each round, and
the privacy budget spent (client-level DP). Loss figures exist only as
shares for the owner and never reach the dashboard. Pure functions: a
snapshot in, frames out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ppml.dashboard.data import ClusterSnapshot
from ppml.dashboard.records import Record

NONE = "—"
RUNNING = "running"


@dataclass(frozen=True)
class ClusterFederation:
    record: Record  # the lowest-ranked server's record
    states: dict[str, str]  # server -> state, for every server that listed it

    def get(self, key: str, default: Any = None) -> Any:
        return self.record.get(key, default)

    @property
    def federation_id(self) -> str:
        return str(self.get("federation_id", ""))

    @property
    def label(self) -> str:
        name = str(self.get("name") or "")
        return f"{name} ({self.federation_id})" if name else self.federation_id

    @property
    def agreed(self) -> bool:
        return len(set(self.states.values())) <= 1

    @property
    def state(self) -> str:
        return str(self.get("state", ""))

    @property
    def results(self) -> list[Record]:
        return list(self.get("results") or [])

    @property
    def dp(self) -> bool:
        return float(self.get("dp_clip_norm", 0.0) or 0.0) > 0

    @property
    def budget(self) -> float | None:
        """The epsilon it may spend: None without DP, ``inf`` when unlimited."""
        if not self.dp:
            return None
        budget = float(self.get("dp_epsilon_budget", 0.0) or 0.0)
        return budget or float(self.get("dp_target_epsilon", 0.0) or 0.0) or math.inf

    def describe_round(self) -> str:
        """``3 of 5`` (the open round), or the rounds closed once it ended."""
        rounds = int(self.get("rounds", 0) or 0)
        if self.state == RUNNING:
            return f"{int(self.get('round', 0) or 0)} of {rounds}"
        return f"{len(self.results)} of {rounds} closed"

    def describe_state(self) -> str:
        if self.agreed:
            return self.state
        each = ", ".join(f"{server}: {state}" for server, state in self.states.items())
        return f"{self.state} ({each})"

    def describe_dp(self) -> str:
        if not self.dp:
            return "off"
        target = float(self.get("dp_target_epsilon", 0.0) or 0.0)
        return (
            f"clip {float(self.get('dp_clip_norm')):g}, "
            f"noise multiplier {float(self.get('noise_multiplier', 0.0) or 0.0):.3g}"
            + (f" (for ε {target:g})" if target else "")
            + f", δ {float(self.get('dp_delta', 0.0) or 0.0):g}"
        )

    def describe_epsilon(self) -> str:
        """``1.62 of 4`` (spent of the budget), ``1.62 (no budget)``, or ``off``."""
        budget = self.budget
        if budget is None:
            return "off"
        spent = f"{float(self.get('epsilon_spent', 0.0) or 0.0):.2f}"
        return f"{spent} (no budget)" if math.isinf(budget) else f"{spent} of {budget:g}"


def cluster_federations(snapshot: ClusterSnapshot) -> list[ClusterFederation]:
    """Every federation any server listed: running ones first (oldest first), then the
    ended ones, newest first."""
    ranks = {s.name: s.rank for s in snapshot.servers}
    by_id: dict[str, list[Record]] = {}
    for record in snapshot.federations:
        by_id.setdefault(str(record.get("federation_id", "")), []).append(record)
    merged = []
    for records in by_id.values():
        records.sort(key=lambda r: ranks.get(str(r.get("server", "")), len(ranks)))
        states = {str(r.get("server", "")): str(r.get("state", "")) for r in records}
        merged.append(ClusterFederation(records[0], states))
    return sorted(merged, key=_order)


def _order(f: ClusterFederation) -> tuple[int, int]:
    created = int(f.get("created_unix_ms", 0) or 0)
    return (0, created) if f.state == RUNNING else (1, -created)


FEDERATION_COLUMNS = [
    "name",
    "id",
    "owner",
    "backend",
    "state",
    "round",
    "participants",
    "min",
    "DP",
    "epsilon spent",
    "reason",
]


def federations(snapshot: ClusterSnapshot) -> pd.DataFrame:
    """One row per federation: settings, state, round, privacy budget."""
    rows = [
        {
            "name": f.get("name") or NONE,
            "id": f.federation_id,
            "owner": f.get("owner") or NONE,
            "backend": f.get("backend") or NONE,
            "state": f.describe_state(),
            "round": f.describe_round(),
            "participants": ", ".join(f.get("participants") or []) or NONE,
            "min": int(f.get("min_participants", 0) or 0),
            "DP": f.describe_dp(),
            "epsilon spent": f.describe_epsilon(),
            "reason": f.get("reason") or NONE,
        }
        for f in cluster_federations(snapshot)
    ]
    return pd.DataFrame(rows, columns=FEDERATION_COLUMNS)


ROUND_COLUMNS = ["round", "participants", "dropped", "applied", "epsilon", "reason"]


def rounds(federation: ClusterFederation) -> pd.DataFrame:
    """One row per closed round: who took part, who dropped out, epsilon after it (text)."""
    rows = [
        {
            "round": int(r.get("round", 0)),
            "participants": ", ".join(r.get("participants") or []) or NONE,
            "dropped": ", ".join(r.get("dropped") or []) or NONE,
            "applied": "yes" if r.get("applied") else "no",
            "epsilon": f"{float(r.get('epsilon', 0.0) or 0.0):.3f}" if federation.dp else NONE,
            "reason": r.get("reason") or NONE,
        }
        for r in federation.results
    ]
    return pd.DataFrame(rows, columns=ROUND_COLUMNS)


def participation(federation: ClusterFederation) -> pd.DataFrame:
    """Long form for a stacked bar: per round, how many took part and how many dropped."""
    rows = [
        {"round": int(r.get("round", 0)), "kind": kind, "count": len(r.get(key) or [])}
        for r in federation.results
        for kind, key in (("took part", "participants"), ("dropped", "dropped"))
    ]
    return pd.DataFrame(rows, columns=["round", "kind", "count"])


def epsilon_series(federation: ClusterFederation) -> pd.DataFrame:
    """Epsilon spent after each closed round (round 0: nothing spent yet)."""
    rows = [{"round": 0, "epsilon": 0.0}] + [
        {"round": int(r.get("round", 0)), "epsilon": float(r.get("epsilon", 0.0) or 0.0)}
        for r in federation.results
    ]
    return pd.DataFrame(rows, columns=["round", "epsilon"])
