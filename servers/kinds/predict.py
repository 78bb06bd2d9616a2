"""Encrypted prediction on one server: validate, enqueue, wait for the MPC job."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout

from ppml.proto.deploy.topology import ServingConfig
from ppml.proto.domain import commands as cmd
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.serde import check_id
from ppml.proto.shares import Ring
from ppml.servers.control.holds import PendingRequest, PendingTable, PredictOutcome
from ppml.servers.store.metrics import UNKNOWN_MODEL, ServerMetrics
from ppml.servers.store.models import LoadedModel, ModelRegistry

Announcer = Callable[[int, cmd.Announce], bool]


def drop_margin(remaining_s: float) -> float:
    """How long before the caller's deadline the leader must decide to drop.

    Leaves the client time to receive a clear ABORTED instead of its own
    DEADLINE_EXCEEDED.
    """
    return min(1.0, max(0.2, 0.15 * remaining_s))


class InferenceService:
    def __init__(
        self,
        rank: int,
        registry: ModelRegistry,
        pending: PendingTable,
        announcer: Announcer,
        is_serving: Callable[[], bool],
        serving: ServingConfig,
        metrics: ServerMetrics,
    ) -> None:
        self._rank = rank
        self._registry = registry
        self._pending = pending
        self._announce = announcer
        self._is_serving = is_serving
        self._serving = serving
        self._metrics = metrics

    def predict(
        self, request_id: str, model_id: str, share: Ring, time_remaining: float | None
    ) -> PredictOutcome:
        started = time.monotonic()
        label, status = UNKNOWN_MODEL, "OK"  # metrics never keep ids a caller made up
        try:
            model = self._registry.get(model_id)
            label = model_id
            return self._predict(request_id, model_id, model, share, time_remaining)
        except PpmlError as err:
            status = err.status.name
            raise
        finally:
            self._metrics.record_request(label, time.monotonic() - started, status)

    def _predict(
        self,
        request_id: str,
        model_id: str,
        model: LoadedModel,
        share: Ring,
        time_remaining: float | None,
    ) -> PredictOutcome:
        check_id(request_id, "request_id")
        expected = model.meta.architecture.input_shape
        rows = int(share.shape[0])
        if tuple(share.shape[1:]) != expected or not rows >= 1:
            raise PpmlError(
                ErrorCode.INVALID_SHARE,
                f"input share has shape {list(share.shape)}; model {model_id!r} expects "
                f"(rows, {', '.join(map(str, expected))}) with rows >= 1",
            )
        if rows > self._serving.max_rows_per_request:
            raise PpmlError(
                ErrorCode.INVALID_ARGUMENT,
                f"{rows} rows in one request; the limit is {self._serving.max_rows_per_request}",
            )
        if not self._is_serving():
            raise PpmlError(
                ErrorCode.NOT_READY,
                "this server's MPC session is not up (waiting for its peers and the dealer); retry",
            )
        remaining = time_remaining or self._serving.default_timeout_s
        request = PendingRequest(request_id, model_id, share, model)
        self._pending.add(request)
        announce = cmd.Announce(request_id, model_id, rows, remaining - drop_margin(remaining))
        if not self._announce(self._rank, announce):
            self._pending.fail([request_id], PpmlError(ErrorCode.NOT_READY, "not ready"))
            raise PpmlError(
                ErrorCode.NOT_READY, "the cluster's MPC session is restarting; retry shortly"
            )
        try:
            return request.future.result(timeout=remaining + 0.5)
        except FutureTimeout:
            raise PpmlError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"request {request_id!r} got no result within {remaining:.1f}s",
            ) from None
