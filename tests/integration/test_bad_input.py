"""Bad input gets the right status and a clear message; the server keeps serving."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from ppml.client import (
    AuthenticationFailed,
    Cluster,
    DeadlineExceeded,
    InputShapeMismatch,
    ModelNotFound,
    PredictionAborted,
)
from ppml.client.deploy.local import LocalCluster
from ppml.proto import shares
from ppml.proto.deploy.channels import client_channel
from ppml.proto.wire import serde
from ppml.v1 import common_pb2, inference_pb2, inference_pb2_grpc


@pytest.fixture(scope="module")
def model_id(cluster2: Cluster, mlp: torch.nn.Module) -> str:
    return cluster2.share_model(mlp, torch.zeros(1, 64), name="target")


@pytest.fixture(scope="module")
def stubs(local2: LocalCluster) -> Iterator[list[inference_pb2_grpc.InferenceStub]]:
    config = local2.config
    channels = [client_channel(p.grpc_address, config.ca_cert) for p in config.parties]
    yield [inference_pb2_grpc.InferenceStub(c) for c in channels]
    for channel in channels:
        channel.close()


@pytest.fixture(scope="module")
def metadata(local2: LocalCluster) -> tuple[tuple[str, str], ...]:
    token = (local2.directory / "secrets" / "client.token").read_text().strip()
    return (("authorization", f"Bearer {token}"),)


def _raw(
    stub: inference_pb2_grpc.InferenceStub,
    metadata: Any,
    model_id: str,
    tensor: common_pb2.ShareTensor,
    request_id: str | None = None,
    timeout: float = 10,
) -> grpc.RpcError:
    request = inference_pb2.PredictRequest(
        request_id=request_id or uuid.uuid4().hex, model_id=model_id, input=tensor
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=timeout, metadata=metadata)
    error: grpc.RpcError = info.value
    return error


def _still_serving(cluster: Cluster, model_id: str, mlp: torch.nn.Module) -> None:
    x = torch.linspace(-0.5, 0.5, 64).reshape(1, 64)
    with torch.no_grad():
        assert (cluster.predict(model_id, x) - mlp(x)).abs().max().item() < 1e-2


def _good_share() -> common_pb2.ShareTensor:
    return serde.share_to_proto(shares.random_ring((1, 64)))


def test_wrong_shape(
    stubs: Any, metadata: Any, cluster2: Cluster, model_id: str, mlp: torch.nn.Module
) -> None:
    # the SDK refuses before sending, naming both shapes
    expected = r"rows of shape \(63,\).*expects rows of shape \(64,\)"
    with pytest.raises(InputShapeMismatch, match=expected):
        cluster2.predict(model_id, torch.zeros(1, 63))
    # a client that sends anyway gets the server's own check
    error = _raw(stubs[0], metadata, model_id, serde.share_to_proto(shares.random_ring((1, 63))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expects (rows, 64)" in (error.details() or "")
    _still_serving(cluster2, model_id, mlp)


def test_wrong_dtype(stubs: Any, metadata: Any, cluster2: Cluster, model_id: str, mlp: Any) -> None:
    tensor = _good_share()
    tensor.dtype = common_pb2.DTYPE_UNSPECIFIED
    error = _raw(stubs[0], metadata, model_id, tensor)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "DTYPE_RING64" in (error.details() or "")
    _still_serving(cluster2, model_id, mlp)


def test_garbage_bytes(
    stubs: Any, metadata: Any, cluster2: Cluster, model_id: str, mlp: Any
) -> None:
    tensor = common_pb2.ShareTensor(
        shape=[1, 64], dtype=common_pb2.DTYPE_RING64, data=b"\x01garbage", fractional_bits=16
    )
    error = _raw(stubs[1], metadata, model_id, tensor)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 512 bytes" in (error.details() or "")
    _still_serving(cluster2, model_id, mlp)


def test_unknown_model(cluster2: Cluster, model_id: str, mlp: torch.nn.Module) -> None:
    with pytest.raises(ModelNotFound, match="no-such-model"):
        cluster2.predict("no-such-model", torch.zeros(1, 64))
    _still_serving(cluster2, model_id, mlp)


def test_share_sent_to_only_some_servers(
    stubs: Any, metadata: Any, cluster2: Cluster, model_id: str, mlp: Any
) -> None:
    error = _raw(stubs[0], metadata, model_id, _good_share(), timeout=3)
    assert error.code() == grpc.StatusCode.ABORTED
    assert "server-1 had not reported holding its share" in (error.details() or "")
    _still_serving(cluster2, model_id, mlp)


def test_duplicate_request_id(
    stubs: Any, metadata: Any, cluster2: Cluster, model_id: str, mlp: Any
) -> None:
    request_id = uuid.uuid4().hex
    first = _raw(stubs[1], metadata, model_id, _good_share(), request_id=request_id, timeout=2)
    assert first.code() == grpc.StatusCode.ABORTED  # server-0 never got its share
    again = _raw(stubs[1], metadata, model_id, _good_share(), request_id=request_id)
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "already used" in (again.details() or "")
    _still_serving(cluster2, model_id, mlp)


def test_nan_input_is_rejected_before_sending(cluster2: Cluster, model_id: str) -> None:
    with pytest.raises(ValueError, match="NaN"):
        cluster2.predict(model_id, torch.tensor([[float("nan")] * 64]))


def test_unknown_token(local2: LocalCluster, model_id: str) -> None:
    with (
        Cluster.from_config(local2.config_path, token="not-a-token") as intruder,
        pytest.raises(AuthenticationFailed),
    ):
        intruder.predict(model_id, torch.zeros(1, 64))


def test_impossible_deadline(cluster2: Cluster, model_id: str, mlp: torch.nn.Module) -> None:
    with pytest.raises((DeadlineExceeded, PredictionAborted)):
        cluster2.predict(model_id, np.zeros((1, 64)), timeout=0.001)
    _still_serving(cluster2, model_id, mlp)


def test_evaluating_on_rows_of_another_width_is_refused_before_any_mpc(
    cluster2: Cluster, model_id: str, mlp: torch.nn.Module
) -> None:
    dataset_id = cluster2.share_dataset(np.eye(4), np.arange(4), name="four-wide")
    try:
        with pytest.raises(InputShapeMismatch, match=r"\(4,\).*expects rows of shape \(64,\)"):
            cluster2.evaluate(model_id, dataset_id)
    finally:
        cluster2.delete_dataset(dataset_id)
    _still_serving(cluster2, model_id, mlp)
