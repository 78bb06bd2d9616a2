"""The ``evaluate`` kind: a model's accuracy on a shared data set, in MPC.

The caller sends the same request id to every server; each validates it,
holds it, and announces it to the leader, which runs it (long-work queue,
before training steps) as one MPC job once every server holds it. Each
server returns only its share of the number of correct predictions; the
caller adds the shares up. On a cluster with ``engine = "replicated"`` (three
servers, no dealer) the job runs on that engine
(:mod:`ppml.servers.mpc.rep3.service.evaluation`), returning the same shares.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from ppml.proto.domain import commands as cmd
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.ids import check_id, fingerprint
from ppml.proto.shares import Ring
from ppml.servers.control.holds import Hold, scoped_id
from ppml.servers.control.job_queue import Policy, Step
from ppml.servers.kinds.base import JobKind, JobStats, KindEnv
from ppml.servers.mpc.rep3.service import evaluation as rep3_evaluation
from ppml.servers.mpc.training.trainer import evaluate
from ppml.servers.store.models import LoadedModel
from ppml.training.losses import LossMismatch, accuracy_kind

KIND = "evaluate"


@dataclass(frozen=True)
class EvaluateJob:
    request_id: str


@dataclass(frozen=True)
class EvaluationOutcome:
    correct: Ring  # this server's share, shape ()
    rows: int
    job_seq: int


@dataclass(frozen=True)
class EvaluationInput:
    model: LoadedModel
    dataset_id: str
    accuracy: str  # "argmax" | "sign"
    rows: int


class EvaluationService:
    """The gRPC side of an evaluation on this server."""

    def __init__(self, env: KindEnv) -> None:
        self._env = env
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()  # (model, data set) -> evaluations

    def _count(self, model_id: str, dataset_id: str) -> None:
        """Each model may be scored on each data set a bounded number of times."""
        cap = self._env.config.limits.max_evaluations
        with self._lock:
            if self._counts[(model_id, dataset_id)] >= cap:
                raise PpmlError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"model {model_id!r} was already evaluated {cap} times on dataset "
                    f"{dataset_id!r} (the limit: each count reveals a little about the rows)",
                )
            self._counts[(model_id, dataset_id)] += 1

    def evaluate(
        self,
        request_id: str,
        model_id: str,
        dataset_id: str,
        caller: str,
        time_remaining: float | None,
    ) -> EvaluationOutcome:
        check_id(request_id, "request_id")
        held_as = scoped_id(KIND, caller, request_id)
        model = self._env.models.usable(model_id, caller)
        data = self._env.datasets.usable(dataset_id, caller)
        trained_on = {source.dataset_id for source in model.meta.trained_on}
        withheld = model.meta.withheld_by(caller)
        if dataset_id not in trained_on and withheld:
            raise PpmlError(
                ErrorCode.PERMISSION_DENIED,
                f"model {model_id!r} was trained on data of {', '.join(withheld)}, who have not "
                f"released it to {caller!r}: it may only be evaluated on its own training data",
            )
        architecture = model.meta.architecture
        if data.features != _count(architecture.input_shape):
            raise PpmlError(
                ErrorCode.INVALID_ARGUMENT,
                f"model {model_id!r} takes inputs of shape {list(architecture.input_shape)}; "
                f"dataset {dataset_id!r} has {data.features} features per row",
            )
        try:
            accuracy = accuracy_kind(architecture.output_shape, data.num_classes)
        except LossMismatch as exc:
            raise PpmlError(ErrorCode.INVALID_ARGUMENT, str(exc)) from None
        if not self._env.is_serving():
            raise PpmlError(ErrorCode.NOT_READY, "this server's MPC session is not up; retry")
        self._count(model_id, dataset_id)
        value = EvaluationInput(model, dataset_id, accuracy, data.rows)
        hold = Hold(held_as, KIND, value, ErrorCode.EVALUATION_ABORTED)
        self._env.holds.add(hold)
        remaining = self._env.config.serving.wait_s(time_remaining)
        group = fingerprint(
            model.meta.architecture, data.rows, data.feature_shape, data.num_classes
        )  # the servers must hold the same model and the same data set shapes
        announce = cmd.Announce(KIND, held_as, group, 1, max(0.5, remaining - 1.0))
        if not self._env.submit(announce):
            self._env.holds.fail([held_as], "the leader could not be reached")
            raise PpmlError(ErrorCode.NOT_READY, "the leader could not be reached; retry shortly")
        try:
            outcome: EvaluationOutcome = hold.future.result(timeout=remaining + 0.5)
            return outcome
        except FutureTimeout:
            self._env.holds.fail([held_as], "deadline exceeded")
            raise PpmlError(
                ErrorCode.DEADLINE_EXCEEDED, f"evaluation {request_id!r} got no result in time"
            ) from None


class EvaluateKind(JobKind):
    name = KIND
    job_type = EvaluateJob
    long_work = Policy(priority=0)  # short: before training steps

    def step_job(self, step: Step) -> EvaluateJob:
        return EvaluateJob(step.job_id)

    def take(self, job: EvaluateJob) -> Hold | None:
        return self.env.holds.take([job.request_id])[0]

    def run(self, seq: int, job: EvaluateJob, taken: Hold | None) -> JobStats:
        if taken is None:
            raise RuntimeError(f"evaluation {job.request_id} is not held here")
        value: EvaluationInput = taken.value
        features, labels = self.env.datasets.shares(value.dataset_id)
        architecture = value.model.meta.architecture
        if self.env.replicated is not None:  # three servers, no dealer
            correct = rep3_evaluation.evaluate(
                self.env.replicated, value.model, features, labels, value.accuracy
            )
        else:
            correct = evaluate(
                self.env.model_cache.get(value.model),
                features,
                labels,
                value.accuracy,
                architecture.input_shape,
            )
        if not taken.future.done():
            taken.future.set_result(EvaluationOutcome(correct, value.rows, seq))
        return JobStats(value.model.meta.model_id, 1)

    def abort(self, job: EvaluateJob, taken: Hold | None, reason: str) -> None:
        if taken is not None:
            taken.fail(reason)

    def ended(self, job_id: str, state: str, reason: str) -> None:
        self.env.holds.fail([job_id], reason)


def _count(shape: tuple[int, ...]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total
