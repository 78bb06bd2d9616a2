"""What a job kind is: how the leader plans its work and how every party runs it.

A kind is one module of :mod:`ppml.servers.kinds` holding its job type (a
frozen dataclass mirrored field by field by its message in
``ppml/v1/coordinator.proto``), its :class:`JobKind` (the worker side: take
what this server holds for the job, run it inside the MPC session, abort it)
and, if its work does not go through the shared long-work queue, its
:class:`Planner` (the leader side). The registry in ``kinds/__init__.py``
lists the kinds; nothing else in the servers names one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ppml.proto.deploy.topology import ClusterConfig
from ppml.proto.domain import commands as cmd
from ppml.servers.control.holds import Holds
from ppml.servers.control.job_queue import Policy, Step
from ppml.servers.mpc.core.model import ModelCache
from ppml.servers.mpc.fast.service.party import FastInference
from ppml.servers.mpc.rep3.service.party import ReplicatedInference
from ppml.servers.store.datasets import DatasetRegistry
from ppml.servers.store.federations import FederationManager
from ppml.servers.store.jobs import JobManager
from ppml.servers.store.metrics import ServerMetrics
from ppml.servers.store.models import ModelRegistry

Submit = Callable[[cmd.PartyMessage], bool]  # to the leader; False if it cannot be reached


@dataclass(frozen=True)
class KindEnv:
    """Everything of this server a kind may use."""

    rank: int
    config: ClusterConfig
    holds: Holds
    models: ModelRegistry
    datasets: DatasetRegistry
    jobs: JobManager
    metrics: ServerMetrics
    model_cache: ModelCache
    submit: Submit
    is_serving: Callable[[], bool]
    federations: FederationManager
    fast: FastInference | None = None  # two-party clusters with fast inference on
    replicated: ReplicatedInference | None = None  # engine = "replicated" (no dealer)


@dataclass(frozen=True)
class Drop:
    """Every party drops these holds; their callers get ``reason``."""

    ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class JobStats:
    """How a job is counted in the metrics: its model (if any) and its requests."""

    model_id: str = ""
    requests: int = 0


class Planner:
    """The leader's side of some kinds: their announced work and what runs next (pure)."""

    priority: ClassVar[int]  # planners are asked in this order, lower first
    kinds: tuple[str, ...]  # kinds whose announcements and jobs this planner handles
    accepts_while_down: ClassVar[bool] = True  # announcements wait for the next session

    def announce(self, rank: int, announce: cmd.Announce, now: float) -> list[Drop]:
        return []

    def cancel(self, job_id: str, reason: str) -> None:
        """The owner cancelled ``job_id`` (unknown ids are ignored)."""

    def expire(self, now: float, names: list[str]) -> list[Drop]:
        return []

    def next_job(self, now: float, idle_since: float) -> tuple[str, Any] | None:
        """``(kind, job)`` to run on every party now, if any."""
        raise NotImplementedError

    def next_wakeup(self, idle_since: float) -> float | None:
        return None

    def done(self, kind: str, job: Any, ok: bool, reason: str, now: float) -> None:
        """A job (of any kind) ran everywhere (``ok``) or failed somewhere."""

    def rank_lost(self, rank: int, name: str, reason: str, now: float) -> list[Drop]:
        """Party ``rank`` left (or came back): the work it held is gone."""
        return []

    def session_restarted(self, reason: str) -> None:
        """Every party leaves the MPC session: in-memory secret state is gone."""

    @property
    def backlog(self) -> int:
        return 0


class JobKind:
    """One kind of MPC job, as every party runs it."""

    name: ClassVar[str]  # its RunJob oneof field in coordinator.proto
    job_type: ClassVar[type]
    needs_session: ClassVar[bool] = True  # False: runs (in order) even while the session is down
    long_work: ClassVar[Policy | None] = None  # set: announced work runs via the long-work queue

    def __init__(self, env: KindEnv) -> None:
        self.env = env

    def planner(self) -> Planner | None:
        """This kind's own leader-side planner (rank 0 only); None for long work or none."""
        return None

    def step_job(self, step: Step) -> Any:
        """The job for one step of announced long work (kinds with ``long_work``)."""
        raise NotImplementedError

    def take(self, job: Any) -> Any:
        """Take what this server holds for ``job`` (before the session is checked)."""
        return None

    def run(self, seq: int, job: Any, taken: Any) -> JobStats:
        """Run ``job`` inside the MPC session, in lockstep with every other party."""
        raise NotImplementedError

    def abort(self, job: Any, taken: Any, reason: str) -> None:
        """``job`` could not run here, or failed: tell whoever waits for it."""

    def session_lost(self, reason: str) -> None:
        """This server left the MPC session: drop in-memory state of running work."""

    def ended(self, job_id: str, state: str, reason: str) -> None:
        """The leader ended long work ``job_id`` on every party (any kind's; may be unknown)."""

    def attach(self, kinds: dict[str, JobKind]) -> None:
        """Every kind of this server, once all are built (for kinds that act on others)."""
