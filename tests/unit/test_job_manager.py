"""Tests for ppml.servers.store.jobs.JobManager and ppml.servers.store.datasets.DatasetRegistry.

In-memory stores, a real model registry and a fake announcer that records what
would go to the leader.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

from ppml.proto.deploy.topology import LimitsConfig
from ppml.proto.domain import architecture as arch
from ppml.proto.domain import commands as cmd
from ppml.proto.domain.datasets import ANYONE, DatasetMeta
from ppml.proto.domain.jobs import EpochMetrics, JobEvent, JobInfo, JobState, TrainingSpec
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.shares import Ring, random_ring
from ppml.servers.mpc.training.trainer import StepOutcome
from ppml.servers.store.datasets import DATASET_CODEC, DatasetRegistry
from ppml.servers.store.jobs import ANNOUNCE_TIMEOUT_S, JOB_CODEC, JobManager
from ppml.servers.store.models import ModelRegistry
from ppml.servers.store.storage import MemoryModelStore, MemoryShareStore
from ppml.training.privacy import FixedSizeSampling, dpsgd

OWNER = "hospital-a"
OTHER = "hospital-b"


SMALL_BATCHES = LimitsConfig(min_batch_size=1)  # tiny data sets below


@dataclass
class Announcer:
    messages: list[cmd.PartyMessage] = field(default_factory=list)
    reachable: bool = True

    def __call__(self, message: cmd.PartyMessage) -> bool:
        self.messages.append(message)
        return self.reachable


@dataclass
class World:
    job_store: MemoryShareStore[JobInfo]
    datasets: DatasetRegistry
    models: ModelRegistry
    announcer: Announcer
    jobs: JobManager

    def restart(self, name: str = "server-1") -> JobManager:
        return JobManager(
            name, self.job_store, self.datasets, self.models, self.announcer, SMALL_BATCHES
        )


def _chunks(
    rows: int, feature_shape: tuple[int, ...], classes: int, per_chunk: int = 4
) -> list[tuple[Ring, Ring]]:
    out = []
    for start in range(0, rows, per_chunk):
        n = min(per_chunk, rows - start)
        out.append((random_ring((n, *feature_shape)), random_ring((n, classes))))
    return out


def _header(
    dataset_id: str,
    rows: int = 10,
    feature_shape: tuple[int, ...] = (4,),
    num_classes: int = 3,
    owner: str = OWNER,
    allowed: tuple[str, ...] = (),
) -> DatasetMeta:
    return DatasetMeta(dataset_id, "", owner, rows, feature_shape, num_classes, allowed)


def _upload(
    registry: DatasetRegistry,
    dataset_id: str,
    rows: int = 10,
    feature_shape: tuple[int, ...] = (4,),
    num_classes: int = 3,
    owner: str = OWNER,
    allowed: tuple[str, ...] = (),
) -> DatasetMeta:
    header = _header(dataset_id, rows, feature_shape, num_classes, owner, allowed)
    return registry.upload(header, _chunks(rows, feature_shape, num_classes))


def _architecture(inputs: int = 4, outputs: int = 3) -> arch.Architecture:
    return arch.Architecture(
        (arch.Linear(inputs, 5), arch.ReLU(), arch.Linear(5, outputs)), (inputs,), (outputs,)
    )


def _initial(architecture: arch.Architecture) -> dict[str, Ring]:
    return {k: random_ring(v) for k, v in architecture.parameter_shapes().items()}


def _spec(**changes: object) -> TrainingSpec:
    values: dict[str, object] = {
        "dataset_ids": ("a-train", "b-train"),
        "epochs": 2,
        "batch_size": 4,
        "lr": 0.1,
    }
    values.update(changes)
    return TrainingSpec(**values)


@pytest.fixture
def world() -> World:
    job_store: MemoryShareStore[JobInfo] = MemoryShareStore(JOB_CODEC)
    datasets = DatasetRegistry(MemoryShareStore(DATASET_CODEC))
    models = ModelRegistry(MemoryModelStore())
    announcer = Announcer()
    _upload(datasets, "a-train", rows=10)
    _upload(datasets, "b-train", rows=7, owner=OTHER, allowed=(OWNER,))
    _upload(datasets, "a-val", rows=5)
    jobs = JobManager("server-1", job_store, datasets, models, announcer, SMALL_BATCHES)
    return World(job_store, datasets, models, announcer, jobs)


def _start(
    world: World, job_id: str = "job-1", model_id: str = "model-1", **spec: object
) -> JobInfo:
    architecture = _architecture()
    return world.jobs.start(
        job_id, model_id, "", OWNER, architecture, _initial(architecture), _spec(**spec)
    )


def _code(excinfo: pytest.ExceptionInfo[PpmlError]) -> ErrorCode:
    return excinfo.value.code


def _events(world: World, job_id: str = "job-1", caller: str = OWNER) -> list[JobEvent]:
    return list(world.jobs.watch(job_id, caller, lambda: True))


def _metrics(epoch: int) -> EpochMetrics:
    return EpochMetrics(epoch, random_ring((1,)), random_ring((1,)), 5)


def _outcome(epoch: int, batch: int, metrics: EpochMetrics | None = None) -> StepOutcome:
    return StepOutcome(epoch, batch, 4, 12.5, metrics, False)


# ---------------------------------------------------------------- start: success


def test_start_persists_queued_and_announces(world: World) -> None:
    info = _start(world)
    assert info.state is JobState.QUEUED
    assert info.rows == 17  # 10 + 7
    assert info.batches_per_epoch == 5  # ceil(17 / 4)
    assert info.steps_total == 10  # 2 epochs
    assert info.name == "job-1"
    assert info.owner == OWNER
    assert info.created_unix_ms > 0
    stored = world.job_store.get_meta("job-1")
    assert stored == info
    shares = world.job_store.get_shares("job-1")
    assert set(shares) == set(_architecture().parameter_shapes())
    (announce,) = world.announcer.messages
    assert isinstance(announce, cmd.Announce)
    assert (announce.kind, announce.id, announce.size) == ("train", "job-1", 10)
    assert announce.timeout_s == ANNOUNCE_TIMEOUT_S
    assert len(announce.group) == 16  # a fingerprint of the job the leader compares across servers


@pytest.mark.parametrize(
    ("rows", "batch_size", "epochs", "steps"),
    [(10, 10, 3, 3), (10, 3, 2, 8), (10, 1, 1, 10), (10, 64, 4, 4)],
)
def test_announced_steps_are_epochs_times_batches(
    world: World, rows: int, batch_size: int, epochs: int, steps: int
) -> None:
    _upload(world.datasets, "d", rows=rows)
    _start(world, dataset_ids=("d",), batch_size=batch_size, epochs=epochs)
    announce = world.announcer.messages[-1]
    assert isinstance(announce, cmd.Announce)
    assert announce.size == steps
    assert world.jobs.get("job-1", OWNER).steps_total == steps


def test_start_with_a_validation_set(world: World) -> None:
    info = _start(world, validation_id="a-val", reveal_metrics=True)
    assert info.spec.validation_id == "a-val"
    assert info.rows == 17  # validation rows are not training rows


def test_start_stores_the_initial_shares(world: World) -> None:
    architecture = _architecture()
    initial = _initial(architecture)
    world.jobs.start("job-1", "model-1", "nice name", OWNER, architecture, initial, _spec())
    stored = world.job_store.get_shares("job-1")
    for name, value in initial.items():
        np.testing.assert_array_equal(stored[name], value)
    assert world.jobs.get("job-1", OWNER).name == "nice name"


def test_unreachable_leader_fails_the_job(world: World) -> None:
    world.announcer.reachable = False
    with pytest.raises(PpmlError) as excinfo:
        _start(world)
    assert _code(excinfo) == ErrorCode.NOT_READY
    info = world.job_store.get_meta("job-1")
    assert info.state is JobState.FAILED
    assert "leader" in info.reason
    assert _active(world.jobs) == 0


# ---------------------------------------------------------------- start: validation


def _assert_nothing_stored(world: World) -> None:
    assert world.job_store.list() == []
    assert world.announcer.messages == []


def test_unknown_dataset_is_not_found(world: World) -> None:
    with pytest.raises(PpmlError) as excinfo:
        _start(world, dataset_ids=("a-train", "missing"))
    assert _code(excinfo) == ErrorCode.DATASET_NOT_FOUND
    assert "missing" in str(excinfo.value)
    _assert_nothing_stored(world)


def test_unknown_validation_set_is_not_found(world: World) -> None:
    with pytest.raises(PpmlError) as excinfo:
        _start(world, validation_id="nope")
    assert _code(excinfo) == ErrorCode.DATASET_NOT_FOUND
    _assert_nothing_stored(world)


@pytest.mark.parametrize("feature_shape", [(5,), (2, 2)], ids=["count", "shape"])
def test_feature_mismatch_between_datasets_names_both(
    world: World, feature_shape: tuple[int, ...]
) -> None:
    _upload(world.datasets, "wide", feature_shape=feature_shape)
    with pytest.raises(PpmlError) as excinfo:
        _start(world, dataset_ids=("a-train", "wide"))
    assert _code(excinfo) == ErrorCode.INVALID_JOB
    message = str(excinfo.value)
    assert "'a-train'" in message and "'wide'" in message
    assert "[4]" in message and str(list(feature_shape)) in message
    _assert_nothing_stored(world)


def test_an_owner_with_fewer_classes_is_padded_to_the_models(world: World) -> None:
    # label skew: this owner has no row of the highest class
    _upload(world.datasets, "two-classes", num_classes=2)
    _start(world, dataset_ids=("a-train", "two-classes"))
    inputs = world.jobs.inputs("job-1")
    assert [y.shape[1] for y in inputs.labels] == [3, 3]
    assert not inputs.labels[1][:, 2].any()  # the added column is a share of 0 everywhere


def test_more_classes_than_the_model_is_rejected_naming_num_classes(world: World) -> None:
    _upload(world.datasets, "five-classes", num_classes=5)
    with pytest.raises(PpmlError) as excinfo:
        _start(world, dataset_ids=("a-train", "five-classes"))
    assert _code(excinfo) == ErrorCode.INVALID_JOB
    message = str(excinfo.value)
    assert "'five-classes'" in message and "num_classes=5" in message and "3 classes" in message
    _assert_nothing_stored(world)


def test_batches_below_the_clusters_minimum_are_rejected(world: World) -> None:
    jobs = JobManager(
        "server-1",
        world.job_store,
        world.datasets,
        world.models,
        world.announcer,
        LimitsConfig(min_batch_size=16),
    )
    with pytest.raises(PpmlError) as excinfo:
        jobs.start("j", "m", "", OWNER, _architecture(), _initial(_architecture()),
                   _spec(batch_size=8))  # fmt: skip
    assert _code(excinfo) == ErrorCode.INVALID_JOB and "at least 16" in str(excinfo.value)


def test_unfinished_jobs_per_identity_are_capped(world: World) -> None:
    jobs = JobManager(
        "server-1",
        world.job_store,
        world.datasets,
        world.models,
        world.announcer,
        LimitsConfig(min_batch_size=1, max_queued_jobs_per_identity=1),
    )
    jobs.start("j1", "m1", "", OWNER, _architecture(), _initial(_architecture()), _spec())
    with pytest.raises(PpmlError) as excinfo:
        jobs.start("j2", "m2", "", OWNER, _architecture(), _initial(_architecture()), _spec())
    assert _code(excinfo) == ErrorCode.RESOURCE_EXHAUSTED


def test_a_job_records_whose_data_it_uses_with_their_release(world: World) -> None:
    info = _start(world, dataset_ids=("a-train", "b-train"), validation_id="a-val")
    assert [(s.dataset_id, s.owner) for s in info.sources] == [
        ("a-train", OWNER),
        ("b-train", OTHER),
        ("a-val", OWNER),
    ]


def test_validation_set_must_match_the_training_data(world: World) -> None:
    _upload(world.datasets, "bad-val", feature_shape=(6,))
    with pytest.raises(PpmlError) as excinfo:
        _start(world, validation_id="bad-val")
    assert _code(excinfo) == ErrorCode.INVALID_JOB
    assert "'bad-val'" in str(excinfo.value)
    _assert_nothing_stored(world)


def test_model_input_size_must_match_the_features(world: World) -> None:
    architecture = _architecture(inputs=6)
    with pytest.raises(PpmlError) as excinfo:
        world.jobs.start(
            "job-1", "model-1", "", OWNER, architecture, _initial(architecture), _spec()
        )
    assert _code(excinfo) == ErrorCode.INVALID_JOB
    assert "[6]" in str(excinfo.value) and "4 features" in str(excinfo.value)
    _assert_nothing_stored(world)


@pytest.mark.parametrize(
    ("loss", "outputs", "needle"),
    [
        ("cross_entropy", 2, "num_classes=3"),
        ("binary_cross_entropy", 1, "2 classes"),
        ("hinge", 3, "unknown loss"),
    ],
)
def test_loss_must_fit_the_output_size(world: World, loss: str, outputs: int, needle: str) -> None:
    architecture = _architecture(outputs=outputs)
    with pytest.raises(PpmlError) as excinfo:
        world.jobs.start(
            "job-1", "model-1", "", OWNER, architecture, _initial(architecture), _spec(loss=loss)
        )
    assert _code(excinfo) == ErrorCode.INVALID_JOB
    assert needle in str(excinfo.value)
    _assert_nothing_stored(world)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"dataset_ids": ()}, "at least one"),
        ({"dataset_ids": ("a-train", "a-train")}, "twice"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": 10_001}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -0.1}, "lr"),
        ({"lr": 101.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.5}, "momentum"),
        ({"weight_decay": 1.0}, "weight_decay"),
        ({"weight_decay": -0.01}, "weight_decay"),
        ({"optimizer": "adam"}, "adam"),
    ],
    ids=repr,
)
def test_bad_hyper_parameters(world: World, changes: dict[str, object], needle: str) -> None:
    architecture = _architecture()
    with pytest.raises(PpmlError) as excinfo:
        world.jobs.start(
            "job-1", "model-1", "", OWNER, architecture, _initial(architecture), _spec(**changes)
        )
    assert _code(excinfo) == ErrorCode.INVALID_JOB
    assert needle in str(excinfo.value)
    _assert_nothing_stored(world)


@pytest.mark.parametrize(("job_id", "model_id"), [("a b", "m"), ("j", "../m"), ("", "m")])
def test_bad_ids(world: World, job_id: str, model_id: str) -> None:
    with pytest.raises(PpmlError) as excinfo:
        _start(world, job_id=job_id, model_id=model_id)
    assert _code(excinfo) == ErrorCode.INVALID_ARGUMENT
    _assert_nothing_stored(world)


def test_architecture_with_wrong_output_shape_is_an_invalid_model(world: World) -> None:
    architecture = arch.Architecture((arch.Linear(4, 2),), (4,), (3,))
    with pytest.raises(PpmlError) as excinfo:
        world.jobs.start("job-1", "m", "", OWNER, architecture, _initial(architecture), _spec())
    assert _code(excinfo) == ErrorCode.INVALID_MODEL
    _assert_nothing_stored(world)


def test_a_chain_with_a_served_only_layer_kind_is_refused_by_name(world: World) -> None:
    architecture = arch.Architecture(
        (arch.Linear(4, 8), arch.GELU(), arch.Linear(8, 2)), (4,), (2,)
    )
    with pytest.raises(PpmlError, match=r"layer 1 \(GELU\) is served .* not trained") as excinfo:
        world.jobs.start("job-1", "m", "", OWNER, architecture, _initial(architecture), _spec())
    assert _code(excinfo) == ErrorCode.INVALID_JOB
    _assert_nothing_stored(world)


def test_caller_not_allowed_on_a_dataset(world: World) -> None:
    _upload(world.datasets, "private", owner=OTHER)
    with pytest.raises(PpmlError) as excinfo:
        _start(world, dataset_ids=("a-train", "private"))
    assert _code(excinfo) == ErrorCode.PERMISSION_DENIED
    assert "'private'" in str(excinfo.value) and OTHER in str(excinfo.value)
    _assert_nothing_stored(world)


def test_caller_not_allowed_on_the_validation_set(world: World) -> None:
    _upload(world.datasets, "their-val", owner=OTHER)
    with pytest.raises(PpmlError) as excinfo:
        _start(world, validation_id="their-val")
    assert _code(excinfo) == ErrorCode.PERMISSION_DENIED
    _assert_nothing_stored(world)


def test_dataset_open_to_anyone(world: World) -> None:
    _upload(world.datasets, "public", owner=OTHER, allowed=(ANYONE,))
    assert _start(world, dataset_ids=("public",)).rows == 10


def test_duplicate_job_id(world: World) -> None:
    _start(world)
    world.announcer.messages.clear()
    with pytest.raises(PpmlError) as excinfo:
        _start(world, model_id="model-2")
    assert _code(excinfo) == ErrorCode.JOB_EXISTS
    assert world.announcer.messages == []
    assert world.jobs.get("job-1", OWNER).model_id == "model-1"


def test_model_id_taken(world: World) -> None:
    architecture = _architecture()
    world.models.upload("model-1", "", OTHER, architecture, _initial(architecture))
    with pytest.raises(PpmlError) as excinfo:
        _start(world)
    assert _code(excinfo) == ErrorCode.MODEL_EXISTS
    _assert_nothing_stored(world)


def test_model_id_claimed_by_an_active_job(world: World) -> None:
    _start(world, job_id="job-1", model_id="model-1")
    world.announcer.messages.clear()
    with pytest.raises(PpmlError) as excinfo:
        _start(world, job_id="job-2", model_id="model-1")
    assert _code(excinfo) == ErrorCode.MODEL_EXISTS
    assert "job-1" in str(excinfo.value)
    assert world.announcer.messages == []
    world.jobs.end("job-1", "failed", "x")
    assert _start(world, job_id="job-2", model_id="model-1").state is JobState.QUEUED


# ---------------------------------------------------------------- get / list / cancel


def test_get_and_list_hide_metric_shares_from_non_owners(world: World) -> None:
    _start(world, reveal_metrics=True)
    world.jobs.started("job-1")
    world.jobs.progress("job-1", _outcome(1, 5, _metrics(1)))
    assert len(world.jobs.get("job-1", OWNER).metrics) == 1
    public = world.jobs.get("job-1", OTHER)
    assert public.metrics == ()
    assert public.steps_done == 1 and public.state is JobState.RUNNING
    assert [len(i.metrics) for i in world.jobs.list(OWNER)] == [1]
    assert [len(i.metrics) for i in world.jobs.list(OTHER)] == [0]
    assert [i.job_id for i in world.jobs.list(OTHER)] == ["job-1"]


def test_get_unknown_job(world: World) -> None:
    with pytest.raises(PpmlError) as excinfo:
        world.jobs.get("nope", OWNER)
    assert _code(excinfo) == ErrorCode.JOB_NOT_FOUND


def test_list_is_oldest_first(world: World) -> None:
    for i in range(3):
        _start(world, job_id=f"job-{i}", model_id=f"model-{i}")
    assert [i.job_id for i in world.jobs.list(OWNER)] == ["job-0", "job-1", "job-2"]


def test_cancel_by_non_owner_is_denied(world: World) -> None:
    _start(world)
    world.announcer.messages.clear()
    with pytest.raises(PpmlError) as excinfo:
        world.jobs.cancel("job-1", OTHER, wait_s=0)
    assert _code(excinfo) == ErrorCode.PERMISSION_DENIED
    assert world.announcer.messages == []
    assert world.jobs.get("job-1", OWNER).state is JobState.QUEUED


def test_cancel_of_a_finished_job(world: World) -> None:
    _start(world)
    world.jobs.end("job-1", "failed", "boom")
    world.announcer.messages.clear()
    with pytest.raises(PpmlError) as excinfo:
        world.jobs.cancel("job-1", OWNER, wait_s=0)
    assert _code(excinfo) == ErrorCode.JOB_FINISHED
    assert "failed" in str(excinfo.value)
    assert world.announcer.messages == []


def test_cancel_asks_the_leader_and_waits_for_the_end(world: World) -> None:
    _start(world)

    def leader(message: cmd.PartyMessage) -> bool:
        world.announcer.messages.append(message)
        if isinstance(message, cmd.CancelJob):  # the leader's EndJob reaches this party
            threading.Timer(0.05, world.jobs.end, ("job-1", "cancelled", message.reason)).start()
        return True

    world.jobs._announce = leader
    info = world.jobs.cancel("job-1", OWNER, wait_s=5.0)
    assert world.announcer.messages[-1] == cmd.CancelJob("job-1", f"cancelled by {OWNER}")
    assert info.state is JobState.CANCELLED
    assert info.reason == f"cancelled by {OWNER}"


def test_cancel_with_unreachable_leader(world: World) -> None:
    _start(world)
    world.announcer.reachable = False
    with pytest.raises(PpmlError) as excinfo:
        world.jobs.cancel("job-1", OWNER, wait_s=0)
    assert _code(excinfo) == ErrorCode.NOT_READY
    assert world.jobs.get("job-1", OWNER).state is JobState.QUEUED


# ---------------------------------------------------------------- worker calls and events


def test_worker_calls_produce_ordered_events(world: World) -> None:
    _start(world, reveal_metrics=True, epochs=1, dataset_ids=("a-train",))  # 3 steps
    world.jobs.started("job-1")
    assert world.jobs.get("job-1", OWNER).started_unix_ms > 0
    world.jobs.progress("job-1", _outcome(1, 1))
    world.jobs.progress("job-1", _outcome(1, 2))
    world.jobs.progress("job-1", _outcome(1, 3, _metrics(1)))
    architecture = _architecture()
    world.jobs.succeeded("job-1", architecture, _initial(architecture))
    events = _events(world)
    assert [e.index for e in events] == list(range(6))
    assert [e.state for e in events] == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.RUNNING,
        JobState.RUNNING,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]
    assert [e.steps_done for e in events] == [0, 0, 1, 2, 3, 3]
    assert [e.samples_done for e in events] == [0, 0, 4, 8, 10, 10]
    assert all(e.steps_total == 3 for e in events)
    assert [e.batch for e in events[2:5]] == [1, 2, 3]
    assert [e.metrics is not None for e in events] == [False] * 4 + [True, False]
    assert events[2].samples_per_s == 12.5
    info = world.jobs.get("job-1", OWNER)
    assert info.state is JobState.SUCCEEDED and info.finished_unix_ms > 0
    assert len(info.metrics) == 1
    assert world.models.meta("model-1").owner == OWNER  # the trained model is registered
    assert _active(world.jobs) == 0


def test_end_produces_a_terminal_event_once(world: World) -> None:
    _start(world)
    world.jobs.started("job-1")
    world.jobs.end("job-1", "cancelled", "cancelled by hospital-a")
    world.jobs.end("job-1", "failed", "late failure")  # already ended: ignored
    world.jobs.progress("job-1", _outcome(1, 1))  # a late step report: ignored
    world.jobs.end("unknown-job", "failed", "x")  # never known here: ignored
    events = _events(world)
    assert [e.state for e in events] == [JobState.QUEUED, JobState.RUNNING, JobState.CANCELLED]
    assert events[-1].reason == "cancelled by hospital-a"
    info = world.jobs.get("job-1", OWNER)
    assert info.state is JobState.CANCELLED and info.steps_done == 0


def test_nobody_can_upload_under_a_running_jobs_model_id(world: World) -> None:
    _start(world)
    world.jobs.started("job-1")
    architecture = _architecture()
    for tenant in (OTHER, OWNER):  # only the job itself registers its result
        with pytest.raises(PpmlError) as excinfo:
            world.models.upload("model-1", "", tenant, architecture, _initial(architecture))
        assert _code(excinfo) == ErrorCode.MODEL_EXISTS
        assert "reserved by training job 'job-1'" in str(excinfo.value)
    world.jobs.succeeded("job-1", architecture, _initial(architecture))
    assert world.jobs.get("job-1", OWNER).state is JobState.SUCCEEDED
    assert world.models.meta("model-1").owner == OWNER
    assert world.models.ids.holder("model-1") is None  # the reservation became the model


@pytest.mark.parametrize("state", ["failed", "cancelled"])
def test_a_job_that_ends_without_a_model_frees_its_model_id(world: World, state: str) -> None:
    _start(world)
    world.jobs.end("job-1", state, "x")
    architecture = _architecture()
    assert world.models.upload("model-1", "", OTHER, architecture, _initial(architecture))


def test_failed_model_upload_fails_the_job_and_frees_the_id(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _start(world)
    world.jobs.started("job-1")

    def disk_full(*_: object) -> None:
        raise PpmlError(ErrorCode.RESOURCE_EXHAUSTED, "no space left")

    monkeypatch.setattr(world.models._store, "put", disk_full)
    architecture = _architecture()
    world.jobs.succeeded("job-1", architecture, _initial(architecture))
    info = world.jobs.get("job-1", OWNER)
    assert info.state is JobState.FAILED
    assert "could not store the trained model" in info.reason
    assert world.models.ids.holder("model-1") is None


def test_inputs_hand_the_worker_this_servers_shares(world: World) -> None:
    _start(world, validation_id="a-val")
    inputs = world.jobs.inputs("job-1")
    assert [x.shape for x in inputs.features] == [(10, 4), (7, 4)]
    assert [y.shape for y in inputs.labels] == [(10, 3), (7, 3)]
    features, _ = world.datasets.shares("a-train")
    np.testing.assert_array_equal(inputs.features[0], features)
    assert inputs.validation is not None and inputs.validation[0].shape == (5, 4)
    assert set(inputs.initial) == set(_architecture().parameter_shapes())
    world.jobs.end("job-1", "failed", "x")
    with pytest.raises(RuntimeError, match="already failed"):
        world.jobs.inputs("job-1")


def test_watch_yields_all_events_then_stops_at_the_terminal_one(world: World) -> None:
    _start(world, reveal_metrics=True)
    seen: list[JobEvent] = []
    done = threading.Event()

    def watch() -> None:
        seen.extend(world.jobs.watch("job-1", OWNER, lambda: not done.is_set()))
        done.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    world.jobs.started("job-1")
    world.jobs.progress("job-1", _outcome(1, 1, _metrics(1)))
    world.jobs.end("job-1", "failed", "server-2 left")
    watcher.join(10)
    assert not watcher.is_alive()
    assert [e.state for e in seen] == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.RUNNING,
        JobState.FAILED,
    ]
    assert seen[-1].reason == "server-2 left"
    assert seen[2].metrics is not None


def test_watch_by_a_non_owner_hides_metrics(world: World) -> None:
    _start(world, reveal_metrics=True)
    world.jobs.started("job-1")
    world.jobs.progress("job-1", _outcome(1, 5, _metrics(1)))
    world.jobs.end("job-1", "cancelled", "x")
    events = _events(world, caller=OTHER)
    assert len(events) == 4
    assert all(e.metrics is None for e in events)
    assert _events(world)[2].metrics is not None


def test_watch_stops_when_the_caller_leaves(world: World) -> None:
    _start(world)
    calls = iter([True, False])
    events = list(world.jobs.watch("job-1", OWNER, lambda: next(calls, False)))
    assert [e.state for e in events] == [JobState.QUEUED]


def test_watch_unknown_job(world: World) -> None:
    with pytest.raises(PpmlError) as excinfo:
        list(world.jobs.watch("nope", OWNER, lambda: True))
    assert _code(excinfo) == ErrorCode.JOB_NOT_FOUND


# ---------------------------------------------------------------- restarts


def test_restart_fails_queued_and_running_jobs(world: World) -> None:
    _start(world, job_id="queued", model_id="m1")
    _start(world, job_id="running", model_id="m2")
    _start(world, job_id="done", model_id="m3")
    world.jobs.started("running")
    world.jobs.progress("running", _outcome(1, 1))
    world.jobs.end("done", "cancelled", "by owner")
    restarted = world.restart("server-1")
    states = {i.job_id: i for i in restarted.list(OWNER)}
    for job_id, was in [("queued", "queued"), ("running", "running")]:
        info = states[job_id]
        assert info.state is JobState.FAILED
        assert "server-1" in info.reason and was in info.reason
        assert info.finished_unix_ms > 0
        assert world.job_store.get_meta(job_id).state is JobState.FAILED  # persisted
    assert states["done"].state is JobState.CANCELLED
    assert states["done"].reason == "by owner"
    assert states["running"].steps_done == 1
    assert _active(restarted) == 0
    events = list(restarted.watch("running", OWNER, lambda: True))
    assert events[-1].state is JobState.FAILED and "restarted" in events[-1].reason


def test_watch_after_restart_replays_epochs_and_final_state(world: World) -> None:
    _start(world, reveal_metrics=True)
    world.jobs.started("job-1")
    world.jobs.progress("job-1", _outcome(1, 5, _metrics(1)))
    world.jobs.progress("job-1", _outcome(2, 5, _metrics(2)))
    architecture = _architecture()
    world.jobs.succeeded("job-1", architecture, _initial(architecture))
    restarted = world.restart()
    events = list(restarted.watch("job-1", OWNER, lambda: True))
    assert [e.index for e in events] == [0, 1, 2]
    assert [e.epoch for e in events[:2]] == [1, 2]
    assert all(e.metrics is not None for e in events[:2])
    assert events[-1].state is JobState.SUCCEEDED
    assert events[-1].steps_done == 2
    public = list(restarted.watch("job-1", OTHER, lambda: True))
    assert all(e.metrics is None for e in public)


def test_fail_active(world: World) -> None:
    _start(world, job_id="a", model_id="ma")
    _start(world, job_id="b", model_id="mb")
    world.jobs.end("b", "cancelled", "x")
    assert _active(world.jobs) == 1
    world.jobs.fail_active("lost the leader")
    assert world.jobs.get("a", OWNER).state is JobState.FAILED
    assert world.jobs.get("a", OWNER).reason == "lost the leader"
    assert world.jobs.get("b", OWNER).state is JobState.CANCELLED
    assert _active(world.jobs) == 0


# ---------------------------------------------------------------- dataset registry


@pytest.fixture
def registry() -> DatasetRegistry:
    return DatasetRegistry(MemoryShareStore(DATASET_CODEC), max_rows=1000)


def test_upload_assembles_chunks(registry: DatasetRegistry) -> None:
    chunks = _chunks(10, (1, 2, 2), 3, per_chunk=3)
    meta = registry.upload(_header("img", feature_shape=(1, 2, 2)), chunks)
    assert meta.rows == 10 and meta.features == 4 and meta.owner == OWNER
    assert meta.name == "img" and meta.created_unix_ms > 0
    features, labels = registry.shares("img")
    np.testing.assert_array_equal(features, np.concatenate([x for x, _ in chunks]))
    np.testing.assert_array_equal(labels, np.concatenate([y for _, y in chunks]))
    assert registry.meta("img") == meta
    assert [m.dataset_id for m in registry.list()] == ["img"]
    assert len(registry) == 1


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        (_header("d", rows=0), "empty"),
        (_header("d", rows=-3), "empty"),
        (_header("d", rows=1001), "at most 1000"),
        (_header("d", num_classes=1), "num_classes"),
        (_header("d", num_classes=0), "num_classes"),
        (_header("d", feature_shape=()), "feature_shape"),
        (_header("d", feature_shape=(3, 0)), "feature_shape"),
        (_header("d", allowed=("",)), "allowed"),
    ],
    ids=repr,
)
def test_upload_rejects_bad_headers(
    registry: DatasetRegistry, header: DatasetMeta, needle: str
) -> None:
    with pytest.raises(PpmlError) as excinfo:
        registry.upload(header, _chunks(max(header.rows, 1), (4,), 3))
    assert _code(excinfo) == ErrorCode.INVALID_DATASET
    assert needle in str(excinfo.value)
    assert len(registry) == 0


@pytest.mark.parametrize(
    "chunk",
    [
        (random_ring((2, 5)), random_ring((2, 3))),  # wrong feature count
        (random_ring((2, 4)), random_ring((2, 2))),  # wrong class count
        (random_ring((2, 4)), random_ring((3, 3))),  # rows disagree
        (random_ring((2, 2, 2)), random_ring((2, 3))),  # wrong feature shape
    ],
    ids=["features", "classes", "rows", "shape"],
)
def test_upload_rejects_chunk_shape_mismatch(
    registry: DatasetRegistry, chunk: tuple[Ring, Ring]
) -> None:
    good = _chunks(4, (4,), 3)
    with pytest.raises(PpmlError) as excinfo:
        registry.upload(_header("d", rows=6), [*good, chunk])
    assert _code(excinfo) == ErrorCode.INVALID_SHARE
    assert "chunk 1" in str(excinfo.value)
    assert len(registry) == 0


@pytest.mark.parametrize("arrived", [9, 11], ids=["too-few", "too-many"])
def test_upload_rejects_row_count_mismatch(registry: DatasetRegistry, arrived: int) -> None:
    with pytest.raises(PpmlError) as excinfo:
        registry.upload(_header("d", rows=10), _chunks(arrived, (4,), 3))
    assert _code(excinfo) == ErrorCode.INVALID_DATASET
    assert "10" in str(excinfo.value)
    assert len(registry) == 0


def test_upload_rejects_an_empty_stream(registry: DatasetRegistry) -> None:
    with pytest.raises(PpmlError) as excinfo:
        registry.upload(_header("d", rows=4), [])
    assert _code(excinfo) == ErrorCode.INVALID_DATASET
    assert len(registry) == 0


def test_upload_rejects_a_taken_id(registry: DatasetRegistry) -> None:
    _upload(registry, "d")
    with pytest.raises(PpmlError) as excinfo:
        _upload(registry, "d", owner=OTHER)
    assert _code(excinfo) == ErrorCode.DATASET_EXISTS
    assert registry.meta("d").owner == OWNER


def test_only_the_owner_may_delete(registry: DatasetRegistry) -> None:
    _upload(registry, "d", allowed=(OTHER,))
    with pytest.raises(PpmlError) as excinfo:
        registry.delete("d", OTHER)
    assert _code(excinfo) == ErrorCode.PERMISSION_DENIED
    assert len(registry) == 1
    registry.delete("d", OWNER)
    assert len(registry) == 0
    with pytest.raises(PpmlError) as excinfo:
        registry.meta("d")
    assert _code(excinfo) == ErrorCode.DATASET_NOT_FOUND


def test_usable_follows_the_access_rules(registry: DatasetRegistry) -> None:
    _upload(registry, "d", allowed=(OTHER,))
    assert registry.usable("d", OWNER).dataset_id == "d"
    assert registry.usable("d", OTHER).dataset_id == "d"
    with pytest.raises(PpmlError) as excinfo:
        registry.usable("d", "mallory")
    assert _code(excinfo) == ErrorCode.PERMISSION_DENIED


def _active(manager: JobManager) -> int:
    """Jobs that are neither finished nor failed, from the status counts."""
    counts = manager.counts()
    return counts.get("queued", 0) + counts.get("running", 0)


# ---------------------------------------------------------------- DP-SGD


def test_a_dp_job_records_its_multiplier_and_the_epsilon_of_every_step(world: World) -> None:
    info = _start(world, dp_clip_norm=1.0, dp_noise_multiplier=1.5)
    assert (info.dp_noise_multiplier, info.dp_epsilon) == (1.5, 0.0)
    world.jobs.started("job-1")
    world.jobs.progress("job-1", _outcome(1, 1))
    world.jobs.progress("job-1", _outcome(1, 2))
    after = world.jobs.get("job-1", OTHER)  # public: anyone who may see the job sees epsilon
    plan = dpsgd.plan(info.spec, 17)
    assert plan.sampling == FixedSizeSampling(17, 4)
    assert after.dp_epsilon == pytest.approx(plan.epsilon(2), rel=1e-12)
    assert world.jobs.inputs("job-1").dp_noise_multiplier == 1.5
    assert world.job_store.get_meta("job-1").dp_epsilon == after.dp_epsilon  # persisted
    world.jobs.end("job-1", "cancelled", "enough")  # watch() returns at a final state
    events = [e for e in _events(world) if e.state is JobState.RUNNING and e.steps_done]
    assert [e.dp_epsilon for e in events] == [pytest.approx(plan.epsilon(s)) for s in (1, 2)]


def test_a_target_epsilon_is_calibrated_once_at_start(world: World) -> None:
    info = _start(world, dp_clip_norm=0.5, dp_target_epsilon=4.0, dp_delta=1e-3)
    assert info.spec.dp_noise_multiplier is None  # the spec stays as submitted
    plan = dpsgd.plan(info.spec, 17, info.dp_noise_multiplier)
    assert info.dp_noise_multiplier > 0
    assert 3.96 <= plan.epsilon(info.steps_total) <= 4.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"dp_clip_norm": 1.0, "dp_noise_multiplier": 1.0, "dp_delta": 0.1}, "1/rows"),
        ({"dp_clip_norm": 1.0}, "needs dp_noise_multiplier"),
        ({"dp_noise_multiplier": 1.0}, "need dp_clip_norm"),
    ],
)
def test_bad_dp_jobs_are_invalid_and_leave_nothing(
    world: World, spec: dict[str, object], message: str
) -> None:
    with pytest.raises(PpmlError, match=message) as excinfo:
        _start(world, **spec)
    assert _code(excinfo) == ErrorCode.INVALID_JOB
    assert world.jobs.list(OWNER) == [] and world.announcer.messages == []


def test_dp_refuses_layers_without_per_example_gradients(world: World) -> None:
    architecture = arch.Architecture((arch.Affine((4,)), arch.Linear(4, 3)), (4,), (3,))
    with pytest.raises(PpmlError, match=r"DP-SGD supports only layers.*affine") as excinfo:
        world.jobs.start(
            "job-1", "model-1", "", OWNER, architecture, _initial(architecture),
            _spec(dp_clip_norm=1.0, dp_noise_multiplier=1.0),
        )  # fmt: skip
    assert _code(excinfo) == ErrorCode.INVALID_JOB


def test_what_is_served_but_not_trained_is_refused_by_name() -> None:
    from ppml.proto.domain.architecture import GELU, Add, Architecture, Flatten, Linear
    from ppml.servers.store.jobs import graph_refusal

    assert graph_refusal(Architecture((Linear(4, 3),), (4,), (3,))) is None
    tokens = Architecture((Linear(8, 4), Flatten(), Linear(32, 2)), (8, 8), (2,))
    assert "layer 0 (a Linear on each token)" in (graph_refusal(tokens) or "")
    gelu = Architecture((Linear(4, 4), GELU(), Linear(4, 2)), (4,), (2,))
    assert "layer 1 (GELU)" in (graph_refusal(gelu) or "")
    residual = Architecture((Linear(4, 4), Add()), (4,), (4,), inputs=((-1,), (0, -1)))
    assert "residual connections" in (graph_refusal(residual) or "")
