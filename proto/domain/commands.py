"""Control-plane messages between the leader and the other parties, as domain types.

Mirrors ``ppml/v1/coordinator.proto``; :mod:`ppml.proto.wire.serde` converts. The
job a :class:`RunJob` carries is an instance of its kind's job type (defined
with the kind, in ``ppml.servers.kinds``); serde copies it field by field, so
this module knows no job kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Hello:
    rank: int
    role: str  # "party" | "dealer"
    incarnation: str


@dataclass(frozen=True)
class Announce:
    """A party holds its part of some work and it is valid there."""

    kind: str  # the job kind that runs it
    id: str  # request, job or round id
    group: str  # work of one group may be batched together (predict: the model id)
    size: int  # rows of a prediction request; MPC steps of a long job
    timeout_s: float  # for every party to announce it


@dataclass(frozen=True)
class DealerStats:
    requests: dict[str, int]
    sessions: int


@dataclass(frozen=True)
class CancelJob:
    job_id: str
    reason: str


@dataclass(frozen=True)
class JoinEpoch:
    epoch: int
    tag: str  # hex of 128 random bits: binds this epoch's MPC links together


@dataclass(frozen=True)
class RunJob:
    """The leader's decision ``seq``: every party runs ``job`` (of ``kind``) in ``epoch``."""

    seq: int
    epoch: int
    kind: str
    job: Any  # the kind's job type, a frozen dataclass


@dataclass(frozen=True)
class DropRequests:
    request_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Staged:
    """A party holds its share of an upload durably, staged: not usable until committed."""

    kind: str  # "dataset" | "model"
    record_id: str
    upload: str  # the attempt: the caller's upload id, scoped to the caller


@dataclass(frozen=True)
class UploadDecision:
    """The leader's decision on a staged upload: every party commits it, or every party drops it."""

    kind: str
    record_id: str
    upload: str
    commit: bool
    reason: str


LeaderCommand = JoinEpoch | RunJob | DropRequests | UploadDecision
PartyMessage = Hello | Announce | DealerStats | CancelJob | Staged
