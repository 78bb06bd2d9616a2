"""Training jobs on one server: validation, persisted state, progress events.

The gRPC side calls :meth:`JobManager.start`, ``get``, ``list``, ``watch`` and
``cancel``; the MPC worker reports through ``inputs``, ``started``,
``progress``, ``succeeded`` and ``end``. Every state change is written to
this server's store before anyone hears of it, so a restarted server knows
every job; one that was still queued or running when the server stopped is
marked failed at start-up (its secret in-memory state is gone).

Callers other than a job's owner see its counters, never its metric shares.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ppml.proto.deploy.topology import LimitsConfig
from ppml.proto.domain import commands as cmd
from ppml.proto.domain.architecture import Architecture, Linear, infer_output_shape, layer_shapes
from ppml.proto.domain.datasets import DatasetMeta
from ppml.proto.domain.jobs import (
    OPTIMIZERS,
    EpochMetrics,
    JobEvent,
    JobInfo,
    JobState,
    TrainingSpec,
)
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.ids import check_id, fingerprint
from ppml.proto.names import check_name, quote
from ppml.proto.shares import Ring
from ppml.proto.wire import serde
from ppml.servers.store.datasets import DatasetRegistry
from ppml.servers.store.events import EventLog
from ppml.servers.store.model_ids import Claim
from ppml.servers.store.models import ModelRegistry
from ppml.servers.store.storage import RecordCodec, ShareStore
from ppml.training import losses
from ppml.training.losses import LossMismatch, check_fits
from ppml.training.privacy import dpsgd


@dataclass(frozen=True)
class RunInputs:
    """What one party needs to run a job: public spec, its own shares."""

    spec: TrainingSpec
    architecture: Architecture  # as submitted (without the standardising layer)
    initial: dict[str, Ring]
    features: list[Ring]  # per training data set, (rows, *feature_shape)
    labels: list[Ring]  # per training data set, (rows, num_classes) one-hot
    validation: tuple[Ring, Ring] | None
    dp_noise_multiplier: float = 0.0  # DP-SGD (spec.dp): the multiplier resolved at start


@dataclass(frozen=True)
class StepOutcome:
    epoch: int  # 1-based
    batch: int  # 1-based within the epoch
    samples: int
    samples_per_s: float  # over the epoch so far
    metrics: EpochMetrics | None  # at an epoch's end, if the owner asked for them
    finished: bool



JOB_CODEC = RecordCodec[JobInfo](
    kind="jobs",
    key=lambda info: info.job_id,
    created=lambda info: info.created_unix_ms,
    to_bytes=serde.job_info_to_bytes,
    from_bytes=serde.job_info_from_bytes,
    not_found=ErrorCode.JOB_NOT_FOUND,
    exists=ErrorCode.JOB_EXISTS,
    noun="training job",
)

ANNOUNCE_TIMEOUT_S = 60.0
TRAIN_KIND = "train"  # the job kind that runs these jobs (servers/kinds/train.py)
MAX_EPOCHS = 10_000
Announcer = Callable[[cmd.PartyMessage], bool]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _invalid(detail: str) -> PpmlError:
    return PpmlError(ErrorCode.INVALID_JOB, detail)


def graph_refusal(architecture: Architecture) -> str | None:
    """Why a model cannot be trained or federated; None if it can.

    A graph (one with a residual connection) cannot, nor a chain with a layer
    kind that is only served (``TRAINABLE`` false: a transformer's kinds),
    nor a token model (its input is one-hot token ids, not a data set's rows).
    """
    if architecture.tokens is not None:
        return (
            "the model takes token ids (an embedding of a "
            f"{architecture.tokens.vocab}-token vocabulary): token models are served (predict) "
            "but not trained or federated; train a model on feature rows"
        )
    if not architecture.is_chain:
        return (
            f"the model is a graph ({architecture.describe()}): models with residual "
            "connections are served (predict, evaluate) but not trained or federated yet; "
            "train a chain of layers"
        )
    try:
        shapes = [architecture.input_shape, *layer_shapes(architecture)]
    except ValueError:
        return None  # the shape check that follows names the mismatch
    for index, layer in enumerate(architecture.layers):
        token_wise = isinstance(layer, Linear) and len(shapes[index]) > 1
        if not layer.TRAINABLE or token_wise:
            what = "a Linear on each token" if token_wise else type(layer).__name__
            return (
                f"layer {index} ({what}) is served (predict, evaluate) but not "
                "trained or federated yet; train a chain of Linear, Conv2d, pooling, Flatten, "
                "Affine and ReLU layers"
            )
    return None


def _holder(job_id: str) -> str:
    """Who holds a job's model id from its start until its model is stored or it ends."""
    return f"training job {job_id!r}"


def check_spec(spec: TrainingSpec) -> None:
    if not spec.dataset_ids:
        raise _invalid("name at least one training dataset")
    if len(set(spec.dataset_ids)) != len(spec.dataset_ids):
        raise _invalid("a dataset is listed twice")
    if not 1 <= spec.epochs <= MAX_EPOCHS:
        raise _invalid(f"epochs must lie in 1..{MAX_EPOCHS}, got {spec.epochs}")
    if spec.batch_size < 1:
        raise _invalid(f"batch_size must be at least 1, got {spec.batch_size}")
    if not 0 < spec.lr <= 100:
        raise _invalid(f"lr must lie in (0, 100], got {spec.lr}")
    if not 0 <= spec.momentum < 1:
        raise _invalid(f"momentum must lie in [0, 1), got {spec.momentum}")
    if not 0 <= spec.weight_decay < 1:
        raise _invalid(f"weight_decay must lie in [0, 1), got {spec.weight_decay}")
    if spec.optimizer not in OPTIMIZERS:
        raise _invalid(f"unknown optimizer {quote(spec.optimizer)}; choose one of {OPTIMIZERS}")
    try:
        dpsgd.check_spec(spec)
    except ValueError as exc:
        raise _invalid(str(exc)) from None


def dp_plan(architecture: Architecture, spec: TrainingSpec, rows: int) -> dpsgd.DpSgdPlan:
    """A DP-SGD job's plan (noise multiplier calibrated if asked); INVALID_JOB if unfit."""
    try:
        dpsgd.check_architecture(architecture)
        return dpsgd.plan(spec, rows)
    except ValueError as exc:
        raise _invalid(str(exc)) from None


def dp_epsilon(info: JobInfo, steps: int) -> float:
    """Epsilon a DP-SGD job has spent after ``steps`` steps (0.0 for a job without DP)."""
    if not info.spec.dp:
        return 0.0
    return dpsgd.plan(info.spec, info.rows, info.dp_noise_multiplier).epsilon(steps)


def check_data_fits(
    architecture: Architecture, spec: TrainingSpec, datasets: list[DatasetMeta]
) -> int:
    """Every data set matches the model and the others; returns the training rows.

    Data sets may have fewer classes than the model (an owner that holds no
    row of the highest classes): their one-hot labels are padded with zero
    columns, which are valid shares of 0 (see :func:`pad_labels`).
    """
    first = datasets[0]
    classes = model_classes(architecture, spec)
    for meta in datasets:
        if meta.feature_shape != first.feature_shape:
            raise _invalid(
                f"datasets {first.dataset_id!r} and {meta.dataset_id!r} have different features: "
                f"{list(first.feature_shape)} vs {list(meta.feature_shape)} per row"
            )
        if meta.num_classes > classes:
            raise _invalid(
                f"dataset {meta.dataset_id!r} has num_classes={meta.num_classes} but the model "
                f"predicts {classes} classes: share it with num_classes={classes} or give the "
                f"model {meta.num_classes} outputs"
            )
    input_count = 1
    for dim in architecture.input_shape:
        input_count *= dim
    if first.features != input_count:
        raise _invalid(
            f"the model takes inputs of shape {list(architecture.input_shape)} "
            f"({input_count} values); the datasets have {first.features} features per row"
        )
    try:
        check_fits(spec.loss, architecture.output_shape, classes)
    except LossMismatch as exc:
        raise _invalid(str(exc)) from None
    return sum(meta.rows for meta in datasets)


def model_classes(architecture: Architecture, spec: TrainingSpec) -> int:
    """How many classes the model predicts: its outputs, or 2 for one binary logit."""
    try:
        binary = losses.get(spec.loss).binary
    except LossMismatch as exc:
        raise _invalid(str(exc)) from None
    outputs = architecture.output_shape[0] if len(architecture.output_shape) == 1 else 0
    return 2 if binary else outputs


def pad_labels(labels: Ring, classes: int) -> Ring:
    """One-hot label shares padded with zero columns to ``classes`` (zeros share 0)."""
    missing = classes - labels.shape[1]
    return np.pad(labels, ((0, 0), (0, missing))) if missing > 0 else labels


class JobManager:
    def __init__(
        self,
        server_name: str,
        store: ShareStore[JobInfo],
        datasets: DatasetRegistry,
        models: ModelRegistry,
        announcer: Announcer,
        limits: LimitsConfig | None = None,
        refuse: Callable[[Architecture, TrainingSpec], str | None] | None = None,
    ) -> None:
        """``refuse``: why this cluster's engine cannot run a job (None: it can)."""
        self._name = server_name
        self._refuse = refuse
        self._limits = limits or LimitsConfig()
        self._store = store
        self._datasets = datasets
        self._models = models
        self._announce = announcer
        self._cond = threading.Condition()
        self._events = EventLog[JobEvent](self._cond, self._limits.max_job_events)
        # every job's metadata, in creation order: the store is written through, read at start
        self._infos: dict[str, JobInfo] = {info.job_id: info for info in store.list()}
        for info in list(self._infos.values()):
            if not info.state.terminal:
                self._finish(
                    info,
                    JobState.FAILED,
                    f"{server_name} restarted while the job was {info.state.value}; "
                    "its secret training state was lost. Start the job again.",
                )

    # ------------------------------------------------------------ client calls

    def start(
        self,
        job_id: str,
        model_id: str,
        name: str,
        owner: str,
        architecture: Architecture,
        initial: dict[str, Ring],
        spec: TrainingSpec,
    ) -> JobInfo:
        """Validate everything, persist the job QUEUED and announce it to the leader."""
        check_id(job_id, "job_id")
        check_id(model_id, "model_id")
        check_name(name, "name")  # the trained model's name: refused now, not after training
        check_spec(spec)
        if spec.batch_size < self._limits.min_batch_size:
            raise _invalid(
                f"batch_size must be at least {self._limits.min_batch_size} on this cluster "
                "(smaller batches make single rows recoverable from the trained weights)"
            )
        queued = sum(1 for i in self._all() if i.owner == owner and not i.state.terminal)
        if queued >= self._limits.max_queued_jobs_per_identity:
            raise PpmlError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"{owner!r} already has {queued} unfinished training jobs (the limit); "
                "wait for one to end or cancel it",
            )
        try:
            if infer_output_shape(architecture) != architecture.output_shape:
                raise ValueError("the layers do not produce the declared output shape")
        except ValueError as exc:
            raise PpmlError(ErrorCode.INVALID_MODEL, str(exc)) from None
        why = graph_refusal(architecture)
        if why is None and self._refuse is not None:
            why = self._refuse(architecture, spec)
        if why is not None:
            raise PpmlError(ErrorCode.INVALID_JOB, why)
        datasets = [self._datasets.usable(d, owner) for d in spec.dataset_ids]
        rows = check_data_fits(architecture, spec, datasets)
        noise = dp_plan(architecture, spec, rows).noise_multiplier if spec.dp else 0.0
        sources = [d.source() for d in datasets]
        if spec.validation_id:
            validation = self._datasets.usable(spec.validation_id, owner)
            check_data_fits(architecture, spec, [datasets[0], validation])
            sources.append(validation.source())
        if job_id in self._infos:
            raise PpmlError(ErrorCode.JOB_EXISTS, f"a training job with id {job_id!r} exists")
        info = JobInfo(
            job_id=job_id,
            model_id=model_id,
            name=name or job_id,
            owner=owner,
            architecture=architecture,
            spec=spec,
            created_unix_ms=_now_ms(),
            rows=rows,
            batches_per_epoch=spec.batches_per_epoch(rows),
            steps_total=spec.steps_total(rows),
            sources=tuple(sources),
            dp_noise_multiplier=noise,
        )
        holder = _holder(job_id)
        self._models.ids.reserve(model_id, Claim(holder, owner))  # until the model is stored
        try:
            self._store.put(info, initial)
        except BaseException:
            self._models.ids.release(model_id, holder)
            raise
        with self._cond:
            self._infos[job_id] = info
        self._emit(info)
        group = fingerprint(  # every server must hold the same job over the same data shapes
            owner, architecture, spec, [(d.rows, d.feature_shape, d.num_classes) for d in datasets]
        )
        announce = cmd.Announce(TRAIN_KIND, job_id, group, info.steps_total, ANNOUNCE_TIMEOUT_S)
        if not self._announce(announce):
            self._finish(info, JobState.FAILED, "the leader could not be reached; retry")
            raise PpmlError(ErrorCode.NOT_READY, "the leader could not be reached; retry shortly")
        return info

    def _visible(self, info: JobInfo, caller: str) -> JobInfo:
        return info if caller == info.owner else info.public()

    def get(self, job_id: str, caller: str) -> JobInfo:
        return self._visible(self._info(job_id), caller)

    def list(self, caller: str) -> list[JobInfo]:
        return [self._visible(info, caller) for info in self._all()]

    def watch(self, job_id: str, caller: str, active: Callable[[], bool]) -> Iterator[JobEvent]:
        """Every event so far, then new ones, until the job ends (or the caller leaves)."""
        info = self._info(job_id)
        return self._events.watch(
            job_id,
            lambda: self._replay(self._infos[job_id]),
            caller == info.owner,
            active,
        )

    def cancel(self, job_id: str, caller: str, wait_s: float = 30.0) -> JobInfo:
        info = self._info(job_id)
        if caller != info.owner:
            raise PpmlError(
                ErrorCode.PERMISSION_DENIED, f"only its owner {info.owner!r} may cancel {job_id!r}"
            )
        if info.state.terminal:
            raise PpmlError(ErrorCode.JOB_FINISHED, f"job {job_id!r} already {info.state.value}")
        if not self._announce(cmd.CancelJob(job_id, f"cancelled by {caller}")):
            raise PpmlError(ErrorCode.NOT_READY, "the leader could not be reached; retry shortly")
        deadline = time.monotonic() + wait_s
        with self._cond:
            while time.monotonic() < deadline:
                info = self._infos[job_id]
                if info.state.terminal:
                    break
                self._cond.wait(max(0.0, deadline - time.monotonic()))
        return info

    # ------------------------------------------------------------ worker calls

    def inputs(self, job_id: str) -> RunInputs:
        info = self._info(job_id)
        if info.state.terminal:
            raise RuntimeError(f"job {job_id} already {info.state.value} on {self._name}")
        classes = model_classes(info.architecture, info.spec)
        data = [self._datasets.shares(d) for d in info.spec.dataset_ids]
        validation = None
        if info.spec.validation_id:
            xv, yv = self._datasets.shares(info.spec.validation_id)
            validation = (xv, pad_labels(yv, classes))
        return RunInputs(
            info.spec,
            info.architecture,
            self._store.get_shares(job_id),
            [x for x, _ in data],
            [pad_labels(y, classes) for _, y in data],
            validation,
            info.dp_noise_multiplier,
        )

    def started(self, job_id: str) -> None:
        info = self._info(job_id)
        self._update(info.evolve(state=JobState.RUNNING, started_unix_ms=_now_ms()))

    def progress(self, job_id: str, outcome: StepOutcome) -> None:
        info = self._info(job_id)
        if info.state.terminal:
            return
        metrics = info.metrics if outcome.metrics is None else (*info.metrics, outcome.metrics)
        self._update(
            info.evolve(
                steps_done=info.steps_done + 1,
                samples_per_s=outcome.samples_per_s,
                metrics=metrics,
                dp_epsilon=dp_epsilon(info, info.steps_done + 1),
            ),
            outcome,
        )

    def succeeded(self, job_id: str, architecture: Architecture, shares: dict[str, Ring]) -> None:
        info = self._info(job_id)
        try:
            self._models.upload(
                info.model_id,
                info.name,
                info.owner,
                architecture,
                shares,
                trained_on=info.sources,
                holder=_holder(job_id),
            )
        except PpmlError as err:
            self._finish(info, JobState.FAILED, f"could not store the trained model: {err.detail}")
            return
        self._finish(info.evolve(architecture=architecture), JobState.SUCCEEDED, "")

    def end(self, job_id: str, state: str, reason: str) -> None:
        """The leader ended the job on every party (no-op if it already ended here)."""
        with self._cond:
            info = self._infos.get(job_id)  # evaluation ids end here too: not jobs
        if info is not None and not info.state.terminal:
            self._finish(info, JobState(state), reason)

    def fail_active(self, reason: str) -> None:
        for info in self._all():
            if not info.state.terminal:
                self._finish(info, JobState.FAILED, reason)

    def counts(self) -> dict[str, int]:
        """Jobs by state, as this server records them."""
        out: dict[str, int] = {}
        for info in self._all():
            out[info.state.value] = out.get(info.state.value, 0) + 1
        return out

    # ------------------------------------------------------------ state

    def _finish(self, info: JobInfo, state: JobState, reason: str) -> None:
        self._update(info.evolve(state=state, reason=reason, finished_unix_ms=_now_ms()))
        self._models.ids.release(info.model_id, _holder(info.job_id))  # no model: id free again

    def _info(self, job_id: str) -> JobInfo:
        check_id(job_id, "job_id")
        with self._cond:
            info = self._infos.get(job_id)
        if info is None:
            raise self._store.codec.not_found_error(job_id)
        return info

    def _all(self) -> builtins.list[JobInfo]:
        with self._cond:
            return builtins.list(self._infos.values())

    def _update(self, info: JobInfo, outcome: StepOutcome | None = None) -> None:
        self._store.update_meta(info)
        with self._cond:
            self._infos[info.job_id] = info
        self._emit(info, outcome)

    def _emit(self, info: JobInfo, outcome: StepOutcome | None = None) -> None:
        self._events.append(
            info.job_id,
            lambda index: JobEvent(
                index=index,
                job_id=info.job_id,
                state=info.state,
                epoch=outcome.epoch if outcome else 0,
                batch=outcome.batch if outcome else 0,
                steps_done=info.steps_done,
                steps_total=info.steps_total,
                samples_done=info.samples_done,
                samples_per_s=info.samples_per_s,
                metrics=outcome.metrics if outcome else None,
                reason=info.reason,
                dp_epsilon=info.dp_epsilon,
            ),
        )

    @staticmethod
    def _replay(info: JobInfo) -> builtins.list[JobEvent]:
        """Events of a job this process did not run: its epochs and final state."""
        events = [
            JobEvent(i, info.job_id, JobState.RUNNING, epoch=m.epoch, metrics=m)
            for i, m in enumerate(info.metrics)
        ]
        events.append(
            JobEvent(
                len(events),
                info.job_id,
                info.state,
                steps_done=info.steps_done,
                steps_total=info.steps_total,
                reason=info.reason,
                dp_epsilon=info.dp_epsilon,
            )
        )
        return events
