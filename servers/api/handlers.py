"""Wrapping every behaviour of a gRPC method handler (for interceptors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behaviour = Callable[[Any, grpc.ServicerContext], Any]


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    unary_response: Callable[[Behaviour], Behaviour],
    streaming_response: Callable[[Behaviour], Behaviour],
) -> grpc.RpcMethodHandler:
    """``handler`` with each behaviour it has wrapped by the wrapper for its response kind."""
    return handler._replace(
        unary_unary=handler.unary_unary and unary_response(handler.unary_unary),
        stream_unary=handler.stream_unary and unary_response(handler.stream_unary),
        unary_stream=handler.unary_stream and streaming_response(handler.unary_stream),
        stream_stream=handler.stream_stream and streaming_response(handler.stream_stream),
    )
