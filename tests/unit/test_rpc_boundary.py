"""The error-mapping interceptor on a real gRPC server, and the SDK's mapping back."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from ppml.client import errors as client_errors
from ppml.client.errors import (
    AuthenticationFailed,
    InvalidShare,
    ModelNotFound,
    PermissionDenied,
    PpmlClientError,
    ServerUnavailable,
    from_rpc_error,
    most_relevant,
)
from ppml.proto.errors import CATALOG, ERROR_CODE_KEY, ErrorCode, PpmlError
from ppml.servers.api.errors import ErrorMappingInterceptor
from ppml.v1 import datasets_pb2, datasets_pb2_grpc, registry_pb2, registry_pb2_grpc

SECRET_TEXT = "weights=[0.123, -4.56] at /srv/ppml/data/server-0/models/x"


class BoundaryRegistry(registry_pb2_grpc.ModelRegistryServicer):
    """GetModel's behaviour is chosen by the requested model id."""

    def GetModel(
        self, request: registry_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ModelInfo:
        model_id = request.model_id
        if model_id in ErrorCode.__members__:
            raise PpmlError(ErrorCode(model_id), f"detail about {model_id.lower()}")
        if model_id == "crash":
            raise RuntimeError(SECRET_TEXT)
        if model_id == "key-error":
            raise KeyError(SECRET_TEXT)
        if model_id == "abort-permission":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "handler said no")
        if model_id == "abort-handshake":
            context.abort(grpc.StatusCode.UNAVAILABLE, "TLS handshake failed")
        return registry_pb2.ModelInfo(model_id=model_id)


class BoundaryDatasets(datasets_pb2_grpc.DatasetRegistryServicer):
    """UploadDataset answers with the number of chunks it read."""

    def UploadDataset(
        self,
        request_iterator: Iterator[datasets_pb2.UploadDatasetChunk],
        context: grpc.ServicerContext,
    ) -> datasets_pb2.DatasetInfo:
        return datasets_pb2.DatasetInfo(rows=sum(1 for _ in request_iterator))


@pytest.fixture(scope="module")
def channel() -> Iterator[grpc.Channel]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=[ErrorMappingInterceptor()]
    )
    registry_pb2_grpc.add_ModelRegistryServicer_to_server(BoundaryRegistry(), server)
    datasets_pb2_grpc.add_DatasetRegistryServicer_to_server(BoundaryDatasets(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        channel.close()
        server.stop(None)


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> registry_pb2_grpc.ModelRegistryStub:
    return registry_pb2_grpc.ModelRegistryStub(channel)


def _fail(stub: registry_pb2_grpc.ModelRegistryStub, model_id: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as excinfo:
        stub.GetModel(registry_pb2.GetModelRequest(model_id=model_id), timeout=5)
    return excinfo.value


def _trailing_code(error: grpc.RpcError) -> str | None:
    value = dict(error.trailing_metadata() or ()).get(ERROR_CODE_KEY)
    return str(value) if value is not None else None


def test_success_passes_through(stub: registry_pb2_grpc.ModelRegistryStub) -> None:
    reply = stub.GetModel(registry_pb2.GetModelRequest(model_id="ok"), timeout=5)
    assert reply.model_id == "ok"


def test_model_not_found(stub: registry_pb2_grpc.ModelRegistryStub) -> None:
    error = _fail(stub, "MODEL_NOT_FOUND")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert _trailing_code(error) == "MODEL_NOT_FOUND"
    assert error.details() == "model not found: detail about model_not_found"
    mapped = from_rpc_error(error, "server-1")
    assert type(mapped) is ModelNotFound
    assert mapped.server == "server-1"
    assert "detail about model_not_found" in str(mapped)


EXPECTED_CLIENT_CLASS = {
    ErrorCode.INVALID_ARGUMENT: client_errors.InvalidRequest,
    ErrorCode.INVALID_NAME: client_errors.InvalidName,
    ErrorCode.INVALID_SHARE: client_errors.InvalidShare,
    ErrorCode.INVALID_MODEL: client_errors.InvalidModel,
    ErrorCode.MODEL_NOT_FOUND: client_errors.ModelNotFound,
    ErrorCode.MODEL_EXISTS: client_errors.ModelExists,
    ErrorCode.DUPLICATE_REQUEST: client_errors.DuplicateRequest,
    ErrorCode.UNAUTHENTICATED: client_errors.AuthenticationFailed,
    ErrorCode.PERMISSION_DENIED: client_errors.PermissionDenied,
    ErrorCode.NOT_READY: client_errors.ServerUnavailable,
    ErrorCode.PREDICTION_ABORTED: client_errors.PredictionAborted,
    ErrorCode.DEADLINE_EXCEEDED: client_errors.DeadlineExceeded,
    ErrorCode.RESOURCE_EXHAUSTED: client_errors.ResourceExhausted,
    ErrorCode.INVALID_DATASET: client_errors.InvalidDataset,
    ErrorCode.DATASET_NOT_FOUND: client_errors.DatasetNotFound,
    ErrorCode.DATASET_EXISTS: client_errors.DatasetExists,
    ErrorCode.INVALID_JOB: client_errors.InvalidTrainingJob,
    ErrorCode.JOB_NOT_FOUND: client_errors.JobNotFound,
    ErrorCode.JOB_EXISTS: client_errors.JobExists,
    ErrorCode.JOB_FINISHED: client_errors.JobFinished,
    ErrorCode.EVALUATION_ABORTED: client_errors.EvaluationAborted,
    ErrorCode.INVALID_FEDERATION: client_errors.InvalidFederation,
    ErrorCode.INVALID_UPDATE: client_errors.InvalidUpdate,
    ErrorCode.FEDERATION_NOT_FOUND: client_errors.FederationNotFound,
    ErrorCode.FEDERATION_EXISTS: client_errors.FederationExists,
    ErrorCode.FEDERATION_FINISHED: client_errors.FederationFinished,
    ErrorCode.ROUND_CLOSED: client_errors.RoundClosed,
    ErrorCode.ALREADY_SUBMITTED: client_errors.AlreadySubmitted,
    ErrorCode.CONTEXT_MISMATCH: client_errors.ContextMismatch,
    ErrorCode.INVALID_CONTEXT: client_errors.InvalidContext,
    ErrorCode.CONTEXT_NOT_FOUND: client_errors.ContextNotFound,
    ErrorCode.INVALID_CIPHERTEXT: client_errors.InvalidCiphertext,
    ErrorCode.BUDGET_EXHAUSTED: client_errors.BudgetExhausted,
    ErrorCode.UPLOAD_ABORTED: client_errors.UploadAborted,
    ErrorCode.INTERNAL: client_errors.PpmlClientError,
}


def test_every_code_has_an_expected_client_class() -> None:
    assert set(EXPECTED_CLIENT_CLASS) == set(ErrorCode) == set(CATALOG)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_catalogue_code_round_trips(
    stub: registry_pb2_grpc.ModelRegistryStub, code: ErrorCode
) -> None:
    error = _fail(stub, code.value)
    status, public = CATALOG[code]
    assert error.code() == status
    assert _trailing_code(error) == code.value
    assert error.details().startswith(public)
    mapped = from_rpc_error(error, "s0")
    assert type(mapped) is EXPECTED_CLIENT_CLASS[code]


@pytest.mark.parametrize("model_id", ["crash", "key-error"])
def test_unexpected_exception_is_internal_without_leaking(
    stub: registry_pb2_grpc.ModelRegistryStub, model_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="ppml.servers.api.errors"):
        error = _fail(stub, model_id)
    details = error.details()
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "incident" in details
    assert SECRET_TEXT not in details
    assert "weights" not in details and "/srv/" not in details
    assert "Error" not in details  # not even the exception type
    assert _trailing_code(error) == "INTERNAL"
    # the server logged the details, under the same incident id
    incident = details.split("incident ")[1].split(")")[0]
    records = [r for r in caplog.records if incident in r.getMessage()]
    assert records, caplog.text
    assert records[0].exc_info is not None
    assert SECRET_TEXT in str(records[0].exc_info[1])
    mapped = from_rpc_error(error, "s0")
    assert type(mapped) is PpmlClientError
    assert SECRET_TEXT not in str(mapped)


CORRUPT = {
    "truncated": b"\x0a\x05ab",  # field 1 announces 5 bytes, 2 follow
    "bad-utf8": b"\x0a\x02\xff\xfe",  # a string field that is not UTF-8
    "bad-tag": b"\xff\xff\xff",
}


@pytest.mark.parametrize("body", list(CORRUPT.values()), ids=list(CORRUPT))
def test_undecodable_request_is_invalid_argument(channel: grpc.Channel, body: bytes) -> None:
    # gRPC alone answers INTERNAL ("Exception deserializing request!") (found by fuzzing)
    call = channel.unary_unary("/ppml.v1.ModelRegistry/GetModel")
    with pytest.raises(grpc.RpcError) as excinfo:
        call(body, timeout=5)
    error = excinfo.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid message for /ppml.v1.ModelRegistry/GetModel" in error.details()
    assert _trailing_code(error) == "INVALID_ARGUMENT"


def test_undecodable_message_in_a_request_stream_is_invalid_argument(
    channel: grpc.Channel,
) -> None:
    call = channel.stream_unary("/ppml.v1.DatasetRegistry/UploadDataset")
    good = datasets_pb2.UploadDatasetChunk().SerializeToString()
    assert datasets_pb2.DatasetInfo.FromString(call(iter([good, good]), timeout=5)).rows == 2
    with pytest.raises(grpc.RpcError) as excinfo:
        call(iter([good, CORRUPT["truncated"], good]), timeout=5)
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ppml.v1.UploadDatasetChunk" in excinfo.value.details()


def test_incident_ids_differ(stub: registry_pb2_grpc.ModelRegistryStub) -> None:
    first = _fail(stub, "crash").details()
    second = _fail(stub, "crash").details()
    assert first != second


def test_handler_abort_is_not_rewritten(stub: registry_pb2_grpc.ModelRegistryStub) -> None:
    error = _fail(stub, "abort-permission")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "handler said no"
    assert isinstance(from_rpc_error(error, "s0"), PermissionDenied)


def test_handshake_failure_maps_to_authentication(
    stub: registry_pb2_grpc.ModelRegistryStub,
) -> None:
    error = _fail(stub, "abort-handshake")
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert isinstance(from_rpc_error(error, "s0"), AuthenticationFailed)


def test_unreachable_server_is_unavailable() -> None:
    channel = grpc.insecure_channel("127.0.0.1:1")
    try:
        stub = registry_pb2_grpc.ModelRegistryStub(channel)
        error = _fail(stub, "ok")
    finally:
        channel.close()
    assert isinstance(from_rpc_error(error, "s1"), ServerUnavailable)


# ---------------------------------------------------------------- most_relevant


def test_most_relevant_prefers_invalid_share_over_unavailable() -> None:
    unavailable = ServerUnavailable("UNAVAILABLE: connection refused", "server-0")
    invalid = InvalidShare("INVALID_ARGUMENT: invalid share tensor: bad bytes", "server-1")
    for errors in ([unavailable, invalid], [invalid, unavailable]):
        best = most_relevant(list(errors))
        assert type(best) is InvalidShare
        assert best.server == "server-1"
        assert "bad bytes" in str(best)
        assert "connection refused" in str(best)  # the others are mentioned


def test_most_relevant_single_error_is_returned_as_is() -> None:
    error = ModelNotFound("NOT_FOUND: model not found", "server-0")
    assert most_relevant([error]) is error


def test_most_relevant_priority() -> None:
    errors: list[PpmlClientError] = [
        PpmlClientError("unknown", "s0"),
        ServerUnavailable("down", "s1"),
        ModelNotFound("missing", "s2"),
        PermissionDenied("denied", "s3"),
    ]
    assert type(most_relevant(errors)) is PermissionDenied
    assert type(most_relevant(errors[:3])) is ModelNotFound
    assert type(most_relevant(errors[:2])) is ServerUnavailable
