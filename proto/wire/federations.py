"""Conversions between federation domain objects and ``ppml.v1.federation`` messages.

The federation family of :mod:`ppml.proto.wire.serde` (which holds the shared
pieces: shares, architectures): ``x_to_proto`` / ``x_from_proto`` pairs that
validate what arrives from the network.
"""

from __future__ import annotations

from ppml.proto.domain import federations as fed
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.wire import serde
from ppml.v1 import federation_pb2 as pb

_STATES = {
    fed.FederationState.RUNNING: pb.FEDERATION_STATE_RUNNING,
    fed.FederationState.SUCCEEDED: pb.FEDERATION_STATE_SUCCEEDED,
    fed.FederationState.FAILED: pb.FEDERATION_STATE_FAILED,
    fed.FederationState.CANCELLED: pb.FEDERATION_STATE_CANCELLED,
    fed.FederationState.BUDGET_EXHAUSTED: pb.FEDERATION_STATE_BUDGET_EXHAUSTED,
}
_STATES_BACK = {v: k for k, v in _STATES.items()}


def state_from_proto(value: int) -> fed.FederationState:
    if value not in _STATES_BACK:
        raise PpmlError(ErrorCode.INVALID_ARGUMENT, f"unknown federation state {value}")
    return _STATES_BACK[value]  # type: ignore[index]


def spec_to_proto(spec: fed.FederationSpec) -> pb.FederationSpec:
    dp = spec.dp
    return pb.FederationSpec(
        participants=list(spec.participants),
        rounds=spec.rounds,
        local_epochs=spec.local_epochs,
        batch_size=spec.batch_size,
        lr=spec.lr,
        strategy=spec.strategy,
        mu=spec.mu,
        min_participants=spec.min_participants,
        round_deadline_s=spec.round_deadline_s,
        backend=spec.backend,
        dp=pb.DpSettings(
            clip_norm=dp.clip_norm,
            noise_multiplier=dp.noise_multiplier,
            target_epsilon=dp.target_epsilon,
            delta=dp.delta,
            epsilon_budget=dp.epsilon_budget,
        ),
        loss=spec.loss,
        ckks_fingerprint=spec.ckks_fingerprint,
    )


def spec_from_proto(msg: pb.FederationSpec) -> fed.FederationSpec:
    dp = msg.dp
    return fed.FederationSpec(
        participants=tuple(msg.participants),
        rounds=msg.rounds,
        local_epochs=msg.local_epochs,
        batch_size=msg.batch_size,
        lr=msg.lr,
        strategy=msg.strategy,
        mu=msg.mu,
        min_participants=msg.min_participants,
        round_deadline_s=msg.round_deadline_s,
        backend=msg.backend,
        dp=fed.DpSettings(
            dp.clip_norm, dp.noise_multiplier, dp.target_epsilon, dp.delta, dp.epsilon_budget
        ),
        loss=msg.loss,
        ckks_fingerprint=msg.ckks_fingerprint,
    )


def result_to_proto(r: fed.RoundResult) -> pb.RoundResult:
    msg = pb.RoundResult(
        round=r.round,
        participants=list(r.participants),
        dropped=list(r.dropped),
        applied=r.applied,
        epsilon=r.epsilon,
        closed_unix_ms=r.closed_unix_ms,
        reason=r.reason,
    )
    if r.loss_sum is not None:
        msg.loss_sum.CopyFrom(serde.share_to_proto(r.loss_sum))
    if r.weight_sum is not None:
        msg.weight_sum.CopyFrom(serde.share_to_proto(r.weight_sum))
    return msg


def result_from_proto(msg: pb.RoundResult) -> fed.RoundResult:
    return fed.RoundResult(
        round=msg.round,
        participants=tuple(msg.participants),
        dropped=tuple(msg.dropped),
        applied=msg.applied,
        epsilon=msg.epsilon,
        loss_sum=serde.share_from_proto(msg.loss_sum) if msg.HasField("loss_sum") else None,
        weight_sum=serde.share_from_proto(msg.weight_sum) if msg.HasField("weight_sum") else None,
        closed_unix_ms=msg.closed_unix_ms,
        reason=msg.reason,
    )


def info_to_proto(info: fed.FederationInfo) -> pb.FederationInfo:
    return pb.FederationInfo(
        federation_id=info.federation_id,
        model_id=info.model_id,
        name=info.name,
        owner=info.owner,
        architecture=serde.architecture_to_proto(info.architecture),
        spec=spec_to_proto(info.spec),
        state=_STATES[info.state],
        reason=info.reason,
        round=info.round,
        round_deadline_unix_s=info.round_deadline_unix_s,
        results=[result_to_proto(r) for r in info.results],
        noise_multiplier=info.noise_multiplier,
        epsilon_spent=info.epsilon_spent,
        created_unix_ms=info.created_unix_ms,
        finished_unix_ms=info.finished_unix_ms,
        submitted=list(info.submitted),
    )


def info_from_proto(msg: pb.FederationInfo) -> fed.FederationInfo:
    return fed.FederationInfo(
        federation_id=msg.federation_id,
        model_id=msg.model_id,
        name=msg.name,
        owner=msg.owner,
        architecture=serde.architecture_from_proto(msg.architecture),
        spec=spec_from_proto(msg.spec),
        state=state_from_proto(msg.state),
        reason=msg.reason,
        round=msg.round,
        round_deadline_unix_s=msg.round_deadline_unix_s,
        results=tuple(result_from_proto(r) for r in msg.results),
        noise_multiplier=msg.noise_multiplier,
        epsilon_spent=msg.epsilon_spent,
        created_unix_ms=msg.created_unix_ms,
        finished_unix_ms=msg.finished_unix_ms,
        submitted=tuple(msg.submitted),
    )


def info_to_bytes(info: fed.FederationInfo) -> bytes:
    return info_to_proto(info).SerializeToString(deterministic=True)


def info_from_bytes(data: bytes) -> fed.FederationInfo:
    return info_from_proto(pb.FederationInfo.FromString(data))


def event_to_proto(event: fed.FederationEvent) -> pb.FederationEvent:
    msg = pb.FederationEvent(
        index=event.index,
        federation_id=event.federation_id,
        state=_STATES[event.state],
        round=event.round,
        reason=event.reason,
        epsilon_spent=event.epsilon_spent,
    )
    if event.result is not None:
        msg.result.CopyFrom(result_to_proto(event.result))
    return msg


def event_from_proto(msg: pb.FederationEvent) -> fed.FederationEvent:
    return fed.FederationEvent(
        index=msg.index,
        federation_id=msg.federation_id,
        state=state_from_proto(msg.state),
        round=msg.round,
        result=result_from_proto(msg.result) if msg.HasField("result") else None,
        reason=msg.reason,
        epsilon_spent=msg.epsilon_spent,
    )
