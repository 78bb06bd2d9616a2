"""The error catalogue: every domain error's code, gRPC status and public message.

Servers raise :class:`PpmlError` with a code and a detail a user can act on;
``ppml.servers.api.errors.rpc_boundary`` turns it into the status below and sends
the code in the trailing metadata key :data:`ERROR_CODE_KEY`; the SDK turns it
back into a typed exception (``ppml.client.errors``). The detail never carries
secret values (shares, weights, predictions): only ids, shapes and counts.
"""

from __future__ import annotations

from enum import StrEnum

import grpc

ERROR_CODE_KEY = "ppml-error-code"
# A detail is cut to this many characters: it travels in the trailers (gRPC's metadata
# limit is 8 KiB), and details quote client strings through ``ppml.proto.names.quote``.
MAX_DETAIL_CHARS = 1000


class ErrorCode(StrEnum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    INVALID_NAME = "INVALID_NAME"
    INVALID_SHARE = "INVALID_SHARE"
    INVALID_MODEL = "INVALID_MODEL"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    MODEL_EXISTS = "MODEL_EXISTS"
    DUPLICATE_REQUEST = "DUPLICATE_REQUEST"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_READY = "NOT_READY"
    PREDICTION_ABORTED = "PREDICTION_ABORTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    INVALID_DATASET = "INVALID_DATASET"
    DATASET_NOT_FOUND = "DATASET_NOT_FOUND"
    DATASET_EXISTS = "DATASET_EXISTS"
    INVALID_JOB = "INVALID_JOB"
    JOB_NOT_FOUND = "JOB_NOT_FOUND"
    JOB_EXISTS = "JOB_EXISTS"
    JOB_FINISHED = "JOB_FINISHED"
    EVALUATION_ABORTED = "EVALUATION_ABORTED"
    INVALID_FEDERATION = "INVALID_FEDERATION"
    INVALID_UPDATE = "INVALID_UPDATE"
    FEDERATION_NOT_FOUND = "FEDERATION_NOT_FOUND"
    FEDERATION_EXISTS = "FEDERATION_EXISTS"
    FEDERATION_FINISHED = "FEDERATION_FINISHED"
    ROUND_CLOSED = "ROUND_CLOSED"
    ALREADY_SUBMITTED = "ALREADY_SUBMITTED"
    CONTEXT_MISMATCH = "CONTEXT_MISMATCH"
    INVALID_CONTEXT = "INVALID_CONTEXT"
    CONTEXT_NOT_FOUND = "CONTEXT_NOT_FOUND"
    INVALID_CIPHERTEXT = "INVALID_CIPHERTEXT"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    UPLOAD_ABORTED = "UPLOAD_ABORTED"
    INTERNAL = "INTERNAL"


CATALOG: dict[ErrorCode, tuple[grpc.StatusCode, str]] = {
    ErrorCode.INVALID_ARGUMENT: (grpc.StatusCode.INVALID_ARGUMENT, "invalid argument"),
    ErrorCode.INVALID_NAME: (grpc.StatusCode.INVALID_ARGUMENT, "invalid name or string"),
    ErrorCode.INVALID_SHARE: (grpc.StatusCode.INVALID_ARGUMENT, "invalid share tensor"),
    ErrorCode.INVALID_MODEL: (grpc.StatusCode.INVALID_ARGUMENT, "invalid model"),
    ErrorCode.MODEL_NOT_FOUND: (grpc.StatusCode.NOT_FOUND, "model not found"),
    ErrorCode.MODEL_EXISTS: (grpc.StatusCode.ALREADY_EXISTS, "model already exists"),
    ErrorCode.DUPLICATE_REQUEST: (grpc.StatusCode.ALREADY_EXISTS, "duplicate request id"),
    ErrorCode.UNAUTHENTICATED: (grpc.StatusCode.UNAUTHENTICATED, "authentication failed"),
    ErrorCode.PERMISSION_DENIED: (grpc.StatusCode.PERMISSION_DENIED, "permission denied"),
    ErrorCode.NOT_READY: (grpc.StatusCode.UNAVAILABLE, "server not ready"),
    ErrorCode.PREDICTION_ABORTED: (grpc.StatusCode.ABORTED, "prediction aborted"),
    ErrorCode.DEADLINE_EXCEEDED: (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"),
    ErrorCode.RESOURCE_EXHAUSTED: (grpc.StatusCode.RESOURCE_EXHAUSTED, "limit reached"),
    ErrorCode.INVALID_DATASET: (grpc.StatusCode.INVALID_ARGUMENT, "invalid dataset"),
    ErrorCode.DATASET_NOT_FOUND: (grpc.StatusCode.NOT_FOUND, "dataset not found"),
    ErrorCode.DATASET_EXISTS: (grpc.StatusCode.ALREADY_EXISTS, "dataset already exists"),
    ErrorCode.INVALID_JOB: (grpc.StatusCode.INVALID_ARGUMENT, "invalid training job"),
    ErrorCode.JOB_NOT_FOUND: (grpc.StatusCode.NOT_FOUND, "training job not found"),
    ErrorCode.JOB_EXISTS: (grpc.StatusCode.ALREADY_EXISTS, "training job already exists"),
    ErrorCode.JOB_FINISHED: (grpc.StatusCode.FAILED_PRECONDITION, "training job already finished"),
    ErrorCode.EVALUATION_ABORTED: (grpc.StatusCode.ABORTED, "evaluation aborted"),
    ErrorCode.INVALID_FEDERATION: (grpc.StatusCode.INVALID_ARGUMENT, "invalid federation"),
    ErrorCode.INVALID_UPDATE: (grpc.StatusCode.INVALID_ARGUMENT, "invalid federation update"),
    ErrorCode.FEDERATION_NOT_FOUND: (grpc.StatusCode.NOT_FOUND, "federation not found"),
    ErrorCode.FEDERATION_EXISTS: (grpc.StatusCode.ALREADY_EXISTS, "federation already exists"),
    ErrorCode.FEDERATION_FINISHED: (
        grpc.StatusCode.FAILED_PRECONDITION,
        "federation already finished",
    ),
    ErrorCode.ROUND_CLOSED: (grpc.StatusCode.FAILED_PRECONDITION, "round closed"),
    ErrorCode.ALREADY_SUBMITTED: (grpc.StatusCode.ALREADY_EXISTS, "update already submitted"),
    ErrorCode.CONTEXT_MISMATCH: (grpc.StatusCode.FAILED_PRECONDITION, "CKKS context mismatch"),
    ErrorCode.INVALID_CONTEXT: (grpc.StatusCode.INVALID_ARGUMENT, "invalid CKKS context"),
    ErrorCode.CONTEXT_NOT_FOUND: (grpc.StatusCode.NOT_FOUND, "CKKS context not found"),
    ErrorCode.INVALID_CIPHERTEXT: (grpc.StatusCode.INVALID_ARGUMENT, "invalid ciphertext"),
    ErrorCode.BUDGET_EXHAUSTED: (grpc.StatusCode.FAILED_PRECONDITION, "privacy budget exhausted"),
    ErrorCode.UPLOAD_ABORTED: (grpc.StatusCode.ABORTED, "upload aborted on every server"),
    ErrorCode.INTERNAL: (grpc.StatusCode.INTERNAL, "internal error"),
}


class PpmlError(Exception):
    """A domain error with a catalogue code and a detail safe to show users."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        if len(detail) > MAX_DETAIL_CHARS:
            detail = f"{detail[:MAX_DETAIL_CHARS]}... (cut from {len(detail)} characters)"
        super().__init__(f"{CATALOG[code][1]}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def status(self) -> grpc.StatusCode:
        return CATALOG[self.code][0]

    @property
    def public_message(self) -> str:
        return str(self)
