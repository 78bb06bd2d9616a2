"""Control-plane messages between the leader and the other parties, as domain types.

Mirrors ``ppml/v1/coordinator.proto``; :mod:`ppml.proto.serde` converts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hello:
    rank: int
    role: str  # "party" | "dealer"
    incarnation: str


@dataclass(frozen=True)
class Announce:
    request_id: str
    model_id: str
    rows: int
    timeout_s: float


@dataclass(frozen=True)
class DealerStats:
    requests: dict[str, int]
    sessions: int


@dataclass(frozen=True)
class JoinEpoch:
    epoch: int
    store_prefix: str


@dataclass(frozen=True)
class PredictJob:
    model_id: str
    request_ids: tuple[str, ...]
    rows: tuple[int, ...]


@dataclass(frozen=True)
class HeartbeatJob:
    pass


@dataclass(frozen=True)
class JobAnnounce:
    """A party holds a valid training job or evaluation request."""

    job_id: str
    kind: str  # "train" | "evaluate"
    steps: int
    timeout_s: float


@dataclass(frozen=True)
class CancelJob:
    job_id: str
    reason: str


@dataclass(frozen=True)
class TrainStep:
    job_id: str
    step: int


@dataclass(frozen=True)
class EvaluateJob:
    request_id: str


@dataclass(frozen=True)
class EndJob:
    job_id: str
    state: str  # "failed" | "cancelled"
    reason: str


Job = PredictJob | HeartbeatJob | TrainStep | EvaluateJob | EndJob

_KINDS: dict[type, str] = {
    PredictJob: "predict",
    HeartbeatJob: "heartbeat",
    TrainStep: "train",
    EvaluateJob: "evaluate",
    EndJob: "end_job",
}


@dataclass(frozen=True)
class RunJob:
    seq: int
    epoch: int
    job: Job

    @property
    def kind(self) -> str:
        return _KINDS[type(self.job)]


@dataclass(frozen=True)
class DropRequests:
    request_ids: tuple[str, ...]
    reason: str


LeaderCommand = JoinEpoch | RunJob | DropRequests
PartyMessage = Hello | Announce | DealerStats | JobAnnounce | CancelJob
