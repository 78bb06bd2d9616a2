"""Every conversion between domain objects and ``ppml.v1`` protobuf messages.

Domain code never touches ``*_pb2`` modules: it calls these ``x_to_proto`` /
``x_from_proto`` pairs. ``*_from_proto`` functions validate what arrives from
the network and raise :class:`~ppml.proto.errors.PpmlError` with a message a
caller can act on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TypeVar

import numpy as np
from google.protobuf.message import Message

from ppml.proto.domain import architecture as arch
from ppml.proto.domain import commands as cmd
from ppml.proto.domain import jobs, layers
from ppml.proto.domain import status as st
from ppml.proto.domain.datasets import DatasetMeta, DataSource
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.names import quote
from ppml.proto.shares import FRACTIONAL_BITS, Ring
from ppml.v1 import (
    common_pb2,
    coordinator_pb2,
    datasets_pb2,
    registry_pb2,
    status_pb2,
    training_pb2,
)

MAX_ELEMENTS = 1 << 27  # 1 GiB of int64 per tensor
MAX_DIMS = 16
T = TypeVar("T")


# ---------------------------------------------------------------- shares


def share_to_proto(
    share: Ring, out: common_pb2.ShareTensor | None = None
) -> common_pb2.ShareTensor:
    """An int64 share as shape + DTYPE_RING64 + little-endian bytes.

    ``out``: fill this message (e.g. a request's share field) instead of a new
    one, so that the data is not copied once more into its parent.
    """
    array = np.ascontiguousarray(share, dtype="<i8")
    msg = common_pb2.ShareTensor() if out is None else out
    msg.shape[:] = array.shape
    msg.dtype = common_pb2.DTYPE_RING64
    msg.data = array.tobytes()
    msg.fractional_bits = FRACTIONAL_BITS
    return msg


def share_from_proto(msg: common_pb2.ShareTensor, what: str = "share") -> Ring:
    """Validate and decode a ShareTensor; raises INVALID_SHARE on any mismatch."""
    if msg.dtype != common_pb2.DTYPE_RING64:
        name = common_pb2.DType.Name(msg.dtype) if msg.dtype in (0, 1) else str(msg.dtype)
        raise PpmlError(ErrorCode.INVALID_SHARE, f"{what}: dtype must be DTYPE_RING64, got {name}")
    if msg.fractional_bits != FRACTIONAL_BITS:
        raise PpmlError(
            ErrorCode.INVALID_SHARE,
            f"{what}: fractional_bits must be {FRACTIONAL_BITS}, got {msg.fractional_bits}",
        )
    shape = tuple(int(d) for d in msg.shape)
    if not 1 <= len(shape) <= MAX_DIMS or any(d < 0 for d in shape):
        raise PpmlError(
            ErrorCode.INVALID_SHARE,
            f"{what}: shape must have 1-{MAX_DIMS} dimensions, each >= 0; "
            f"got {str(list(shape))[:200]}",
        )
    # numpy refuses a shape whose non-zero dimensions overflow, even with a zero among them
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        raise PpmlError(
            ErrorCode.INVALID_SHARE,
            f"{what}: shape {list(shape)} is too large: its dimensions (zeros counted as 1) "
            f"may multiply to at most {MAX_ELEMENTS}",
        )
    count = math.prod(shape)
    if len(msg.data) != 8 * count:
        raise PpmlError(
            ErrorCode.INVALID_SHARE,
            f"{what}: shape {list(shape)} needs {8 * count} bytes of int64, got {len(msg.data)}",
        )
    return np.frombuffer(msg.data, dtype="<i8").astype(np.int64).reshape(shape)


# ---------------------------------------------------------------- architecture


def layer_to_proto(layer: arch.Layer) -> common_pb2.Layer:
    """Copy a layer's fields into the ``Layer`` oneof message named by its kind."""
    msg = common_pb2.Layer()
    _fields_to_message(layer, _oneof(msg, layer.KIND))
    return msg


def layer_from_proto(msg: common_pb2.Layer, index: int) -> arch.Layer:
    kind = msg.WhichOneof("kind") or ""
    cls = layers.KINDS.get(kind)
    if cls is None:
        raise PpmlError(ErrorCode.INVALID_MODEL, f"layer {index}: no layer kind set")
    layer = _fields_from_message(cls, getattr(msg, kind))
    try:
        layer.check()
    except ValueError as exc:
        raise PpmlError(ErrorCode.INVALID_MODEL, f"layer {index}: {exc}") from None
    return layer  # type: ignore[return-value]


def architecture_to_proto(a: arch.Architecture) -> common_pb2.Architecture:
    msg = common_pb2.Architecture(
        layers=[layer_to_proto(layer) for layer in a.layers],
        input_shape=a.input_shape,
        output_shape=a.output_shape,
        inputs=[common_pb2.LayerInputs(sources=sources) for sources in a.inputs],
    )
    if a.tokens is not None:
        _fields_to_message(a.tokens, msg.tokens)
    return msg


def architecture_from_proto(msg: common_pb2.Architecture) -> arch.Architecture:
    if not msg.layers:
        raise PpmlError(ErrorCode.INVALID_MODEL, "architecture has no layers")
    input_shape = tuple(int(d) for d in msg.input_shape)
    output_shape = tuple(int(d) for d in msg.output_shape)
    if not input_shape or any(d <= 0 for d in input_shape + output_shape) or not output_shape:
        raise PpmlError(ErrorCode.INVALID_MODEL, "input_shape/output_shape must be positive")
    layers = tuple(layer_from_proto(layer, i) for i, layer in enumerate(msg.layers))
    inputs = tuple(tuple(int(s) for s in entry.sources) for entry in msg.inputs)
    tokens = _fields_from_message(arch.TokenInput, msg.tokens) if msg.HasField("tokens") else None
    architecture = arch.Architecture(
        layers, input_shape, output_shape, inputs=inputs, tokens=tokens
    )
    try:
        arch.check_tokens(architecture)
        arch.check_graph(architecture)
    except ValueError as exc:
        raise PpmlError(ErrorCode.INVALID_MODEL, f"architecture: {exc}") from None
    return architecture


# ---------------------------------------------------------------- registry


def model_meta_to_proto(meta: arch.ModelMeta) -> registry_pb2.ModelInfo:
    return registry_pb2.ModelInfo(
        model_id=meta.model_id,
        name=meta.name,
        owner=meta.owner,
        architecture=architecture_to_proto(meta.architecture),
        created_unix_ms=meta.created_unix_ms,
        parameter_count=meta.parameter_count,
        allowed=list(meta.allowed),
        trained_on=[data_source_to_proto(s) for s in meta.trained_on],
    )


def model_meta_from_proto(msg: registry_pb2.ModelInfo) -> arch.ModelMeta:
    return arch.ModelMeta(
        model_id=msg.model_id,
        name=msg.name,
        owner=msg.owner,
        architecture=architecture_from_proto(msg.architecture),
        created_unix_ms=msg.created_unix_ms,
        allowed=tuple(msg.allowed),
        trained_on=tuple(data_source_from_proto(s) for s in msg.trained_on),
    )


def data_source_to_proto(source: DataSource) -> common_pb2.DataSource:
    return common_pb2.DataSource(
        dataset_id=source.dataset_id, owner=source.owner, release=list(source.release)
    )


def data_source_from_proto(msg: common_pb2.DataSource) -> DataSource:
    return DataSource(msg.dataset_id, msg.owner, tuple(msg.release))


def named_shares_to_proto(shares: dict[str, Ring]) -> list[common_pb2.NamedShare]:
    return [common_pb2.NamedShare(name=k, share=share_to_proto(v)) for k, v in shares.items()]


def named_shares_from_proto(
    items: list[common_pb2.NamedShare], expected: dict[str, tuple[int, ...]]
) -> dict[str, Ring]:
    """Decode parameter shares and check they match the architecture exactly."""
    shares: dict[str, Ring] = {}
    for item in items:
        if item.name in shares:
            raise PpmlError(ErrorCode.INVALID_MODEL, f"parameter {quote(item.name)} sent twice")
        if item.name not in expected:
            raise PpmlError(
                ErrorCode.INVALID_MODEL, f"parameter {quote(item.name)} is not in the architecture"
            )
        value = share_from_proto(item.share, what=f"parameter {quote(item.name)}")
        if value.shape != expected[item.name]:
            raise PpmlError(
                ErrorCode.INVALID_SHARE,
                f"parameter {quote(item.name)} has shape {list(value.shape)}, "
                f"architecture says {list(expected[item.name])}",
            )
        shares[item.name] = value
    missing = sorted(set(expected) - set(shares))
    if missing:
        raise PpmlError(ErrorCode.INVALID_MODEL, f"missing parameter shares: {missing}")
    return shares


def model_meta_to_bytes(meta: arch.ModelMeta) -> bytes:
    """Public metadata as serialised ModelInfo (how servers store it on disk)."""
    return bytes(model_meta_to_proto(meta).SerializeToString())


def model_meta_from_bytes(data: bytes) -> arch.ModelMeta:
    return model_meta_from_proto(registry_pb2.ModelInfo.FromString(data))


# ---------------------------------------------------------------- control plane


def _timeout_ms(seconds: float) -> int:
    """``Announce.timeout_ms``: 1 ms to the uint32 maximum (49.7 days)."""
    return min(max(1, int(seconds * 1000)), 2**32 - 1)


def party_message_to_proto(msg: cmd.PartyMessage) -> coordinator_pb2.PartyMessage:
    if isinstance(msg, cmd.Hello):
        return coordinator_pb2.PartyMessage(
            hello=coordinator_pb2.Hello(rank=msg.rank, role=msg.role, incarnation=msg.incarnation)
        )
    if isinstance(msg, cmd.DealerStats):
        return coordinator_pb2.PartyMessage(
            dealer_stats=coordinator_pb2.DealerStats(requests=msg.requests, sessions=msg.sessions)
        )
    if isinstance(msg, cmd.CancelJob):
        return coordinator_pb2.PartyMessage(
            cancel_job=coordinator_pb2.CancelJob(job_id=msg.job_id, reason=msg.reason)
        )
    if isinstance(msg, cmd.Staged):
        return coordinator_pb2.PartyMessage(
            staged=coordinator_pb2.Staged(kind=msg.kind, record_id=msg.record_id, upload=msg.upload)
        )
    return coordinator_pb2.PartyMessage(
        announce=coordinator_pb2.Announce(
            kind=msg.kind,
            id=msg.id,
            group=msg.group,
            size=msg.size,
            timeout_ms=_timeout_ms(msg.timeout_s),
        )
    )


def party_message_from_proto(msg: coordinator_pb2.PartyMessage) -> cmd.PartyMessage:
    kind = msg.WhichOneof("kind")
    if kind == "hello":
        return cmd.Hello(msg.hello.rank, msg.hello.role, msg.hello.incarnation)
    if kind == "announce":
        a = msg.announce
        return cmd.Announce(a.kind, a.id, a.group, a.size, a.timeout_ms / 1000.0)
    if kind == "dealer_stats":
        d = msg.dealer_stats
        return cmd.DealerStats(dict(d.requests), d.sessions)
    if kind == "cancel_job":
        return cmd.CancelJob(msg.cancel_job.job_id, msg.cancel_job.reason)
    if kind == "staged":
        return cmd.Staged(msg.staged.kind, msg.staged.record_id, msg.staged.upload)
    raise PpmlError(ErrorCode.INVALID_ARGUMENT, "empty party message")


def leader_command_to_proto(command: cmd.LeaderCommand) -> coordinator_pb2.LeaderMessage:
    if isinstance(command, cmd.JoinEpoch):
        return coordinator_pb2.LeaderMessage(
            join=coordinator_pb2.JoinEpoch(epoch=command.epoch, tag=command.tag)
        )
    if isinstance(command, cmd.DropRequests):
        return coordinator_pb2.LeaderMessage(
            drop=coordinator_pb2.DropRequests(
                request_ids=list(command.request_ids), reason=command.reason
            )
        )
    if isinstance(command, cmd.UploadDecision):
        return coordinator_pb2.LeaderMessage(
            upload=coordinator_pb2.UploadDecision(
                kind=command.kind,
                record_id=command.record_id,
                upload=command.upload,
                commit=command.commit,
                reason=command.reason,
            )
        )
    run = coordinator_pb2.RunJob(seq=command.seq, epoch=command.epoch)
    _fields_to_message(command.job, _oneof(run, command.kind))
    return coordinator_pb2.LeaderMessage(run=run)


def leader_command_from_proto(
    msg: coordinator_pb2.LeaderMessage, job_types: Mapping[str, type]
) -> cmd.LeaderCommand:
    """``job_types``: each job kind's name (its ``RunJob`` oneof field) and job type."""
    kind = msg.WhichOneof("kind")
    if kind == "join":
        return cmd.JoinEpoch(msg.join.epoch, msg.join.tag)
    if kind == "drop":
        return cmd.DropRequests(tuple(msg.drop.request_ids), msg.drop.reason)
    if kind == "upload":
        u = msg.upload
        return cmd.UploadDecision(u.kind, u.record_id, u.upload, u.commit, u.reason)
    if kind == "run":
        run = msg.run
        which = run.WhichOneof("job") or ""
        if which not in job_types:
            raise PpmlError(ErrorCode.INVALID_ARGUMENT, f"unknown job kind {which!r}")
        job: object = _fields_from_message(job_types[which], getattr(run, which))
        return cmd.RunJob(run.seq, run.epoch, which, job)
    raise PpmlError(ErrorCode.INVALID_ARGUMENT, "empty leader message")


def _oneof(msg: Message, field: str) -> Message:
    """The sub-message ``field`` of ``msg``, marked present even when empty."""
    sub = getattr(msg, field)
    sub.SetInParent()
    return sub


def _fields_to_message(obj: object, sub: Message) -> None:
    """Copy a dataclass's fields into the message fields of the same names."""
    for item in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, item.name)
        if isinstance(value, tuple):
            getattr(sub, item.name).extend(value)
        else:
            setattr(sub, item.name, value)


def _fields_from_message(cls: type[T], sub: Message) -> T:
    """A dataclass from the message fields of the same names (repeated fields as tuples)."""
    values: dict[str, object] = {}
    for item in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = getattr(sub, item.name)
        values[item.name] = tuple(value) if hasattr(value, "extend") else value
    return cls(**values)


# ---------------------------------------------------------------- status


def _latency_to_proto(latency: st.Latency) -> status_pb2.LatencySummary:
    return status_pb2.LatencySummary(**dataclasses.asdict(latency))


def _latency_from_proto(msg: status_pb2.LatencySummary) -> st.Latency:
    return st.Latency(msg.count, msg.p50_ms, msg.p95_ms, msg.p99_ms)


def _he_model_to_proto(m: st.HeModelServing) -> status_pb2.HeModelStats:
    return status_pb2.HeModelStats(
        model_id=m.model_id,
        requests=m.requests,
        errors=m.errors,
        images=m.images,
        latency=_latency_to_proto(m.latency),
        ciphertext_bytes_in=m.bytes_in,
        ciphertext_bytes_out=m.bytes_out,
    )


def _he_model_from_proto(msg: status_pb2.HeModelStats) -> st.HeModelServing:
    return st.HeModelServing(
        model_id=msg.model_id,
        requests=msg.requests,
        errors=msg.errors,
        images=msg.images,
        latency=_latency_from_proto(msg.latency),
        bytes_in=msg.ciphertext_bytes_in,
        bytes_out=msg.ciphertext_bytes_out,
    )


def status_to_proto(report: st.StatusReport) -> status_pb2.ServerStatus:
    return status_pb2.ServerStatus(
        rank=report.rank,
        world_size=report.world_size,
        version=report.version,
        uptime_s=report.uptime_s,
        tls=report.tls,
        serving=report.serving,
        mpc_epoch=report.mpc_epoch,
        last_error=report.last_error,
        queue_depth=report.queue_depth,
        models_stored=report.models_stored,
        heartbeats=report.heartbeats,
        requests_total=report.requests_total,
        models=[
            status_pb2.ModelServingStats(
                model_id=m.model_id,
                requests=m.requests,
                batches=m.batches,
                latency=_latency_to_proto(m.latency),
                errors=m.errors,
            )
            for m in report.models
        ],
        batch_sizes=report.batch_sizes,
        mpc_cost=[
            status_pb2.JobCost(
                kind=c.kind, jobs=c.jobs, rounds=c.rounds, bytes=c.bytes, seconds=c.seconds
            )
            for c in report.mpc_cost
        ],
        errors=report.errors,
        name=report.name,
        grpc_address=report.grpc_address,
        links_up=report.links_up,
        dealer_connected=report.dealer_connected,
        dealer_requests=report.dealer_requests,
        dealer_sessions=report.dealer_sessions,
        running_job=report.running_job,
        datasets_stored=report.datasets_stored,
        training_jobs=report.training_jobs,
        fast_pool=status_pb2.FastPoolStats(**dataclasses.asdict(report.fast_pool)),
        he_models=[_he_model_to_proto(m) for m in report.he_models],
        he_contexts=report.he_contexts,
    )


def status_from_proto(msg: status_pb2.ServerStatus) -> st.StatusReport:
    return st.StatusReport(
        rank=msg.rank,
        world_size=msg.world_size,
        version=msg.version,
        uptime_s=msg.uptime_s,
        tls=msg.tls,
        serving=msg.serving,
        mpc_epoch=msg.mpc_epoch,
        last_error=msg.last_error,
        queue_depth=msg.queue_depth,
        models_stored=msg.models_stored,
        heartbeats=msg.heartbeats,
        requests_total=msg.requests_total,
        models=[
            st.ModelServing(
                m.model_id,
                m.requests,
                m.batches,
                _latency_from_proto(m.latency),
                dict(m.errors),
            )
            for m in msg.models
        ],
        batch_sizes=dict(msg.batch_sizes),
        mpc_cost=[st.JobCost(c.kind, c.jobs, c.rounds, c.bytes, c.seconds) for c in msg.mpc_cost],
        errors=dict(msg.errors),
        name=msg.name,
        grpc_address=msg.grpc_address,
        links_up=list(msg.links_up),
        dealer_connected=msg.dealer_connected,
        dealer_requests=dict(msg.dealer_requests),
        dealer_sessions=msg.dealer_sessions,
        running_job=msg.running_job,
        datasets_stored=msg.datasets_stored,
        training_jobs=dict(msg.training_jobs),
        fast_pool=st.FastPool(
            **{f.name: getattr(msg.fast_pool, f.name) for f in dataclasses.fields(st.FastPool)}
        ),
        he_models=[_he_model_from_proto(m) for m in msg.he_models],
        he_contexts=dict(msg.he_contexts),
    )


# ---------------------------------------------------------------- datasets


def dataset_meta_to_proto(meta: DatasetMeta) -> datasets_pb2.DatasetInfo:
    return datasets_pb2.DatasetInfo(
        dataset_id=meta.dataset_id,
        name=meta.name,
        owner=meta.owner,
        rows=meta.rows,
        feature_shape=list(meta.feature_shape),
        num_classes=meta.num_classes,
        allowed=list(meta.allowed),
        scaling=meta.scaling,
        created_unix_ms=meta.created_unix_ms,
        release=list(meta.release),
    )


def dataset_meta_from_proto(msg: datasets_pb2.DatasetInfo) -> DatasetMeta:
    return DatasetMeta(
        dataset_id=msg.dataset_id,
        name=msg.name,
        owner=msg.owner,
        rows=msg.rows,
        feature_shape=tuple(int(d) for d in msg.feature_shape),
        num_classes=msg.num_classes,
        allowed=tuple(msg.allowed),
        scaling=msg.scaling,
        created_unix_ms=msg.created_unix_ms,
        release=tuple(msg.release),
    )


def dataset_header_to_proto(meta: DatasetMeta) -> datasets_pb2.DatasetHeader:
    return datasets_pb2.DatasetHeader(
        dataset_id=meta.dataset_id,
        name=meta.name,
        rows=meta.rows,
        feature_shape=list(meta.feature_shape),
        num_classes=meta.num_classes,
        allowed=list(meta.allowed),
        scaling=meta.scaling,
        release=list(meta.release),
    )


def dataset_header_from_proto(msg: datasets_pb2.DatasetHeader, owner: str) -> DatasetMeta:
    """The upload's header as metadata (validated by the dataset registry)."""
    return DatasetMeta(
        dataset_id=msg.dataset_id,
        name=msg.name,
        owner=owner,
        rows=msg.rows,
        feature_shape=tuple(int(d) for d in msg.feature_shape),
        num_classes=msg.num_classes,
        allowed=tuple(msg.allowed),
        scaling=msg.scaling,
        release=tuple(msg.release),
    )


def dataset_meta_to_bytes(meta: DatasetMeta) -> bytes:
    return dataset_meta_to_proto(meta).SerializeToString(deterministic=True)


def dataset_meta_from_bytes(data: bytes) -> DatasetMeta:
    return dataset_meta_from_proto(datasets_pb2.DatasetInfo.FromString(data))


# ---------------------------------------------------------------- training jobs

_STATES = {
    jobs.JobState.QUEUED: training_pb2.JOB_STATE_QUEUED,
    jobs.JobState.RUNNING: training_pb2.JOB_STATE_RUNNING,
    jobs.JobState.SUCCEEDED: training_pb2.JOB_STATE_SUCCEEDED,
    jobs.JobState.FAILED: training_pb2.JOB_STATE_FAILED,
    jobs.JobState.CANCELLED: training_pb2.JOB_STATE_CANCELLED,
}
_STATES_BACK = {v: k for k, v in _STATES.items()}


def job_state_from_proto(value: int) -> jobs.JobState:
    if value not in _STATES_BACK:
        raise PpmlError(ErrorCode.INVALID_ARGUMENT, f"unknown job state {value}")
    return _STATES_BACK[value]  # type: ignore[index]


def training_spec_to_proto(spec: jobs.TrainingSpec) -> training_pb2.TrainingSpec:
    return training_pb2.TrainingSpec(
        dataset_ids=list(spec.dataset_ids),
        validation_id=spec.validation_id,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        lr=spec.lr,
        momentum=spec.momentum,
        weight_decay=spec.weight_decay,
        loss=spec.loss,
        optimizer=spec.optimizer,
        reveal_metrics=spec.reveal_metrics,
        seed=spec.seed,
        standardize=spec.standardize,
        dp_clip_norm=spec.dp_clip_norm,
        dp_noise_multiplier=spec.dp_noise_multiplier,
        dp_target_epsilon=spec.dp_target_epsilon,
        dp_delta=spec.dp_delta,
    )


def training_spec_from_proto(msg: training_pb2.TrainingSpec) -> jobs.TrainingSpec:
    return jobs.TrainingSpec(
        dataset_ids=tuple(msg.dataset_ids),
        validation_id=msg.validation_id,
        epochs=msg.epochs,
        batch_size=msg.batch_size,
        lr=msg.lr,
        momentum=msg.momentum,
        weight_decay=msg.weight_decay,
        loss=msg.loss,
        optimizer=msg.optimizer,
        reveal_metrics=msg.reveal_metrics,
        seed=msg.seed,
        standardize=msg.standardize,
        dp_clip_norm=msg.dp_clip_norm,
        dp_noise_multiplier=(
            msg.dp_noise_multiplier if msg.HasField("dp_noise_multiplier") else None
        ),
        dp_target_epsilon=msg.dp_target_epsilon,
        dp_delta=msg.dp_delta,
    )


def epoch_metrics_to_proto(m: jobs.EpochMetrics) -> training_pb2.EpochMetrics:
    return training_pb2.EpochMetrics(
        epoch=m.epoch,
        mean_loss=share_to_proto(m.mean_loss),
        correct=share_to_proto(m.correct),
        validation_rows=m.validation_rows,
    )


def epoch_metrics_from_proto(msg: training_pb2.EpochMetrics) -> jobs.EpochMetrics:
    return jobs.EpochMetrics(
        epoch=msg.epoch,
        mean_loss=share_from_proto(msg.mean_loss, what="mean_loss"),
        correct=share_from_proto(msg.correct, what="correct"),
        validation_rows=msg.validation_rows,
    )


def job_info_to_proto(info: jobs.JobInfo) -> training_pb2.JobInfo:
    return training_pb2.JobInfo(
        job_id=info.job_id,
        model_id=info.model_id,
        name=info.name,
        owner=info.owner,
        architecture=architecture_to_proto(info.architecture),
        spec=training_spec_to_proto(info.spec),
        state=_STATES[info.state],
        reason=info.reason,
        created_unix_ms=info.created_unix_ms,
        started_unix_ms=info.started_unix_ms,
        finished_unix_ms=info.finished_unix_ms,
        rows=info.rows,
        batches_per_epoch=info.batches_per_epoch,
        steps_total=info.steps_total,
        steps_done=info.steps_done,
        samples_per_s=info.samples_per_s,
        metrics=[epoch_metrics_to_proto(m) for m in info.metrics],
        sources=[data_source_to_proto(s) for s in info.sources],
        dp_noise_multiplier=info.dp_noise_multiplier,
        dp_epsilon=info.dp_epsilon,
    )


def job_info_from_proto(msg: training_pb2.JobInfo) -> jobs.JobInfo:
    return jobs.JobInfo(
        job_id=msg.job_id,
        model_id=msg.model_id,
        name=msg.name,
        owner=msg.owner,
        architecture=architecture_from_proto(msg.architecture),
        spec=training_spec_from_proto(msg.spec),
        state=job_state_from_proto(msg.state),
        reason=msg.reason,
        created_unix_ms=msg.created_unix_ms,
        started_unix_ms=msg.started_unix_ms,
        finished_unix_ms=msg.finished_unix_ms,
        rows=msg.rows,
        batches_per_epoch=msg.batches_per_epoch,
        steps_total=msg.steps_total,
        steps_done=msg.steps_done,
        samples_per_s=msg.samples_per_s,
        metrics=tuple(epoch_metrics_from_proto(m) for m in msg.metrics),
        sources=tuple(data_source_from_proto(s) for s in msg.sources),
        dp_noise_multiplier=msg.dp_noise_multiplier,
        dp_epsilon=msg.dp_epsilon,
    )


def job_info_to_bytes(info: jobs.JobInfo) -> bytes:
    return job_info_to_proto(info).SerializeToString(deterministic=True)


def job_info_from_bytes(data: bytes) -> jobs.JobInfo:
    return job_info_from_proto(training_pb2.JobInfo.FromString(data))


def job_event_to_proto(event: jobs.JobEvent) -> training_pb2.JobEvent:
    msg = training_pb2.JobEvent(
        index=event.index,
        job_id=event.job_id,
        state=_STATES[event.state],
        epoch=event.epoch,
        batch=event.batch,
        steps_done=event.steps_done,
        steps_total=event.steps_total,
        samples_done=event.samples_done,
        samples_per_s=event.samples_per_s,
        reason=event.reason,
        dp_epsilon=event.dp_epsilon,
    )
    if event.metrics is not None:
        msg.metrics.CopyFrom(epoch_metrics_to_proto(event.metrics))
    return msg


def job_event_from_proto(msg: training_pb2.JobEvent) -> jobs.JobEvent:
    return jobs.JobEvent(
        index=msg.index,
        job_id=msg.job_id,
        state=job_state_from_proto(msg.state),
        epoch=msg.epoch,
        batch=msg.batch,
        steps_done=msg.steps_done,
        steps_total=msg.steps_total,
        samples_done=msg.samples_done,
        samples_per_s=msg.samples_per_s,
        metrics=epoch_metrics_from_proto(msg.metrics) if msg.HasField("metrics") else None,
        reason=msg.reason,
        dp_epsilon=msg.dp_epsilon,
    )
