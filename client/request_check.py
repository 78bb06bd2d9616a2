"""The SDK checks every string it sends, before sending, by the servers' own rules.

:class:`StringCheckInterceptor` sits on each server's channel and applies
:func:`ppml.proto.names.check_message_strings` to every unary request: an
unprintable or over-long name, id, identity or label is refused here, and
nothing goes out. The refusal looks exactly like a server's (an
:class:`grpc.RpcError` with INVALID_ARGUMENT and ``ppml-error-code:
INVALID_NAME``), so every SDK path turns it into
:class:`~ppml.client.errors.InvalidName` as it would a server's answer. (A
request stream, the data set upload, has its header checked with
:func:`check_request` where it is built, and so does ``Cluster.predict``, once
for the requests of every server, before it sends them on the unchecked
``Inference/Predict`` stub of :class:`~ppml.client.transport.ServerStubs`.) The
servers enforce the same rules on their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.message import Message

from ppml.client.errors import InvalidName
from ppml.proto.errors import ERROR_CODE_KEY, PpmlError
from ppml.proto.names import check_message_strings


def check_request(request: Any) -> None:
    """Raise :class:`InvalidName` if ``request`` holds a string no server accepts."""
    if isinstance(request, Message):
        try:
            check_message_strings(request)
        except PpmlError as exc:
            raise InvalidName(exc.public_message) from None


class LocalRefusal(grpc.RpcError, grpc.Future, grpc.Call):
    """A call refused before sending: a finished, failed call, as a server would answer."""

    def __init__(self, error: PpmlError) -> None:
        super().__init__(error.public_message)
        self._error = error

    # grpc.Call / RpcError
    def code(self) -> grpc.StatusCode:
        return self._error.status

    def details(self) -> str:
        return f"{self._error.public_message} (refused by the SDK; nothing was sent)"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((ERROR_CODE_KEY, self._error.code.value),)

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    # grpc.Future
    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> NoReturn:
        raise self

    def exception(self, timeout: float | None = None) -> LocalRefusal:
        return self

    def traceback(self, timeout: float | None = None) -> None:
        return None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    # a refused server stream ends at once
    def __iter__(self) -> LocalRefusal:
        return self

    def __next__(self) -> NoReturn:
        raise self


def _refusal(request: Any) -> LocalRefusal | None:
    if not isinstance(request, Message):
        return None
    try:
        check_message_strings(request)
    except PpmlError as exc:
        return LocalRefusal(exc)
    return None


class StringCheckInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
):
    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        refusal = _refusal(request)
        return refusal if refusal is not None else continuation(client_call_details, request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        refusal = _refusal(request)
        return refusal if refusal is not None else continuation(client_call_details, request)


def checked_channel(channel: grpc.Channel) -> grpc.Channel:
    """``channel`` with every unary request checked before it is sent."""
    return grpc.intercept_channel(channel, StringCheckInterceptor())


