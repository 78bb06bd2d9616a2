"""Round trips of the training-side serde: data sets, training jobs, job control messages."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ppml.proto.domain import architecture as arch
from ppml.proto.domain import commands as cmd
from ppml.proto.domain.datasets import ANYONE, DatasetMeta
from ppml.proto.domain.jobs import EpochMetrics, JobEvent, JobInfo, JobState, TrainingSpec
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.shares import random_ring
from ppml.proto.wire import serde
from ppml.servers import kinds
from ppml.servers.kinds.end import EndJob
from ppml.servers.kinds.evaluate import EvaluateJob
from ppml.servers.kinds.train import TrainStep
from ppml.v1 import coordinator_pb2, datasets_pb2, training_pb2

INT64_MIN = np.iinfo(np.int64).min
INT64_MAX = np.iinfo(np.int64).max


def _architecture() -> arch.Architecture:
    return arch.Architecture(
        (arch.Linear(4, 8), arch.ReLU(), arch.Linear(8, 3, bias=False)), (4,), (3,)
    )


def _spec(**changes: object) -> TrainingSpec:
    values: dict[str, object] = {
        "dataset_ids": ("hospital-a.train", "hospital-b.train"),
        "epochs": 7,
        "batch_size": 32,
        "lr": 0.125,
        "validation_id": "hospital-a.val",
        "momentum": 0.875,
        "weight_decay": 0.0625,
        "loss": "mse",
        "optimizer": "sgd",
        "reveal_metrics": True,
        "seed": 12345,
        "standardize": True,
    }
    values.update(changes)
    return TrainingSpec(**values)


def _metrics(epoch: int) -> EpochMetrics:
    loss = random_ring((1,))
    loss[0] = INT64_MIN if epoch % 2 else INT64_MAX
    return EpochMetrics(epoch, loss, random_ring((1,)), 30 + epoch)


def _assert_metrics_equal(a: EpochMetrics | None, b: EpochMetrics | None) -> None:
    assert a is not None and b is not None
    assert (a.epoch, a.validation_rows) == (b.epoch, b.validation_rows)
    for x, y in ((a.mean_loss, b.mean_loss), (a.correct, b.correct)):
        assert x.dtype == np.int64
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------- datasets


def _dataset(**changes: object) -> DatasetMeta:
    values: dict[str, object] = {
        "dataset_id": "mnist-part.1",
        "name": "MNIST, hospital A's part",
        "owner": "hospital-a",
        "rows": 6000,
        "feature_shape": (1, 28, 28),
        "num_classes": 10,
        "allowed": ("hospital-b", "lab-c"),
        "scaling": "pixels / 255",
        "created_unix_ms": 1_700_000_000_123,
    }
    values.update(changes)
    return DatasetMeta(**values)


@pytest.mark.parametrize(
    "meta",
    [
        _dataset(),
        _dataset(feature_shape=(4,), num_classes=2, allowed=(), scaling="", created_unix_ms=0),
        _dataset(allowed=(ANYONE,)),
    ],
    ids=["image", "tabular", "anyone"],
)
def test_dataset_info_round_trip(meta: DatasetMeta) -> None:
    wire = datasets_pb2.DatasetInfo.FromString(
        serde.dataset_meta_to_proto(meta).SerializeToString()
    )
    back = serde.dataset_meta_from_proto(wire)
    assert back == meta
    assert isinstance(back.feature_shape, tuple) and isinstance(back.allowed, tuple)
    assert back.features == meta.features


def test_dataset_meta_round_trip_through_bytes() -> None:
    meta = _dataset()
    data = serde.dataset_meta_to_bytes(meta)
    assert isinstance(data, bytes)
    assert serde.dataset_meta_from_bytes(data) == meta
    assert serde.dataset_meta_to_bytes(meta) == data  # deterministic


def test_dataset_header_round_trip_takes_the_owner_from_the_server() -> None:
    meta = _dataset(owner="someone-else", created_unix_ms=0)
    wire = datasets_pb2.DatasetHeader.FromString(
        serde.dataset_header_to_proto(meta).SerializeToString()
    )
    assert not hasattr(wire, "owner")  # the uploader cannot claim an owner
    back = serde.dataset_header_from_proto(wire, owner="hospital-a")
    assert back.owner == "hospital-a"
    assert back == _dataset(owner="hospital-a", created_unix_ms=0)


def test_dataset_meta_access_rules() -> None:
    meta = _dataset()
    assert meta.features == 28 * 28
    assert meta.may_use("hospital-a") and meta.may_use("lab-c")
    assert not meta.may_use("mallory")
    assert _dataset(allowed=(ANYONE,)).may_use("mallory")


# ---------------------------------------------------------------- training spec


@pytest.mark.parametrize(
    "spec",
    [
        _spec(),
        _spec(
            dataset_ids=("only",),
            validation_id="",
            momentum=0.0,
            weight_decay=0.0,
            loss="binary_cross_entropy",
            reveal_metrics=False,
            seed=0,
            standardize=False,
        ),
        _spec(loss="cross_entropy", epochs=1, batch_size=1, lr=100.0),
        _spec(dp_clip_norm=1.5, dp_noise_multiplier=0.0, dp_delta=1e-6),  # z=0 is not "unset"
        _spec(dp_clip_norm=0.25, dp_target_epsilon=3.0),
    ],
    ids=["all-fields", "defaults", "cross-entropy", "dp-multiplier", "dp-target"],
)
def test_training_spec_round_trip(spec: TrainingSpec) -> None:
    wire = training_pb2.TrainingSpec.FromString(
        serde.training_spec_to_proto(spec).SerializeToString()
    )
    back = serde.training_spec_from_proto(wire)
    assert back == spec
    assert isinstance(back.dataset_ids, tuple)


def test_training_spec_step_counts() -> None:
    spec = _spec(epochs=3, batch_size=32)
    assert spec.batches_per_epoch(100) == 4
    assert spec.steps_total(100) == 12
    assert spec.batches_per_epoch(64) == 2
    assert spec.batches_per_epoch(1) == 1


# ---------------------------------------------------------------- job info


def _job(**changes: object) -> JobInfo:
    values: dict[str, object] = {
        "job_id": "job-1",
        "model_id": "trained-1",
        "name": "joint model",
        "owner": "hospital-a",
        "architecture": _architecture(),
        "spec": _spec(),
        "state": JobState.RUNNING,
        "reason": "",
        "created_unix_ms": 1_700_000_000_000,
        "started_unix_ms": 1_700_000_000_500,
        "finished_unix_ms": 0,
        "rows": 100,
        "batches_per_epoch": 4,
        "steps_total": 28,
        "steps_done": 9,
        "samples_per_s": 123.5,
        "metrics": (_metrics(1), _metrics(2)),
    }
    values.update(changes)
    return JobInfo(**values)


def _assert_jobs_equal(a: JobInfo, b: JobInfo) -> None:
    assert a.public() == b.public()  # every field but the metric arrays
    assert len(a.metrics) == len(b.metrics)
    for x, y in zip(a.metrics, b.metrics, strict=True):
        _assert_metrics_equal(x, y)


def test_job_info_round_trip_with_metric_shares() -> None:
    info = _job()
    wire = training_pb2.JobInfo.FromString(serde.job_info_to_proto(info).SerializeToString())
    assert len(wire.metrics) == 2
    back = serde.job_info_from_proto(wire)
    _assert_jobs_equal(back, info)
    assert back.architecture == info.architecture
    assert back.spec == info.spec
    assert back.state is JobState.RUNNING


def test_job_info_round_trip_through_bytes() -> None:
    info = _job(state=JobState.FAILED, reason="server-2 restarted", finished_unix_ms=5)
    data = serde.job_info_to_bytes(info)
    back = serde.job_info_from_bytes(data)
    _assert_jobs_equal(back, info)
    assert back.reason == "server-2 restarted"


@pytest.mark.parametrize("epsilon", [0.0, 2.75, float("inf")])
def test_job_info_and_event_carry_dp_epsilon(epsilon: float) -> None:
    info = _job(
        spec=_spec(dp_clip_norm=1.0, dp_target_epsilon=3.0),
        dp_noise_multiplier=1.125,
        dp_epsilon=epsilon,
    )
    back = serde.job_info_from_bytes(serde.job_info_to_bytes(info))
    assert (back.dp_noise_multiplier, back.dp_epsilon) == (1.125, epsilon)
    assert back.spec.dp_noise_multiplier is None and back.spec.dp
    event = JobEvent(5, "job-1", JobState.RUNNING, steps_done=5, dp_epsilon=epsilon)
    assert serde.job_event_from_proto(serde.job_event_to_proto(event)) == event


def test_job_info_without_metrics() -> None:
    info = _job(metrics=(), state=JobState.QUEUED, started_unix_ms=0, steps_done=0)
    back = serde.job_info_from_proto(serde.job_info_to_proto(info))
    assert back == info


def test_scalar_metric_shares_survive_the_wire() -> None:
    """The trainer produces 0-d shares; the client reads them with reshape(-1)[0]."""
    metrics = EpochMetrics(3, np.array(-5, dtype=np.int64), np.array(7, dtype=np.int64), 10)
    back = serde.epoch_metrics_from_proto(serde.epoch_metrics_to_proto(metrics))
    assert back.mean_loss.reshape(-1).tolist() == [-5]
    assert back.correct.reshape(-1).tolist() == [7]
    assert (back.epoch, back.validation_rows) == (3, 10)


def test_public_job_info_hides_metrics() -> None:
    info = _job()
    public = info.public()
    assert public.metrics == ()
    assert public.steps_done == info.steps_done and public.job_id == info.job_id


def test_samples_done_counts_a_short_last_batch() -> None:
    info = _job(rows=100, batches_per_epoch=4, steps_done=0, spec=_spec(batch_size=32))
    assert info.samples_done == 0
    assert info.evolve(steps_done=3).samples_done == 96
    assert info.evolve(steps_done=4).samples_done == 100  # 32 + 32 + 32 + 4
    assert info.evolve(steps_done=5).samples_done == 132
    assert info.evolve(batches_per_epoch=0).samples_done == 0


# ---------------------------------------------------------------- job events


def test_job_event_round_trip_with_metrics() -> None:
    event = JobEvent(
        index=12,
        job_id="job-1",
        state=JobState.RUNNING,
        epoch=2,
        batch=4,
        steps_done=8,
        steps_total=28,
        samples_done=200,
        samples_per_s=55.25,
        metrics=_metrics(2),
        reason="",
    )
    wire = training_pb2.JobEvent.FromString(serde.job_event_to_proto(event).SerializeToString())
    assert wire.HasField("metrics")
    back = serde.job_event_from_proto(wire)
    assert back.public() == event.public()
    _assert_metrics_equal(back.metrics, event.metrics)


def test_job_event_round_trip_without_metrics() -> None:
    event = JobEvent(3, "job-1", JobState.CANCELLED, reason="cancelled by hospital-a")
    wire = training_pb2.JobEvent.FromString(serde.job_event_to_proto(event).SerializeToString())
    assert not wire.HasField("metrics")
    back = serde.job_event_from_proto(wire)
    assert back == event
    assert back.metrics is None


def test_public_job_event_hides_metrics() -> None:
    event = JobEvent(1, "j", JobState.RUNNING, epoch=1, metrics=_metrics(1))
    assert event.public().metrics is None
    assert event.public().epoch == 1


# ---------------------------------------------------------------- job states


@pytest.mark.parametrize("state", list(JobState))
def test_every_job_state_round_trips(state: JobState) -> None:
    info = serde.job_info_from_proto(serde.job_info_to_proto(_job(state=state)))
    assert info.state is state
    event = serde.job_event_from_proto(serde.job_event_to_proto(JobEvent(0, "j", state)))
    assert event.state is state


def test_job_states_map_to_distinct_wire_values() -> None:
    values = {serde.job_info_to_proto(_job(state=s)).state for s in JobState}
    assert len(values) == len(JobState)
    assert training_pb2.JOB_STATE_UNSPECIFIED not in values


def test_terminal_states() -> None:
    assert {s for s in JobState if s.terminal} == {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
    }


@pytest.mark.parametrize("value", [training_pb2.JOB_STATE_UNSPECIFIED, 99, -1])
def test_unknown_job_state_is_rejected(value: int) -> None:
    with pytest.raises(PpmlError) as excinfo:
        serde.job_state_from_proto(value)
    assert excinfo.value.code == ErrorCode.INVALID_ARGUMENT
    assert str(value) in str(excinfo.value)


def test_job_info_with_unknown_state_is_rejected() -> None:
    msg = serde.job_info_to_proto(_job())
    msg.state = 42
    with pytest.raises(PpmlError):
        serde.job_info_from_proto(msg)


def test_job_event_with_unset_state_is_rejected() -> None:
    with pytest.raises(PpmlError):
        serde.job_event_from_proto(training_pb2.JobEvent(index=0, job_id="j"))


# ---------------------------------------------------------------- control plane

JOB_PARTY_MESSAGES: list[cmd.PartyMessage] = [
    cmd.Announce("train", "job-1", "", 120, 60.0),
    cmd.Announce("evaluate", "eval-7", "", 1, 0.5),
    cmd.CancelJob("job-1", "cancelled by hospital-a"),
    cmd.CancelJob("job-2", ""),
]


@pytest.mark.parametrize("message", JOB_PARTY_MESSAGES, ids=repr)
def test_job_party_message_round_trip(message: cmd.PartyMessage) -> None:
    proto = serde.party_message_to_proto(message)
    assert proto.WhichOneof("kind") in ("announce", "cancel_job")
    wire = coordinator_pb2.PartyMessage.FromString(proto.SerializeToString())
    back = serde.party_message_from_proto(wire)
    assert back == message
    assert type(back) is type(message)


JOB_RUNS: list[cmd.RunJob] = [
    cmd.RunJob(40, 3, "train", TrainStep("job-1", 0)),
    cmd.RunJob(41, 3, "train", TrainStep("job-1", 119)),
    cmd.RunJob(42, 3, "evaluate", EvaluateJob("eval-7")),
    cmd.RunJob(43, 3, "end_job", EndJob("job-1", "cancelled", "cancelled by hospital-a")),
    cmd.RunJob(44, 4, "end_job", EndJob("job-2", "failed", "server-1 left")),
]


@pytest.mark.parametrize("command", JOB_RUNS, ids=repr)
def test_job_run_round_trip(command: cmd.RunJob) -> None:
    proto = serde.leader_command_to_proto(command)
    assert proto.run.WhichOneof("job") == command.kind
    wire = coordinator_pb2.LeaderMessage.FromString(proto.SerializeToString())
    back = serde.leader_command_from_proto(wire, kinds.job_types())
    assert back == command
    assert isinstance(back, cmd.RunJob) and type(back.job) is type(command.job)


def test_every_registered_kind_has_its_run_job_field() -> None:
    """A kind's name is its RunJob oneof field; its job type's fields mirror the message."""
    oneof = coordinator_pb2.RunJob.DESCRIPTOR.oneofs_by_name["job"]
    fields = {field.name: field for field in oneof.fields}
    for name, job_type in kinds.job_types().items():
        assert name in fields, f"kind {name!r} has no RunJob field"
        message_fields = set(fields[name].message_type.fields_by_name)
        assert {f.name for f in dataclasses.fields(job_type)} == message_fields


def test_unknown_job_kind_is_rejected() -> None:
    proto = serde.leader_command_to_proto(cmd.RunJob(1, 1, "train", TrainStep("j", 0)))
    with pytest.raises(PpmlError):
        serde.leader_command_from_proto(proto, {"predict": kinds.job_types()["predict"]})
