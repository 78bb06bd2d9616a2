"""Tests for ppml.servers.api.auth: auth files and the bearer-token interceptor on a real server."""

from __future__ import annotations

import stat
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ppml.client.errors import AuthenticationFailed, PermissionDenied, from_rpc_error
from ppml.proto.deploy.tokens import (
    ROLES,
    Identity,
    load_auth_file,
    new_token,
    token_hash,
    write_auth_file,
    write_secret,
)
from ppml.proto.errors import ERROR_CODE_KEY
from ppml.servers.api.auth import TokenAuthInterceptor, _wrap, current_identity, required_roles
from ppml.v1 import (
    coordinator_pb2_grpc,
    datasets_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    status_pb2,
    status_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

# ---------------------------------------------------------------- auth files


def test_new_tokens_are_long_and_distinct() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(len(t) >= 43 for t in tokens)  # 32 bytes, url-safe base64


def test_auth_file_round_trip(tmp_path: Path) -> None:
    client, monitor, peer = new_token(), new_token(), new_token()
    path = tmp_path / "auth" / "server-0.toml"
    write_auth_file(
        path,
        [("hospital-a", "client", client), ("dash", "monitor", monitor), ("peer", "peer", peer)],
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    for token in (client, monitor, peer):
        assert token not in text
    table = load_auth_file(path)
    assert table == {
        token_hash(client): Identity("hospital-a", "client"),
        token_hash(monitor): Identity("dash", "monitor"),
        token_hash(peer): Identity("peer", "peer"),
    }


def test_rewriting_an_auth_file_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    write_auth_file(path, [("a", "client", "t1"), ("b", "client", "t2")])
    write_auth_file(path, [("a", "client", "t3")])
    assert set(load_auth_file(path)) == {token_hash("t3")}


def test_write_secret_creates_owner_only_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "client.token"
    write_secret(path, "s3cret")
    assert path.read_text() == "s3cret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_secret_tightens_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "client.token"
    path.write_text("old")
    path.chmod(0o644)
    write_secret(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "entry",
    [
        'identity = "a"\nrole = "admin"\nsha256 = "' + "0" * 64 + '"',
        'identity = "a"\nrole = "client"\nsha256 = "abc"',
        'identity = ""\nrole = "client"\nsha256 = "' + "0" * 64 + '"',
        'role = "client"\nsha256 = "' + "0" * 64 + '"',
        'identity = "a"\nrole = "client"',
    ],
)
def test_malformed_auth_entry_is_rejected(tmp_path: Path, entry: str) -> None:
    path = tmp_path / "auth.toml"
    path.write_text(f"[[tokens]]\n{entry}\n")
    with pytest.raises(ValueError, match=r"tokens\[0\]"):
        load_auth_file(path)


@pytest.mark.parametrize(
    ("method", "roles"),
    [
        ("/grpc.health.v1.Health/Check", None),
        ("/grpc.health.v1.Health/Watch", None),
        ("/ppml.v1.Status/GetStatus", ("client", "monitor", "peer")),
        ("/ppml.v1.Coordinator/Link", ("peer",)),
        ("/ppml.v1.Coordinator/ResolveUpload", ("client",)),
        ("/ppml.v1.ModelRegistry/UploadModel", ("client",)),
        ("/ppml.v1.ModelRegistry/ListModels", ("client", "monitor")),
        ("/ppml.v1.ModelRegistry/GetModel", ("client", "monitor")),
        ("/ppml.v1.ModelRegistry/DeleteModel", ("client",)),
        ("/ppml.v1.Inference/Predict", ("client",)),
        ("/ppml.v1.Federation/ListFederations", ("client", "monitor")),
        ("/ppml.v1.Federation/GetFederation", ("client", "monitor")),
        ("/ppml.v1.Federation/GetRound", ("client",)),
        ("/ppml.v1.Federation/SubmitUpdate", ("client",)),
        ("/something.Else/Method", ("client",)),
    ],
)
def test_required_roles(method: str, roles: tuple[str, ...] | None) -> None:
    assert required_roles(method) == roles
    if roles is not None:
        assert set(roles) <= set(ROLES)


# ---------------------------------------------------------------- interceptor on a real server


class IdentityStatus(status_pb2_grpc.StatusServicer):
    def __init__(self) -> None:
        self.seen: list[Identity | None] = []
        self._lock = threading.Lock()

    def GetStatus(
        self, request: status_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> status_pb2.ServerStatus:
        with self._lock:
            self.seen.append(current_identity())
        return status_pb2.ServerStatus(rank=1, world_size=2)


class ListOnlyRegistry(registry_pb2_grpc.ModelRegistryServicer):
    def __init__(self) -> None:
        self.seen: list[Identity | None] = []

    def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ListModelsResponse:
        self.seen.append(current_identity())
        return registry_pb2.ListModelsResponse()


class IdentityTraining(training_pb2_grpc.TrainingServicer):
    """WatchJob streams one event per step; each names the identity seen while it is built."""

    def __init__(self) -> None:
        self.barrier: threading.Barrier | None = None

    def WatchJob(
        self, request: training_pb2.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[training_pb2.JobEvent]:
        for index in range(3):
            if index == 1 and self.barrier is not None:
                self.barrier.wait(timeout=5)  # two streams are in flight at once
            identity = current_identity()
            name = f"{identity.name}/{identity.role}" if identity else "none"
            yield training_pb2.JobEvent(index=index, job_id=request.job_id, reason=name)


@dataclass
class Harness:
    channel: grpc.Channel
    status_servicer: IdentityStatus
    registry_servicer: ListOnlyRegistry
    training_servicer: IdentityTraining
    tokens: dict[str, str]

    @property
    def status(self) -> status_pb2_grpc.StatusStub:
        return status_pb2_grpc.StatusStub(self.channel)

    @property
    def registry(self) -> registry_pb2_grpc.ModelRegistryStub:
        return registry_pb2_grpc.ModelRegistryStub(self.channel)

    @property
    def training(self) -> training_pb2_grpc.TrainingStub:
        return training_pb2_grpc.TrainingStub(self.channel)

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    tokens = {"client": new_token(), "monitor": new_token(), "peer": new_token()}
    path = tmp_path_factory.mktemp("auth") / "server.toml"
    write_auth_file(
        path,
        [
            ("hospital-a", "client", tokens["client"]),
            ("dashboard", "monitor", tokens["monitor"]),
            ("server-1", "peer", tokens["peer"]),
        ],
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[TokenAuthInterceptor(load_auth_file(path))],
    )
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    status_servicer, registry_servicer = IdentityStatus(), ListOnlyRegistry()
    status_pb2_grpc.add_StatusServicer_to_server(status_servicer, server)
    registry_pb2_grpc.add_ModelRegistryServicer_to_server(registry_servicer, server)
    training_servicer = IdentityTraining()
    training_pb2_grpc.add_TrainingServicer_to_server(training_servicer, server)
    # request-streaming methods (the base servicers answer UNIMPLEMENTED once past auth)
    datasets_pb2_grpc.add_DatasetRegistryServicer_to_server(
        datasets_pb2_grpc.DatasetRegistryServicer(), server
    )
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
        coordinator_pb2_grpc.CoordinatorServicer(), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Harness(channel, status_servicer, registry_servicer, training_servicer, tokens)
    finally:
        channel.close()
        server.stop(None)


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _status_error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as excinfo:
        call()  # type: ignore[operator]
    return excinfo.value


def test_health_needs_no_token(harness: Harness) -> None:
    reply = harness.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reply = harness.health.Check(
        health_pb2.HealthCheckRequest(), metadata=_bearer("bogus"), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((), id="no-token"),
        pytest.param((("authorization", "Bearer wrong-token"),), id="wrong-token"),
        pytest.param((("authorization", "Bearer "),), id="empty-token"),
        pytest.param((("authorization", "Basic dXNlcjpwYXNz"),), id="wrong-scheme"),
    ],
)
def test_status_without_a_valid_token_is_unauthenticated(
    harness: Harness, metadata: tuple[tuple[str, str], ...]
) -> None:
    before = len(harness.status_servicer.seen)
    error = _status_error(
        lambda: harness.status.GetStatus(
            status_pb2.GetStatusRequest(), metadata=metadata, timeout=5
        )
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert dict(error.trailing_metadata() or ())[ERROR_CODE_KEY] == "UNAUTHENTICATED"
    assert isinstance(from_rpc_error(error, "s0"), AuthenticationFailed)
    assert len(harness.status_servicer.seen) == before  # the handler never ran


def test_registry_without_a_token_is_unauthenticated(harness: Harness) -> None:
    error = _status_error(
        lambda: harness.registry.ListModels(registry_pb2.ListModelsRequest(), timeout=5)
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("role", "identity"),
    [("client", "hospital-a"), ("monitor", "dashboard"), ("peer", "server-1")],
)
def test_every_role_may_read_status_as_itself(harness: Harness, role: str, identity: str) -> None:
    reply = harness.status.GetStatus(
        status_pb2.GetStatusRequest(), metadata=_bearer(harness.tokens[role]), timeout=5
    )
    assert reply.rank == 1 and reply.world_size == 2
    assert harness.status_servicer.seen[-1] == Identity(identity, role)


@pytest.mark.parametrize("role", ["peer"])
def test_non_client_roles_may_not_use_the_registry(harness: Harness, role: str) -> None:
    before = len(harness.registry_servicer.seen)
    error = _status_error(
        lambda: harness.registry.ListModels(
            registry_pb2.ListModelsRequest(), metadata=_bearer(harness.tokens[role]), timeout=5
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert dict(error.trailing_metadata() or ())[ERROR_CODE_KEY] == "PERMISSION_DENIED"
    assert isinstance(from_rpc_error(error, "s0"), PermissionDenied)
    for token in harness.tokens.values():
        assert token not in (error.details() or "")
    assert len(harness.registry_servicer.seen) == before


def test_client_may_use_the_registry(harness: Harness) -> None:
    reply = harness.registry.ListModels(
        registry_pb2.ListModelsRequest(), metadata=_bearer(harness.tokens["client"]), timeout=5
    )
    assert list(reply.models) == []
    assert harness.registry_servicer.seen[-1] == Identity("hospital-a", "client")


def test_identity_does_not_leak_between_calls(harness: Harness) -> None:
    for role in ["client", "monitor", "client", "peer"]:
        harness.status.GetStatus(
            status_pb2.GetStatusRequest(), metadata=_bearer(harness.tokens[role]), timeout=5
        )
    assert [i.role for i in harness.status_servicer.seen[-4:] if i] == [
        "client",
        "monitor",
        "client",
        "peer",
    ]
    assert current_identity() is None  # nothing set outside a handler


def test_monitor_reads_registry_metadata_but_cannot_change_it(harness: Harness) -> None:
    token = _bearer(harness.tokens["monitor"])
    harness.registry.ListModels(registry_pb2.ListModelsRequest(), metadata=token, timeout=5)
    error = _status_error(
        lambda: harness.registry.DeleteModel(
            registry_pb2.DeleteModelRequest(model_id="m"), metadata=token, timeout=5
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


# ---------------------------------------------------------------- server-streaming handlers


def test_streaming_handler_sees_the_identity_while_the_stream_is_iterated(
    harness: Harness,
) -> None:
    stream = harness.training.WatchJob(
        training_pb2.WatchJobRequest(job_id="job-1"),
        metadata=_bearer(harness.tokens["client"]),
        timeout=5,
    )
    events = list(stream)
    assert [e.index for e in events] == [0, 1, 2]
    assert [e.reason for e in events] == ["hospital-a/client"] * 3


def test_concurrent_streams_each_see_their_own_identity(harness: Harness) -> None:
    harness.training_servicer.barrier = threading.Barrier(2)
    results: dict[str, list[str]] = {}

    def watch(role: str) -> None:
        stream = harness.training.WatchJob(
            training_pb2.WatchJobRequest(job_id=role),
            metadata=_bearer(harness.tokens[role]),
            timeout=10,
        )
        results[role] = [e.reason for e in stream]

    try:
        threads = [threading.Thread(target=watch, args=(r,)) for r in ("client", "monitor")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
    finally:
        harness.training_servicer.barrier = None
    assert results == {
        "client": ["hospital-a/client"] * 3,
        "monitor": ["dashboard/monitor"] * 3,
    }


def test_streaming_handler_needs_a_token(harness: Harness) -> None:
    stream = harness.training.WatchJob(training_pb2.WatchJobRequest(job_id="j"), timeout=5)
    error = _status_error(lambda: list(stream))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


REQUEST_STREAMS = [
    ("/ppml.v1.DatasetRegistry/UploadDataset", "stream_unary"),
    ("/ppml.v1.Coordinator/Link", "stream_stream"),
]


def _call_stream(
    harness: Harness, path: str, kind: str, messages: int, token: str
) -> grpc.RpcError:
    call = getattr(harness.channel, kind)(path)
    metadata = _bearer(harness.tokens[token]) if token else ()
    with pytest.raises(grpc.RpcError) as excinfo:
        reply = call(iter([b""] * messages), metadata=metadata, timeout=5)
        if kind == "stream_stream":
            list(reply)
    error: grpc.RpcError = excinfo.value
    return error


@pytest.mark.parametrize("messages", [0, 1, 3])
@pytest.mark.parametrize(("path", "kind"), REQUEST_STREAMS)
def test_request_streams_without_a_token_are_unauthenticated(
    harness: Harness, path: str, kind: str, messages: int
) -> None:
    # refused by a unary handler, an empty request stream got UNIMPLEMENTED (found by fuzzing)
    error = _call_stream(harness, path, kind, messages, token="")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()


@pytest.mark.parametrize("messages", [0, 3])
def test_a_client_may_not_open_a_control_link(harness: Harness, messages: int) -> None:
    error = _call_stream(harness, "/ppml.v1.Coordinator/Link", "stream_stream", messages, "client")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()


def test_wrap_binds_the_identity_around_a_lazy_generator() -> None:
    seen: list[Identity | None] = []

    def handler(request: object, context: object) -> Iterator[int]:
        for i in range(3):
            seen.append(current_identity())
            yield i

    identity = Identity("hospital-a", "client")
    wrapped = _wrap(grpc.unary_stream_rpc_method_handler(handler), identity)
    stream = wrapped.unary_stream(None, None)
    assert seen == []  # nothing ran yet: the body runs as the stream is iterated
    assert current_identity() is None
    assert list(stream) == [0, 1, 2]
    assert seen == [identity] * 3
    assert current_identity() is None  # unbound again once the stream ended


def test_wrap_binds_the_identity_for_unary_handlers() -> None:
    def handler(request: object, context: object) -> Identity | None:
        return current_identity()

    identity = Identity("dashboard", "monitor")
    wrapped = _wrap(grpc.unary_unary_rpc_method_handler(handler), identity)
    assert wrapped.unary_unary(None, None) == identity
    assert current_identity() is None
