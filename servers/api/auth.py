"""Bearer-token authentication as a gRPC server interceptor.

The tokens a server accepts come from its auth file
(:mod:`ppml.proto.deploy.tokens`). ``grpc.health.v1`` is open to all (it
reveals nothing). The interceptor makes the caller's identity available to
handlers through :func:`current_identity`.
"""

from __future__ import annotations

import contextlib
import contextvars
import hmac
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from ppml.proto.deploy.tokens import Identity, token_hash
from ppml.servers.api.handlers import Behaviour, wrap_handler

_IDENTITY: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "ppml_identity", default=None
)


def identify(table: dict[str, Identity], header: str) -> Identity | None:
    """The identity of an ``authorization`` header value ``Bearer <token>``, if known."""
    if not header.startswith("Bearer "):
        return None
    digest = token_hash(header[len("Bearer ") :])
    return next(
        (ident for key, ident in table.items() if hmac.compare_digest(key, digest)),
        None,
    )


def current_identity() -> Identity | None:
    """The authenticated caller of the RPC being handled (None when auth is off)."""
    return _IDENTITY.get()


_PUBLIC_METADATA = frozenset(
    {
        "/ppml.v1.ModelRegistry/ListModels",
        "/ppml.v1.ModelRegistry/GetModel",
        "/ppml.v1.DatasetRegistry/ListDatasets",
        "/ppml.v1.DatasetRegistry/GetDataset",
        "/ppml.v1.Training/ListJobs",
        "/ppml.v1.Training/GetJob",
        "/ppml.v1.Training/WatchJob",
        # a non-owner (the monitor included) gets the public view: no loss shares
        "/ppml.v1.Federation/ListFederations",
        "/ppml.v1.Federation/GetFederation",
    }
)


def required_roles(method: str) -> tuple[str, ...] | None:
    """Roles allowed to call ``method``; None means no token needed."""
    if method.startswith("/grpc.health.v1.Health/"):
        return None
    if method.startswith("/ppml.v1.Status/"):
        return ("client", "monitor", "peer")
    if method in _PUBLIC_METADATA:
        return ("client", "monitor")  # public metadata and counters only
    if method == "/ppml.v1.Coordinator/ResolveUpload":
        return ("client",)  # a client settles its own upload (scoped to its identity)
    if method.startswith("/ppml.v1.Coordinator/"):
        return ("peer",)
    return ("client",)


def _wrap(handler: grpc.RpcMethodHandler, identity: Identity) -> grpc.RpcMethodHandler:
    def bind(fn: Behaviour) -> Behaviour:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            token = _IDENTITY.set(identity)
            try:
                result = fn(request, context)
            finally:
                _IDENTITY.reset(token)
            if inspect.isgenerator(result):  # a streaming response runs lazily
                return _with_identity(result, identity)
            return result

        return call

    return wrap_handler(handler, bind, bind)


def _with_identity(stream: Iterator[Any], identity: Identity) -> Iterator[Any]:
    """Iterate a response stream with the caller's identity bound."""
    token = _IDENTITY.set(identity)
    try:
        yield from stream
    finally:
        with contextlib.suppress(ValueError):  # closed from another context
            _IDENTITY.reset(token)


_HANDLER_OF_KIND = {  # (request_streaming, response_streaming) -> handler factory
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _deny(
    code: grpc.StatusCode, message: str, handler: grpc.RpcMethodHandler
) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind that refuses the call.

    A unary one would answer UNIMPLEMENTED to an empty request stream.
    """

    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.set_trailing_metadata((("ppml-error-code", code.name),))
        context.abort(code, message)

    make = _HANDLER_OF_KIND[(handler.request_streaming, handler.response_streaming)]
    return make(abort)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Checks ``authorization: Bearer <token>`` against the auth table."""

    def __init__(self, table: dict[str, Identity]) -> None:
        self._table = table

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        roles = required_roles(handler_call_details.method)
        if handler is None or roles is None:
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        header = str(metadata.get("authorization", ""))
        if not header.startswith("Bearer "):
            return _deny(
                grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer' token", handler
            )
        identity = identify(self._table, header)
        if identity is None:
            return _deny(grpc.StatusCode.UNAUTHENTICATED, "unknown token", handler)
        if identity.role not in roles:
            return _deny(
                grpc.StatusCode.PERMISSION_DENIED,
                f"role '{identity.role}' may not call {handler_call_details.method}",
                handler,
            )
        return _wrap(handler, identity)
