"""The SDK's prediction path: requests built and checked once, one blocking call per server.

``ClusterBase._call_each`` runs each server's call at once and raises the first
failure at once; ``Cluster.predict`` is checked end to end against two
in-process servers that echo the input share they receive.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest

from ppml.client import Cluster
from ppml.client.errors import InvalidName, PermissionDenied
from ppml.client.transport import ClusterBase, Endpoint
from ppml.proto.domain.architecture import Architecture, Linear, ModelMeta
from ppml.proto.wire import serde
from ppml.v1 import inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc

WAIT_S = 30  # a deadline for what must happen at once, never reached when it does


class Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


@pytest.fixture
def cluster() -> Iterator[ClusterBase]:
    """Three servers nobody listens on: channels connect lazily, and no call here uses them."""
    endpoints = [Endpoint(f"server-{r}", "127.0.0.1:9") for r in range(3)]
    base = ClusterBase(endpoints, "token", ca_cert=None, insecure=True)
    yield base
    base.close()


def test_results_come_in_rank_order_whatever_order_the_calls_end_in(
    cluster: ClusterBase,
) -> None:
    first_may_end = threading.Event()
    ended: list[int] = []

    def call(rank: int) -> str:
        if rank == 0:
            assert first_may_end.wait(WAIT_S)
        ended.append(rank)
        if len(ended) == 2:
            first_may_end.set()  # the others ended first
        return f"reply {rank}"

    replies = cluster._call_each([lambda r=r: call(r) for r in range(3)])
    assert replies == ["reply 0", "reply 1", "reply 2"]
    assert ended[-1] == 0


def test_the_calls_run_at_once(cluster: ClusterBase) -> None:
    """Each server's call blocks until every server holds its share (as Predict does)."""
    everyone = threading.Barrier(3, timeout=WAIT_S)
    arrivals = cluster._call_each([everyone.wait] * 3)  # one at a time would break the barrier
    assert sorted(arrivals) == [0, 1, 2]


def test_a_failure_is_raised_at_once_as_the_sdks_error(cluster: ClusterBase) -> None:
    release = threading.Event()
    returned: list[str] = []

    def stuck() -> str:
        release.wait(WAIT_S)
        returned.append("late")
        return "late"

    def refuse() -> str:
        raise Failed(grpc.StatusCode.PERMISSION_DENIED, "not yours")

    try:
        with pytest.raises(PermissionDenied, match="not yours") as caught:
            cluster._call_each([stuck, refuse, stuck])
        assert returned == []  # raised while the other servers' calls were still waiting
        assert caught.value.server == "server-1"
    finally:
        release.set()


def test_an_error_that_is_not_a_grpc_answer_is_not_hidden(cluster: ClusterBase) -> None:
    def broken() -> str:
        raise TypeError("bad request object")

    with pytest.raises(TypeError, match="bad request object"):
        cluster._call_each([lambda: "fine", broken, lambda: "fine"])


# ---------------------------------------------------------------- Cluster.predict end to end

WIDTH = 5


class EchoingInference(inference_pb2_grpc.InferenceServicer):
    """Answers each request with the input share it got, so the SDK reconstructs its input."""

    def __init__(self) -> None:
        self.received: list[inference_pb2.PredictRequest] = []

    def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictResponse:
        self.received.append(request)
        share = serde.share_from_proto(request.input)
        return inference_pb2.PredictResponse(
            request_id=request.request_id, output=serde.share_to_proto(share), batch_requests=1
        )


class SquareModel(registry_pb2_grpc.ModelRegistryServicer):
    def GetModel(
        self, request: registry_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ModelInfo:
        architecture = Architecture((Linear(WIDTH, WIDTH, True),), (WIDTH,), (WIDTH,))
        return serde.model_meta_to_proto(ModelMeta(request.model_id, "", "owner", architecture, 0))


@pytest.fixture
def echo() -> Iterator[tuple[Cluster, list[EchoingInference]]]:
    servicers = [EchoingInference(), EchoingInference()]
    servers, endpoints = [], []
    for rank, servicer in enumerate(servicers):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        inference_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
        registry_pb2_grpc.add_ModelRegistryServicer_to_server(SquareModel(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        endpoints.append(Endpoint(f"s{rank}", f"127.0.0.1:{port}"))
    cluster = Cluster(endpoints, token="t", ca_cert=None, insecure=True)
    yield cluster, servicers
    cluster.close()
    for server in servers:
        server.stop(None)


def test_each_server_gets_its_share_under_one_request_id(
    echo: tuple[Cluster, list[EchoingInference]],
) -> None:
    cluster, servicers = echo
    x = np.array([[0.5, -1.25, 3.0, 1000.0, -7e4], [0.0, 1e-3, -2.5, 2.0, 9.0]])
    prediction = cluster.predict_detailed("m1", x, request_id="r-1")
    np.testing.assert_allclose(prediction.output.numpy(), x, atol=2**-16)
    (first,), (second,) = (s.received for s in servicers)
    assert (first.request_id, first.model_id) == (second.request_id, second.model_id)
    assert (first.request_id, first.model_id) == ("r-1", "m1")
    assert first.input.data != second.input.data  # each server its own share
    assert list(first.input.shape) == list(second.input.shape) == [2, WIDTH]


def test_a_request_id_no_server_accepts_is_refused_before_sending(
    echo: tuple[Cluster, list[EchoingInference]],
) -> None:
    cluster, servicers = echo
    with pytest.raises(InvalidName, match="request_id"):
        cluster.predict_detailed("m1", np.zeros((1, WIDTH)), request_id="r\x07")
    assert [s.received for s in servicers] == [[], []]
