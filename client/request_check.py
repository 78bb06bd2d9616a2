"""The SDK checks every string it sends, before sending, by the servers' own rules.

:class:`StringCheckInterceptor` sits on each server's channel and applies
:func:`ppml.proto.names.check_message_strings` to every unary request: an
unprintable or over-long name, id, identity or label raises
:class:`~ppml.client.errors.InvalidName` here, and nothing goes out. (A request
stream, the data set upload, has its header checked where it is built.) The
servers enforce the same rules on their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from ppml.client.errors import InvalidName
from ppml.proto.errors import PpmlError
from ppml.proto.names import check_message_strings


def check_request(request: Any) -> None:
    """Raise :class:`InvalidName` if ``request`` holds a string no server accepts."""
    if isinstance(request, Message):
        try:
            check_message_strings(request)
        except PpmlError as exc:
            raise InvalidName(exc.public_message) from None


class StringCheckInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        check_request(request)
        return continuation(client_call_details, request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        check_request(request)
        return continuation(client_call_details, request)


def checked_channel(channel: grpc.Channel) -> grpc.Channel:
    """``channel`` with every unary request checked before it is sent."""
    return grpc.intercept_channel(channel, StringCheckInterceptor())
