"""The RPC boundary: domain errors in, gRPC statuses out, in one interceptor.

:class:`ErrorMappingInterceptor` wraps every handler of a server. A
:class:`~ppml.proto.errors.PpmlError` becomes its catalogue status with the
public message and the code in the trailing metadata key
:data:`~ppml.proto.errors.ERROR_CODE_KEY`; anything else becomes INTERNAL
with an incident id, logged with its traceback here and never sent to the
caller (no internals leak). A handler that aborted the call itself keeps its
status. Streaming responses are mapped the same way while they are iterated.
A request body that does not parse as the method's message becomes
INVALID_ARGUMENT here too (gRPC alone would answer INTERNAL).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from ppml.proto.errors import ERROR_CODE_KEY, ErrorCode, PpmlError
from ppml.servers.api.handlers import wrap_handler

log = logging.getLogger(__name__)

# The status message travels in the trailers (percent-encoded: up to 3 characters per
# byte) with the error code; a client refuses trailers over 8 KiB (RESOURCE_EXHAUSTED
# "Stream removed"), so a message is cut to this many UTF-8 bytes.
MAX_MESSAGE_BYTES = 1024


def bounded_message(message: str, max_bytes: int = MAX_MESSAGE_BYTES) -> str:
    """``message``, cut to at most ``max_bytes`` UTF-8 bytes (plus a short mark) if longer."""
    data = message.encode("utf-8", errors="replace")
    if len(data) <= max_bytes:
        return message
    return data[:max_bytes].decode("utf-8", errors="ignore") + "... (cut)"


def _map(exc: Exception, context: grpc.ServicerContext, method: str) -> None:
    """Abort ``context`` with the status for ``exc`` (always raises)."""
    if isinstance(exc, PpmlError):
        context.set_trailing_metadata(((ERROR_CODE_KEY, exc.code.value),))
        context.abort(exc.status, bounded_message(exc.public_message))
    if context.code() is not None:  # the handler aborted the call itself
        raise exc
    incident = uuid.uuid4().hex[:12]
    log.error("%s failed (incident %s)", method, incident, exc_info=exc)
    context.set_trailing_metadata(((ERROR_CODE_KEY, ErrorCode.INTERNAL.value),))
    context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error (incident {incident}); the server logged the details",
    )


@dataclass(frozen=True)
class _Undecodable:
    """Stands for a request message that did not parse."""

    error: str


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` returning :class:`_Undecodable` instead of raising."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Undecodable(str(exc)[:200] or type(exc).__name__)

    return parse


def _parsed(request: Any, method: str) -> Any:
    if isinstance(request, _Undecodable):
        raise PpmlError(
            ErrorCode.INVALID_ARGUMENT,
            f"the request body is not a valid message for {method}: {request.error}",
        )
    return request


class _ParsedStream(Iterator[Any]):
    """A request stream that raises INVALID_ARGUMENT at a message that did not parse."""

    def __init__(self, requests: Iterator[Any], method: str) -> None:
        self._requests = requests
        self._method = method

    def __next__(self) -> Any:
        return _parsed(next(self._requests), self._method)


def _request(request: Any, streaming: bool, method: str) -> Any:
    return _ParsedStream(request, method) if streaming else _parsed(request, method)


def _unary(fn: Callable[..., Any], method: str, streaming: bool) -> Callable[..., Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(_request(request, streaming, method), context)
        except Exception as exc:
            _map(exc, context, method)

    return call


def _stream(
    fn: Callable[..., Iterator[Any]], method: str, streaming: bool
) -> Callable[..., Iterator[Any]]:
    def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from fn(_request(request, streaming, method), context)
        except Exception as exc:
            _map(exc, context, method)

    return call


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Applies the error catalogue to every RPC of the server it is installed on."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        streaming = handler.request_streaming
        handler = handler._replace(request_deserializer=_lenient(handler.request_deserializer))
        return wrap_handler(
            handler,
            lambda fn: _unary(fn, method, streaming),
            lambda fn: _stream(fn, method, streaming),
        )
