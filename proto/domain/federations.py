"""Federations as domain types: settings (public), state, round results, events.

Mirrors ``ppml/v1/federation.proto``; :mod:`ppml.proto.wire.federations`
converts. A federation trains one model over several data owners' machines:
each round, every invited participant trains the current global model
locally and submits its update; the servers (MPC back end) or the leader
(CKKS back end) aggregate the updates without seeing them. Loss figures
appear only as this server's shares (:class:`RoundResult`): the owner sums
every server's share to read them.

The **flat layout** (:func:`flatten`, :func:`unflatten`) is the contract
between participants and the CKKS aggregator: every parameter of the
architecture in ascending order of name, each in row-major order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np
import numpy.typing as npt

from ppml.proto.domain.architecture import Architecture
from ppml.proto.shares import Ring

BACKENDS = ("mpc", "ckks")
STRATEGIES = ("fedavg", "fedprox")
KIND = "federate"  # the job kind that closes rounds (servers/kinds/federate.py)
MAX_UPDATE_WEIGHT = 2**24  # the most rows (sample count) one participant's update may weigh


def weight_bounds(dp_enabled: bool) -> tuple[int, int]:
    """The range each update's weight must lie in: its sample count, or exactly 1 with DP
    (DP-FedAvg weighs every clipped update alike). Checked in MPC when a round closes
    (``ppml.servers.mpc.aggregation.update_checks``) and at submission for CKKS (the weight
    is public)."""
    return (1, 1) if dp_enabled else (1, MAX_UPDATE_WEIGHT)


class FederationState(Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    BUDGET_EXHAUSTED = "budget_exhausted"

    @property
    def terminal(self) -> bool:
        return self is not FederationState.RUNNING


@dataclass(frozen=True)
class DpSettings:
    """Client-level DP-FedAvg; off while ``clip_norm`` is 0."""

    clip_norm: float = 0.0
    noise_multiplier: float = 0.0  # 0: calibrated from target_epsilon over every round
    target_epsilon: float = 0.0
    delta: float = 1e-5
    epsilon_budget: float = 0.0  # 0: target_epsilon (or unlimited without one)

    @property
    def enabled(self) -> bool:
        return self.clip_norm > 0


@dataclass(frozen=True)
class FederationSpec:
    participants: tuple[str, ...]
    rounds: int
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.1
    strategy: str = "fedavg"
    mu: float = 0.0
    min_participants: int = 1
    round_deadline_s: float = 300.0
    backend: str = "mpc"
    dp: DpSettings = field(default_factory=DpSettings)
    loss: str = "cross_entropy"
    ckks_fingerprint: str = ""


@dataclass(frozen=True)
class RoundResult:
    round: int  # 1-based
    participants: tuple[str, ...]  # whose updates were aggregated
    dropped: tuple[str, ...]  # invited, left out of the round
    applied: bool
    epsilon: float = 0.0  # total after this round
    loss_sum: Ring | None = None  # this server's share of sum(n_k * loss_k)
    weight_sum: Ring | None = None  # this server's share of sum(n_k) of those reporting a loss
    closed_unix_ms: int = 0
    reason: str = ""

    def public(self) -> RoundResult:
        return replace(self, loss_sum=None, weight_sum=None)


@dataclass(frozen=True)
class FederationInfo:
    federation_id: str
    model_id: str
    name: str
    owner: str
    architecture: Architecture
    spec: FederationSpec
    state: FederationState = FederationState.RUNNING
    reason: str = ""
    round: int = 1
    round_deadline_unix_s: float = 0.0
    results: tuple[RoundResult, ...] = ()
    noise_multiplier: float = 0.0
    epsilon_spent: float = 0.0
    created_unix_ms: int = 0
    finished_unix_ms: int = 0
    submitted: tuple[str, ...] = ()

    def evolve(self, **changes: object) -> FederationInfo:
        return replace(self, **changes)  # type: ignore[arg-type]

    def public(self) -> FederationInfo:
        return replace(self, results=tuple(r.public() for r in self.results))

    @property
    def may_see(self) -> frozenset[str]:
        """Who may fetch the global model: the owner and the participants."""
        return frozenset((self.owner, *self.spec.participants))


@dataclass(frozen=True)
class FederationEvent:
    index: int
    federation_id: str
    state: FederationState
    round: int
    result: RoundResult | None = None
    reason: str = ""
    epsilon_spent: float = 0.0

    def public(self) -> FederationEvent:
        return replace(self, result=self.result.public() if self.result else None)


# ---------------------------------------------------------------- flat layout

Floats = npt.NDArray[np.float64]


def parameter_names(architecture: Architecture) -> list[str]:
    return sorted(architecture.parameter_shapes())


def parameter_count(architecture: Architecture) -> int:
    return sum(math.prod(s) for s in architecture.parameter_shapes().values())


def flatten(architecture: Architecture, named: Mapping[str, npt.ArrayLike]) -> Floats:
    """The parameters as one float64 vector (layout in the module docstring)."""
    shapes = architecture.parameter_shapes()
    if set(named) != set(shapes):
        raise ValueError(f"expected parameters {sorted(shapes)}, got {sorted(named)}")
    parts = [np.asarray(named[n], dtype=np.float64).reshape(-1) for n in sorted(shapes)]
    return np.concatenate(parts) if parts else np.zeros(0)


def unflatten(architecture: Architecture, vector: npt.ArrayLike) -> dict[str, Floats]:
    """Inverse of :func:`flatten`."""
    flat = np.asarray(vector, dtype=np.float64).reshape(-1)
    shapes = architecture.parameter_shapes()
    total = sum(math.prod(s) for s in shapes.values())
    if flat.size != total:
        raise ValueError(f"the model has {total} parameters, the vector {flat.size}")
    out: dict[str, Floats] = {}
    offset = 0
    for name in sorted(shapes):
        size = math.prod(shapes[name])
        out[name] = flat[offset : offset + size].reshape(shapes[name])
        offset += size
    return out
