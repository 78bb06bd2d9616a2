"""Encrypted evaluation on one server: a model's accuracy on a shared data set.

The caller sends the same request id to every server; each validates it,
holds it, and announces it to the leader, which runs it as one MPC job when
every server holds it. Each server returns only its share of the number of
correct predictions; the caller adds the shares up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from ppml.proto.domain import commands as cmd
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.serde import check_id
from ppml.proto.shares import Ring
from ppml.servers.store.datasets import DatasetRegistry
from ppml.servers.store.models import LoadedModel, ModelRegistry
from ppml.training.losses import LossMismatch, accuracy_kind

Announcer = Callable[[cmd.PartyMessage], bool]


@dataclass(frozen=True)
class EvaluationOutcome:
    correct: Ring  # this server's share, shape ()
    rows: int
    job_seq: int


@dataclass
class PendingEvaluation:
    request_id: str
    model: LoadedModel
    dataset_id: str
    kind: str  # "argmax" | "sign"
    rows: int
    future: Future[EvaluationOutcome] = field(default_factory=Future)


class EvaluationService:
    def __init__(
        self,
        models: ModelRegistry,
        datasets: DatasetRegistry,
        announcer: Announcer,
        is_serving: Callable[[], bool],
        default_timeout_s: float,
    ) -> None:
        self._models = models
        self._datasets = datasets
        self._announce = announcer
        self._is_serving = is_serving
        self._default_timeout_s = default_timeout_s
        self._lock = threading.Lock()
        self._pending: dict[str, PendingEvaluation] = {}

    def evaluate(
        self,
        request_id: str,
        model_id: str,
        dataset_id: str,
        caller: str,
        time_remaining: float | None,
    ) -> EvaluationOutcome:
        check_id(request_id, "request_id")
        model = self._models.get(model_id)
        data = self._datasets.usable(dataset_id, caller)
        architecture = model.meta.architecture
        if data.features != _count(architecture.input_shape):
            raise PpmlError(
                ErrorCode.INVALID_ARGUMENT,
                f"model {model_id!r} takes inputs of shape {list(architecture.input_shape)}; "
                f"dataset {dataset_id!r} has {data.features} features per row",
            )
        try:
            kind = accuracy_kind(architecture.output_shape, data.num_classes)
        except LossMismatch as exc:
            raise PpmlError(ErrorCode.INVALID_ARGUMENT, str(exc)) from None
        if not self._is_serving():
            raise PpmlError(ErrorCode.NOT_READY, "this server's MPC session is not up; retry")
        pending = PendingEvaluation(request_id, model, dataset_id, kind, data.rows)
        with self._lock:
            if request_id in self._pending:
                raise PpmlError(ErrorCode.DUPLICATE_REQUEST, f"request id {request_id!r} in use")
            self._pending[request_id] = pending
        remaining = time_remaining or self._default_timeout_s
        announce = cmd.JobAnnounce(request_id, "evaluate", 1, max(0.5, remaining - 1.0))
        if not self._announce(announce):
            self.end(request_id, "the leader could not be reached")
            raise PpmlError(ErrorCode.NOT_READY, "the leader could not be reached; retry shortly")
        try:
            return pending.future.result(timeout=remaining + 0.5)
        except FutureTimeout:
            self.end(request_id, "deadline exceeded")
            raise PpmlError(
                ErrorCode.DEADLINE_EXCEEDED, f"evaluation {request_id!r} got no result in time"
            ) from None

    # ------------------------------------------------------------ worker calls

    def take(self, request_id: str) -> PendingEvaluation | None:
        with self._lock:
            return self._pending.pop(request_id, None)

    def shares(self, pending: PendingEvaluation) -> tuple[Ring, Ring]:
        return self._datasets.shares(pending.dataset_id)

    def end(self, request_id: str, reason: str) -> None:
        """Fail a held request (the leader ended it, or it timed out here)."""
        pending = self.take(request_id)
        if pending is not None and not pending.future.done():
            pending.future.set_exception(PpmlError(ErrorCode.EVALUATION_ABORTED, reason))

    def fail_all(self, reason: str) -> None:
        with self._lock:
            ids = list(self._pending)
        for request_id in ids:
            self.end(request_id, reason)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)


def _count(shape: tuple[int, ...]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


__all__ = ["EvaluationOutcome", "EvaluationService", "PendingEvaluation", "time"]
