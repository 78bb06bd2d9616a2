"""Tests for ppml.servers.store.metrics (counters behind the Status RPC and /metrics)."""

from __future__ import annotations

import pytest
from fakes import make_env

from ppml.proto.errors import PpmlError
from ppml.proto.shares import random_ring
from ppml.servers.kinds.predict import InferenceService
from ppml.servers.store.metrics import UNKNOWN_MODEL, ServerMetrics


def test_per_model_errors_and_successes() -> None:
    metrics = ServerMetrics()
    for _ in range(3):
        metrics.record_request("a", 0.010, "OK")
    metrics.record_request("a", 0.001, "INVALID_ARGUMENT")
    metrics.record_request("a", 0.001, "INVALID_ARGUMENT")
    metrics.record_request("b", 0.001, "ABORTED")
    snap = metrics.snapshot()
    models = {m.model_id: m for m in snap.models}
    assert models["a"].requests == 5
    assert models["a"].errors == {"INVALID_ARGUMENT": 2}
    assert models["a"].ok == 3
    assert models["a"].latency.count == 3  # successes only
    assert models["a"].latency.p50_ms == pytest.approx(10.0)
    assert models["b"].errors == {"ABORTED": 1} and models["b"].ok == 0
    assert snap.errors == {"INVALID_ARGUMENT": 2, "ABORTED": 1}
    assert snap.requests_total == 6


def test_snapshot_is_a_copy() -> None:
    metrics = ServerMetrics()
    metrics.record_request("a", 0.001, "ABORTED")
    before = metrics.snapshot()
    metrics.record_request("a", 0.001, "ABORTED")
    assert before.models[0].errors == {"ABORTED": 1}


@pytest.mark.parametrize("model_id", ["no-such-model", "../etc", "x" * 500])
def test_requests_for_unknown_models_share_one_label(model_id: str) -> None:
    metrics = ServerMetrics()
    service = InferenceService(make_env(metrics=metrics))
    with pytest.raises(PpmlError):
        service.predict("r1", model_id, random_ring((1, 4)), 5.0, "alice")
    (serving,) = metrics.snapshot().models
    assert serving.model_id == UNKNOWN_MODEL
    assert serving.requests == 1 and serving.ok == 0
