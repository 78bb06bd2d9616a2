"""Job kinds: the registry. Each kind is one module; adding one adds a line here.

See :mod:`ppml.servers.kinds.base` for what a kind provides.
"""

from __future__ import annotations

from ppml.servers.kinds.base import JobKind, KindEnv, Planner
from ppml.servers.kinds.end import EndKind
from ppml.servers.kinds.evaluate import EvaluateKind
from ppml.servers.kinds.federate import FederateKind
from ppml.servers.kinds.heartbeat import HeartbeatKind
from ppml.servers.kinds.long_work import LongWorkPlanner
from ppml.servers.kinds.predict import PredictKind
from ppml.servers.kinds.refill import RefillKind
from ppml.servers.kinds.train import TrainKind

KINDS: tuple[type[JobKind], ...] = (
    PredictKind,
    EvaluateKind,
    TrainKind,
    FederateKind,
    EndKind,
    RefillKind,
    HeartbeatKind,
)


def job_types() -> dict[str, type]:
    """Each kind's name (its ``RunJob`` oneof field) and job type, for serde."""
    return {kind.name: kind.job_type for kind in KINDS}


def build(env: KindEnv) -> dict[str, JobKind]:
    kinds = {cls.name: cls(env) for cls in KINDS}
    for kind in kinds.values():
        kind.attach(kinds)
    return kinds


def planners(kinds: dict[str, JobKind], world_size: int) -> list[Planner]:
    """The leader's planners, in the order it asks them for work."""
    found = [p for p in (kind.planner() for kind in kinds.values()) if p is not None]
    found.append(LongWorkPlanner(world_size, kinds))
    return sorted(found, key=lambda planner: planner.priority)
