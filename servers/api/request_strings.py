"""Every string a client sends is printable and bounded, checked before any handler runs.

:class:`RequestStringsInterceptor` walks each request message of the client
services (``ppml.v1.*`` but the servers' own control link) and refuses, with
INVALID_ARGUMENT and ``ppml-error-code: INVALID_NAME``, a string field that holds a
control or format character or is longer than
:data:`~ppml.proto.names.MAX_STRING_CHARS`, or a repeated string field of more
than :data:`~ppml.proto.names.MAX_LIST_ITEMS` entries
(``ppml.proto.names``). So no name, id, label or identity list reaches a
store, a job or an error message unchecked, on every server alike; the
stores then apply their stricter rules (ids, names, identities).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import Message

from ppml.proto.names import check_message_strings
from ppml.servers.api.handlers import wrap_handler

_CHECKED_PREFIX = "/ppml.v1."
_EXEMPT = ("/ppml.v1.Coordinator/",)  # peers' control link: authenticated servers only


def checks(method: str) -> bool:
    """Whether the requests of ``method`` (``/package.Service/Method``) are checked."""
    return method.startswith(_CHECKED_PREFIX) and not method.startswith(_EXEMPT)


class _CheckedStream(Iterator[Any]):
    def __init__(self, requests: Iterator[Any]) -> None:
        self._requests = requests

    def __next__(self) -> Any:
        request = next(self._requests)
        if isinstance(request, Message):
            check_message_strings(request)
        return request


def _checked(request: Any, streaming: bool) -> Any:
    if streaming:
        return _CheckedStream(request)
    if isinstance(request, Message):
        check_message_strings(request)
    return request


def _wrap(fn: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        return fn(_checked(request, streaming), context)

    return call


class RequestStringsInterceptor(grpc.ServerInterceptor):
    """Checks every request of the client services with
    :func:`~ppml.proto.names.check_message_strings`.

    Install it inside :class:`~ppml.servers.api.errors.ErrorMappingInterceptor`
    (later in the list), which turns its refusals into statuses.
    """

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or not checks(handler_call_details.method):
            return handler
        streaming = handler.request_streaming
        wrap = lambda fn: _wrap(fn, streaming)  # noqa: E731
        return wrap_handler(handler, wrap, wrap)
