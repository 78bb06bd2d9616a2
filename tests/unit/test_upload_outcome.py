"""The SDK's side of an all-or-nothing upload, alone: which outcome a caller is told."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from ppml.client.errors import DatasetExists, UploadAborted, UploadUnresolved
from ppml.client.transport import ClusterBase
from ppml.proto.errors import ERROR_CODE_KEY, ErrorCode
from ppml.v1 import coordinator_pb2


class Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, error_code: str = "") -> None:
        self._code, self._details = code, details
        self._trailers = ((ERROR_CODE_KEY, error_code),) if error_code else ()

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailers


class Done:
    """A finished call, as ``grpc.Future`` shows it."""

    def __init__(self, error: grpc.RpcError | None = None) -> None:
        self._error = error

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def exception(self) -> grpc.RpcError | None:
        return self._error


class Stub:
    def __init__(self, name: str, resolve: Callable[..., Any]) -> None:
        self.name = name
        self.coordinator = self
        self.ResolveUpload = resolve


ABORTED = coordinator_pb2.ResolveUploadResponse(committed=False, reason="the upload failed")
COMMITTED = coordinator_pb2.ResolveUploadResponse(committed=True, reason="")
UNAVAILABLE = Failed(grpc.StatusCode.UNAVAILABLE, "Socket closed")


def _upload(outcomes: list[grpc.RpcError | None], resolve: Callable[..., Any]) -> list[Any]:
    """Run ``_upload_all`` over servers answering ``outcomes``; the ResolveUpload requests."""
    asked: list[Any] = []

    def ask(request: Any, **_: Any) -> Any:
        asked.append(request)
        return resolve()

    cluster = ClusterBase.__new__(ClusterBase)
    cluster._servers = [Stub(f"server-{r}", ask) for r in range(len(outcomes))]  # type: ignore[list-item]
    cluster._metadata = ()
    cluster._upload_all(lambda _, rank: Done(outcomes[rank]), "dataset", "d1", "u1")
    return asked


def test_every_server_answering_needs_no_question() -> None:
    assert _upload([None, None], lambda: pytest.fail("asked server 0")) == []


def test_a_server_that_went_away_after_the_commit_is_a_success() -> None:
    asked = _upload([None, UNAVAILABLE], lambda: COMMITTED)
    assert [(r.kind, r.record_id, r.upload_id) for r in asked] == [("dataset", "d1", "u1")]


def test_a_server_that_went_away_before_the_commit_is_an_abort_safe_to_retry() -> None:
    aborted_here = Failed(grpc.StatusCode.ABORTED, "aborted", ErrorCode.UPLOAD_ABORTED.value)
    with pytest.raises(UploadAborted) as err:
        _upload([aborted_here, UNAVAILABLE], lambda: ABORTED)
    assert "server-1" in str(err.value) and "Socket closed" in str(err.value)
    assert "did not happen" in str(err.value) and "safe to retry" in str(err.value)


def test_a_refusal_with_a_reason_is_raised_as_it_is() -> None:
    exists = Failed(grpc.StatusCode.ALREADY_EXISTS, "taken", ErrorCode.DATASET_EXISTS.value)
    with pytest.raises(DatasetExists):
        _upload([None, exists], lambda: ABORTED)


def test_an_unreachable_leader_leaves_the_outcome_open_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("time.sleep", lambda _: None)

    def down() -> Any:
        raise Failed(grpc.StatusCode.UNAVAILABLE, "Handshake read failed")

    with pytest.raises(UploadUnresolved, match="on every server or on none"):
        _upload([UNAVAILABLE, None], down)
