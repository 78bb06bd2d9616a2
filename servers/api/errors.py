"""The RPC boundary: domain errors in, gRPC statuses out.

Every servicer method runs its domain call inside :func:`rpc_boundary`. A
:class:`~ppml.proto.errors.PpmlError` becomes its catalogue status with the
public message and the code in trailing metadata; anything else becomes
INTERNAL with an incident id, logged with its traceback here and never sent
to the caller (no internals leak).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from ppml.proto.errors import ERROR_CODE_KEY, ErrorCode, PpmlError

log = logging.getLogger(__name__)


@contextmanager
def rpc_boundary(context: grpc.ServicerContext, method: str) -> Iterator[None]:
    try:
        yield
    except PpmlError as err:
        context.set_trailing_metadata(((ERROR_CODE_KEY, err.code.value),))
        context.abort(err.status, err.public_message)
    except Exception:
        if isinstance(context, grpc.ServicerContext) and context.code() is not None:
            raise  # already aborted by the handler
        incident = uuid.uuid4().hex[:12]
        log.exception("%s failed (incident %s)", method, incident)
        context.set_trailing_metadata(((ERROR_CODE_KEY, ErrorCode.INTERNAL.value),))
        context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error (incident {incident}); the server logged the details",
        )
