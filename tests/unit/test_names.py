"""The name and string rules (ppml.proto.names), on their own and at a real gRPC boundary.

Bad names (control, format and bidi characters, NUL, over-long) are refused
with INVALID_NAME wherever they are sent; error messages quote a bounded
prefix of what the client sent, so a 20 KB string still gives INVALID_ARGUMENT
with a ``ppml-error-code`` (before, the trailers outgrew gRPC's 8 KiB metadata
limit and the caller saw RESOURCE_EXHAUSTED "Stream removed").
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ppml.client.errors import InvalidName, from_rpc_error
from ppml.client.request_check import check_request, checked_channel
from ppml.proto.domain.architecture import Architecture, Linear
from ppml.proto.domain.jobs import JobInfo, TrainingSpec
from ppml.proto.errors import ERROR_CODE_KEY, MAX_DETAIL_CHARS, ErrorCode, PpmlError
from ppml.proto.ids import check_id
from ppml.proto.names import (
    MAX_IDENTITY_CHARS,
    MAX_LIST_ITEMS,
    MAX_NAME_CHARS,
    MAX_STRING_CHARS,
    QUOTE_CHARS,
    check_identities,
    check_message_strings,
    check_name,
    quote,
)
from ppml.servers.api.errors import MAX_MESSAGE_BYTES, ErrorMappingInterceptor, bounded_message
from ppml.servers.api.request_strings import RequestStringsInterceptor, checks
from ppml.servers.store.datasets import DATASET_CODEC, DatasetRegistry
from ppml.servers.store.jobs import JOB_CODEC, JobManager
from ppml.servers.store.models import ModelRegistry
from ppml.servers.store.storage import MemoryModelStore, MemoryShareStore
from ppml.v1 import (
    common_pb2,
    datasets_pb2,
    datasets_pb2_grpc,
    federation_pb2,
    registry_pb2,
    registry_pb2_grpc,
    training_pb2,
)

BAD_CHARACTERS = [
    "\x00", "\x07", "\x1b", "\n", "\r", "\t", "\x7f", "\x85", "\u200b", "\u200e", "\u202a",
    "\u202e", "\u2066", "\u2069", "\ufeff", "\u00ad", "\u2028", "\u2029", "\ue000", "\U000e0001",
]  # fmt: skip
GOOD_NAMES = [
    "", "m", "My model v2", "x" * MAX_NAME_CHARS, "ünïcødé", "模型", "🙂 emoji", "a/b", "a b",
    "名" * MAX_NAME_CHARS, "\u00a0nbsp", "tab-less, comma; quote'\"",
]  # fmt: skip
UNPRINTABLE = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}


def _code(excinfo: pytest.ExceptionInfo[PpmlError]) -> ErrorCode:
    return excinfo.value.code


# ---------------------------------------------------------------- the rules


@pytest.mark.parametrize("name", GOOD_NAMES, ids=repr)
def test_printable_names_up_to_the_limit_are_accepted(name: str) -> None:
    assert check_name(name, "name") == name


@pytest.mark.parametrize("char", BAD_CHARACTERS, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("where", ["alone", "start", "middle", "end"])
def test_control_and_format_characters_are_refused(char: str, where: str) -> None:
    name = {"alone": char, "start": char + "m", "middle": "m" + char + "m", "end": "m" + char}
    with pytest.raises(PpmlError) as excinfo:
        check_name(name[where], "model name")
    assert _code(excinfo) == ErrorCode.INVALID_NAME
    assert f"U+{ord(char):04X}" in excinfo.value.detail
    assert "model name" in excinfo.value.detail


@pytest.mark.parametrize("length", [MAX_NAME_CHARS + 1, 1000, 1 << 20])
def test_over_long_names_are_refused_with_a_bounded_message(length: int) -> None:
    with pytest.raises(PpmlError) as excinfo:
        check_name("x" * length, "name")
    assert _code(excinfo) == ErrorCode.INVALID_NAME
    assert f"at most {MAX_NAME_CHARS} characters, got {length}" in excinfo.value.detail
    assert len(excinfo.value.public_message) < 2 * QUOTE_CHARS + 100


def test_a_quote_of_escaped_characters_stays_bounded() -> None:
    """Control and astral characters repr to 4-10 characters each: the repr is cut too."""
    for text in ["\x07" * 64, "\U000e0001" * 64, "\x00" * 200]:
        shown = quote(text)
        assert len(shown) <= 2 * QUOTE_CHARS + len(f"... ({len(text)} characters)")
        assert shown.endswith(f"... ({len(text)} characters)")


@pytest.mark.parametrize("fill", ["\U000119e5", "\x1f", "\U0010fffd", "a"])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 200])
def test_the_refusal_of_an_unprintable_name_stays_under_300_characters(fill: str, n: int) -> None:
    """The longest quotes: escaped astral or control characters (found by the property test
    below at 302 characters before the message was shortened)."""
    with pytest.raises(PpmlError) as err:
        check_name("\x1f" + fill * (n - 1), "name")
    assert len(err.value.public_message) < 300


@given(st.text(max_size=MAX_NAME_CHARS))
def test_any_text_is_accepted_exactly_when_every_character_is_printable(text: str) -> None:
    printable = all(unicodedata.category(c) not in UNPRINTABLE for c in text)
    try:
        check_name(text, "name")
    except PpmlError as exc:
        assert not printable
        assert exc.code == ErrorCode.INVALID_NAME
        assert len(exc.public_message) < 300
    else:
        assert printable


@pytest.mark.parametrize(
    ("identities", "needle"),
    [
        (("",), "empty"),
        (("x" * (MAX_IDENTITY_CHARS + 1),), f"at most {MAX_IDENTITY_CHARS}"),
        (("alice", "bob\x00"), "U+0000"),
        (("\u202eecila",), "U+202E"),
        (("a",) * (MAX_LIST_ITEMS + 1), f"at most {MAX_LIST_ITEMS} identities"),
    ],
    ids=["empty", "long", "nul", "rtl-override", "too-many"],
)
def test_bad_identity_lists_are_refused(identities: tuple[str, ...], needle: str) -> None:
    with pytest.raises(PpmlError) as excinfo:
        check_identities(identities, "allowed", ErrorCode.INVALID_DATASET)
    assert _code(excinfo) == ErrorCode.INVALID_DATASET
    assert needle in excinfo.value.detail


def test_good_identity_lists_are_accepted() -> None:
    good = ("*", "alice", "Ünïcødé office", "x" * MAX_IDENTITY_CHARS)
    assert check_identities(good, "allowed") == good
    assert check_identities((), "allowed") == ()


@pytest.mark.parametrize("value", ["x" * 20_000, "\x00" * 5000, "🙂" * 10_000, "a\u202eb" * 999])
def test_ids_quote_a_bounded_prefix(value: str) -> None:
    with pytest.raises(PpmlError) as excinfo:
        check_id(value, "model_id")
    assert f"({len(value)} characters)" in excinfo.value.detail
    assert len(excinfo.value.detail) < 4 * QUOTE_CHARS + 150


def test_quote_cuts_with_an_ellipsis_and_the_length() -> None:
    assert quote("short") == "'short'"
    assert quote("x" * QUOTE_CHARS) == repr("x" * QUOTE_CHARS)
    assert quote("x" * 20_000) == f"{'x' * QUOTE_CHARS!r}... (20000 characters)"
    assert quote("\x00bell\x07") == repr("\x00bell\x07")  # escaped, never raw


# ---------------------------------------------------------------- whole messages


def test_every_string_of_a_message_is_checked_with_its_field_path() -> None:
    start = training_pb2.StartTrainingRequest(
        job_id="j",
        model_id="m",
        name="ok",
        initial_parameters=[
            common_pb2.NamedShare(name="0.weight"),
            common_pb2.NamedShare(name="\x07"),
        ],
        spec=training_pb2.TrainingSpec(dataset_ids=["d"], loss="mse", optimizer="sgd"),
    )
    with pytest.raises(PpmlError) as excinfo:
        check_message_strings(start)
    assert "initial_parameters[1].name" in excinfo.value.detail
    start.initial_parameters[1].name = "0.bias"
    check_message_strings(start)
    start.spec.optimizer = "s" * 20_000
    with pytest.raises(PpmlError, match=r"spec\.optimizer must be at most 200 characters"):
        check_message_strings(start)


@pytest.mark.parametrize(
    "request_",
    [
        registry_pb2.UploadModelRequest(model_id="m", allowed=["a", "\u202e"]),
        registry_pb2.SetModelAccessRequest(model_id="m", allowed=["ok", "x" * 201]),
        datasets_pb2.UploadDatasetChunk(header=datasets_pb2.DatasetHeader(scaling="\x00")),
        datasets_pb2.SetDatasetAccessRequest(dataset_id="d", release=["\n"]),
        federation_pb2.CreateFederationRequest(
            federation_id="f", spec=federation_pb2.FederationSpec(strategy="s" * 20_000)
        ),
        federation_pb2.CreateFederationRequest(
            federation_id="f", spec=federation_pb2.FederationSpec(participants=["a"] * 1001)
        ),
        federation_pb2.SubmitEncryptedUpdateRequest(federation_id="f\u2066"),
        training_pb2.EvaluateRequest(request_id="r", model_id="m", dataset_id="d" * 201),
    ],
    ids=lambda r: type(r).__name__,
)
def test_bad_strings_anywhere_in_a_request_are_refused(request_: object) -> None:
    with pytest.raises(PpmlError) as excinfo:
        check_message_strings(request_)  # type: ignore[arg-type]
    assert _code(excinfo) == ErrorCode.INVALID_NAME
    assert len(excinfo.value.public_message) < 400


def test_the_interceptor_checks_client_services_only() -> None:
    assert checks("/ppml.v1.Training/StartTraining")
    assert checks("/ppml.v1.Federation/CreateFederation")
    assert not checks("/ppml.v1.Coordinator/Link")  # peers' reasons may hold newlines
    assert not checks("/grpc.health.v1.Health/Check")


# ---------------------------------------------------------------- error messages


def test_details_are_cut_centrally() -> None:
    error = PpmlError(ErrorCode.INVALID_MODEL, "y" * 50_000)
    assert len(error.detail) < MAX_DETAIL_CHARS + 50
    assert "cut from 50000 characters" in error.detail


@pytest.mark.parametrize("message", ["a" * 5000, "🙂" * 5000, "é" * 5000, "ok"])
def test_status_messages_are_bounded_in_bytes(message: str) -> None:
    bounded = bounded_message(message)
    assert len(bounded.encode()) <= MAX_MESSAGE_BYTES + 20
    assert message.startswith(bounded.removesuffix("... (cut)"))


# ---------------------------------------------------------------- a real gRPC boundary

HUGE = "🙂" * 20_000  # 80 KB of UTF-8, 240 KB percent-encoded in grpc-message


class EchoingRegistry(registry_pb2_grpc.ModelRegistryServicer):
    """Echoes the model id in its errors, as a careless handler would."""

    calls = 0

    def GetModel(
        self, request: registry_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ModelInfo:
        EchoingRegistry.calls += 1
        raise PpmlError(ErrorCode.MODEL_NOT_FOUND, f"no model {request.model_id!r}")

    def UploadModel(
        self, request: registry_pb2.UploadModelRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ModelInfo:
        EchoingRegistry.calls += 1
        raise PpmlError(ErrorCode.INVALID_MODEL, f"model {request.name!r} {HUGE}")


class CountingDatasets(datasets_pb2_grpc.DatasetRegistryServicer):
    def UploadDataset(
        self,
        request_iterator: Iterator[datasets_pb2.UploadDatasetChunk],
        context: grpc.ServicerContext,
    ) -> datasets_pb2.DatasetInfo:
        return datasets_pb2.DatasetInfo(rows=sum(1 for _ in request_iterator))


@pytest.fixture(scope="module")
def channel() -> Iterator[grpc.Channel]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[ErrorMappingInterceptor(), RequestStringsInterceptor()],
    )
    registry_pb2_grpc.add_ModelRegistryServicer_to_server(EchoingRegistry(), server)
    datasets_pb2_grpc.add_DatasetRegistryServicer_to_server(CountingDatasets(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        channel.close()
        server.stop(None)


def _error(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as excinfo:
        call(request, timeout=5)  # type: ignore[operator]
    return excinfo.value


@pytest.mark.parametrize("model_id", ["x" * 20_000, HUGE, "m\x00", "\u202eledom", "x" * 201])
def test_a_bad_string_is_invalid_argument_with_a_code_before_the_handler(
    channel: grpc.Channel, model_id: str
) -> None:
    stub = registry_pb2_grpc.ModelRegistryStub(channel)
    before = EchoingRegistry.calls
    error = _error(stub.GetModel, registry_pb2.GetModelRequest(model_id=model_id))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert dict(error.trailing_metadata())[ERROR_CODE_KEY] == "INVALID_NAME"
    assert "model_id" in error.details()
    assert EchoingRegistry.calls == before  # refused before any work
    assert isinstance(from_rpc_error(error, "s0"), InvalidName)


def test_a_huge_message_from_a_handler_still_travels_with_its_code(channel: grpc.Channel) -> None:
    stub = registry_pb2_grpc.ModelRegistryStub(channel)
    error = _error(stub.UploadModel, registry_pb2.UploadModelRequest(model_id="m", name="n"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (
        error.details()
    )  # not RESOURCE_EXHAUSTED
    assert dict(error.trailing_metadata())[ERROR_CODE_KEY] == "INVALID_MODEL"
    assert error.details().startswith("invalid model: model 'n' 🙂")


def test_a_bad_header_in_a_request_stream_is_refused(channel: grpc.Channel) -> None:
    call = channel.stream_unary(
        "/ppml.v1.DatasetRegistry/UploadDataset",
        request_serializer=datasets_pb2.UploadDatasetChunk.SerializeToString,
        response_deserializer=datasets_pb2.DatasetInfo.FromString,
    )
    good = datasets_pb2.UploadDatasetChunk(header=datasets_pb2.DatasetHeader(name="fine"))
    assert call(iter([good, good]), timeout=5).rows == 2
    bad = datasets_pb2.UploadDatasetChunk(header=datasets_pb2.DatasetHeader(name="x" * 20_000))
    error = _error(call, iter([good, bad]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "header.name must be at most 200 characters" in error.details()


def test_the_sdk_refuses_a_bad_string_before_sending(channel: grpc.Channel) -> None:
    stub = registry_pb2_grpc.ModelRegistryStub(checked_channel(channel))
    before = EchoingRegistry.calls
    # refused like a server would refuse, so every SDK path maps it to InvalidName
    error = _error(stub.GetModel, registry_pb2.GetModelRequest(model_id="m\x07"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(error.trailing_metadata())[ERROR_CODE_KEY] == "INVALID_NAME"
    mapped = from_rpc_error(error, "s0")
    assert type(mapped) is InvalidName
    assert "model_id holds the unprintable character U+0007" in str(mapped)
    assert "nothing was sent" in str(mapped)
    future = stub.GetModel.future(registry_pb2.GetModelRequest(model_id="x" * 20_000), timeout=5)
    assert future.done() and isinstance(future.exception(), grpc.RpcError)
    assert f"at most {MAX_STRING_CHARS} characters" in future.exception().details()
    assert EchoingRegistry.calls == before  # nothing went out
    with pytest.raises(grpc.RpcError):  # a good string goes out as before
        stub.GetModel(registry_pb2.GetModelRequest(model_id="m"), timeout=5)
    assert EchoingRegistry.calls == before + 1


def test_check_request_raises_the_typed_error() -> None:
    check_request(registry_pb2.GetModelRequest(model_id="fine"))
    with pytest.raises(InvalidName, match=r"header\.name"):
        check_request(datasets_pb2.UploadDatasetChunk(header=datasets_pb2.DatasetHeader(name="\n")))


# ---------------------------------------------------------------- the stores, on their own


def _announce_nothing(message: object) -> bool:
    raise AssertionError("a job with a bad name was announced")


@pytest.mark.parametrize("name", ["x" * (MAX_NAME_CHARS + 1), "trained\u202e", "m\x00", "a\nb"])
def test_a_training_job_with_a_bad_result_name_is_refused_before_anything(name: str) -> None:
    # the interceptor refuses it first; the job manager does too, on its own
    store: MemoryShareStore[JobInfo] = MemoryShareStore(JOB_CODEC)
    jobs = JobManager(
        "server-1",
        store,
        DatasetRegistry(MemoryShareStore(DATASET_CODEC)),
        ModelRegistry(MemoryModelStore()),
        _announce_nothing,  # type: ignore[arg-type]
    )
    architecture = Architecture((Linear(4, 2),), (4,), (2,))
    spec = TrainingSpec(("d",), epochs=1, batch_size=4, lr=0.1)
    with pytest.raises(PpmlError) as excinfo:
        jobs.start("job-1", "model-1", name, "owner", architecture, {}, spec)
    assert _code(excinfo) == ErrorCode.INVALID_NAME
    assert store.list() == []


@pytest.mark.parametrize("name", ["x" * (MAX_NAME_CHARS + 1), "\u202e", "m\x07"])
def test_the_model_registry_refuses_bad_names_and_identities(name: str) -> None:
    registry = ModelRegistry(MemoryModelStore())
    architecture = Architecture((Linear(4, 2),), (4,), (2,))
    with pytest.raises(PpmlError) as excinfo:
        registry.upload("m", name, "owner", architecture, {})
    assert _code(excinfo) == ErrorCode.INVALID_NAME
    with pytest.raises(PpmlError) as excinfo:
        registry.upload("m", "fine", "owner", architecture, {}, allowed=(name,))
    assert _code(excinfo) == ErrorCode.INVALID_ARGUMENT  # the identity rule, the store's code
    assert registry.list() == []
