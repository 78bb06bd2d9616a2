"""Training jobs as domain types: spec (public), state, progress events.

Mirrors ``ppml/v1/training.proto``; :mod:`ppml.proto.wire.serde` converts. Metric
values appear only as this server's shares (:class:`EpochMetrics`): the
job's owner sums every server's share to read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

from ppml.proto.domain.architecture import Architecture
from ppml.proto.domain.datasets import DataSource
from ppml.proto.shares import Ring

LOSSES = ("cross_entropy", "binary_cross_entropy", "mse")
OPTIMIZERS = ("sgd",)
DP_DEFAULT_DELTA = 1e-5  # a DP-SGD job's delta when its spec leaves dp_delta at 0


class JobState(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class TrainingSpec:
    dataset_ids: tuple[str, ...]
    epochs: int
    batch_size: int
    lr: float
    validation_id: str = ""
    momentum: float = 0.0
    weight_decay: float = 0.0
    loss: str = "cross_entropy"
    optimizer: str = "sgd"
    reveal_metrics: bool = False
    seed: int = 0
    standardize: bool = False
    # DP-SGD (ppml.training.privacy.dpsgd): on when dp_clip_norm > 0; then exactly one of
    # dp_noise_multiplier (>= 0) and dp_target_epsilon (> 0); dp_delta 0 means the default
    dp_clip_norm: float = 0.0
    dp_noise_multiplier: float | None = None
    dp_target_epsilon: float = 0.0
    dp_delta: float = 0.0

    @property
    def dp(self) -> bool:
        """Whether the job trains with DP-SGD (per-example clipping and Gaussian noise)."""
        return self.dp_clip_norm > 0

    def batches_per_epoch(self, rows: int) -> int:
        return max(1, math.ceil(rows / self.batch_size))

    def steps_total(self, rows: int) -> int:
        return self.epochs * self.batches_per_epoch(rows)


@dataclass(frozen=True)
class EpochMetrics:
    """This server's shares of one epoch's mean loss and validation correct count."""

    epoch: int
    mean_loss: Ring
    correct: Ring
    validation_rows: int


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    model_id: str
    name: str
    owner: str
    architecture: Architecture
    spec: TrainingSpec
    state: JobState = JobState.QUEUED
    reason: str = ""
    created_unix_ms: int = 0
    started_unix_ms: int = 0
    finished_unix_ms: int = 0
    rows: int = 0
    batches_per_epoch: int = 0
    steps_total: int = 0
    steps_done: int = 0
    samples_per_s: float = 0.0
    metrics: tuple[EpochMetrics, ...] = ()
    sources: tuple[DataSource, ...] = ()  # whose data it trains on, with their release
    dp_noise_multiplier: float = 0.0  # the noise multiplier DP-SGD runs with (given or calibrated)
    dp_epsilon: float = 0.0  # DP-SGD: epsilon spent at the spec's delta after steps_done steps

    @property
    def samples_done(self) -> int:
        """Training rows processed so far (the last batch of an epoch may be short)."""
        if not self.batches_per_epoch:
            return 0
        epochs, batches = divmod(self.steps_done, self.batches_per_epoch)
        return epochs * self.rows + min(self.rows, batches * self.spec.batch_size)

    def evolve(self, **changes: object) -> JobInfo:
        return replace(self, **changes)  # type: ignore[arg-type]

    def public(self) -> JobInfo:
        """What a caller other than the owner may see: no metric shares."""
        return replace(self, metrics=())


@dataclass(frozen=True)
class JobEvent:
    index: int
    job_id: str
    state: JobState
    epoch: int = 0
    batch: int = 0
    steps_done: int = 0
    steps_total: int = 0
    samples_done: int = 0
    samples_per_s: float = 0.0
    metrics: EpochMetrics | None = None
    reason: str = ""
    dp_epsilon: float = 0.0  # DP-SGD: epsilon spent after steps_done steps

    def public(self) -> JobEvent:
        return replace(self, metrics=None)
