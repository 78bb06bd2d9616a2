"""Typed exceptions of the SDK, mapped from gRPC statuses and ppml error codes."""

from __future__ import annotations

import grpc

from ppml.proto.errors import ERROR_CODE_KEY, ErrorCode


class PpmlClientError(Exception):
    """Base class of every SDK error; ``server`` names the server that said it."""

    def __init__(self, message: str, server: str | None = None) -> None:
        super().__init__(f"{server}: {message}" if server else message)
        self.server = server


class InvalidRequest(PpmlClientError):
    """The request was malformed (bad id, wrong row count, …)."""


class InvalidName(InvalidRequest):
    """A name, id, identity or other string is unprintable (control or format characters)
    or too long (``ppml.proto.names``); raised by a server, or here before anything is sent."""


class InvalidShare(InvalidRequest):
    """A share tensor has the wrong shape, dtype or byte length."""


class InvalidModel(InvalidRequest):
    """The model cannot be stored or served (bad architecture or parameters)."""


class ModelNotFound(PpmlClientError):
    """No model with that id on (some of) the servers."""


class ModelExists(PpmlClientError):
    """A model with that id already exists."""


class DuplicateRequest(PpmlClientError):
    """The request id was already used."""


class AuthenticationFailed(PpmlClientError):
    """Missing or unknown token, or a TLS handshake failure."""


class PermissionDenied(PpmlClientError):
    """The token is valid but its role may not do this."""


class ServerUnavailable(PpmlClientError):
    """A server is down, unreachable, or not ready (MPC session restarting)."""


class PredictionAborted(PpmlClientError):
    """The servers dropped the request (missing share, peer failure, overload)."""


class DeadlineExceeded(PpmlClientError):
    """No answer within the deadline."""


class InvalidDataset(InvalidRequest):
    """A data set cannot be shared or used (empty, NaN/inf, bad labels, wrong shape)."""


class DatasetNotFound(PpmlClientError):
    """No data set with that id on (some of) the servers."""


class DatasetExists(PpmlClientError):
    """A data set with that id already exists."""


class InvalidTrainingJob(InvalidRequest):
    """The training job was rejected before any MPC work (mismatched data, loss, ...)."""


class JobNotFound(PpmlClientError):
    """No training job with that id on (some of) the servers."""


class JobExists(PpmlClientError):
    """A training job with that id already exists."""


class JobFinished(PpmlClientError):
    """The job already ended; it cannot be cancelled."""


class TrainingFailed(PpmlClientError):
    """A training job ended FAILED; the message gives the servers' reason."""


class TrainingCancelled(PpmlClientError):
    """A training job was cancelled before it finished."""


class EvaluationAborted(PpmlClientError):
    """The servers dropped an evaluation request (missing share, peer failure)."""


class InvalidFederation(InvalidRequest):
    """The federation's settings or an update are invalid; nothing was changed."""


class InvalidUpdate(InvalidFederation):
    """A server refused a participant's update (a CKKS chunk that does not parse under the
    federation's context, a wrong scale, level or chunk count, a sample count out of range);
    nothing was kept and the round goes on."""


class FederationNotFound(PpmlClientError):
    pass


class FederationExists(PpmlClientError):
    pass


class FederationFinished(PpmlClientError):
    """The federation already ended (succeeded, failed, cancelled or out of budget)."""


class RoundClosed(PpmlClientError):
    """The round this update was for closed (deadline passed); fetch the open round."""


class AlreadySubmitted(PpmlClientError):
    """This participant already submitted an update in this round."""


class ContextMismatch(PpmlClientError):
    """A CKKS update was encrypted under another federation's context, or CKKS inference
    ciphertexts name a context that is not the caller's stored one.

    Raised by a server, or here before anything is sent: the participant's
    context is not the one the federation was created with.
    """


class InvalidContext(InvalidRequest):
    """A CKKS evaluation context was refused: it holds a secret key, its parameters are
    below 128-bit security or outside the server's table, or its keys do not load."""


class ContextNotFound(PpmlClientError):
    """The server holds no CKKS evaluation keys of this identity for the parameter set."""


class InvalidCiphertext(InvalidRequest):
    """A CKKS ciphertext is malformed, too large, or at the wrong level or scale."""


class InputShapeMismatch(InvalidShare):
    """Rows of another width (or shape) than the model's input; raised before anything is sent."""


class InvalidTokens(InputShapeMismatch):
    """Token ids a token model cannot take (not integers, outside ``[0, vocab)``, a sequence
    longer than the model's length); raised before anything is sent."""


class UpdateShapeMismatch(InvalidFederation):
    """A local training returned a model whose parameters differ from the federation's model
    (another shape, a missing or an extra layer); raised before anything is sent."""


class BudgetExhausted(PpmlClientError):
    """The federation's privacy budget is spent: no further round may run."""


class FederationFailed(PpmlClientError):
    pass


class UploadAborted(PpmlClientError):
    """An upload (data set or model) did not happen: a server failed or went away before every
    server held its share, so it was dropped on every server. Nothing was kept; safe to retry."""


class UploadUnresolved(PpmlClientError):
    """An upload failed on some server and server 0, which decides whether an upload is kept,
    could not be reached: it is on every server or on none, settled once server 0 is back."""


class ResourceExhausted(PpmlClientError):
    """A quota or limit of the servers: too many models, too large an upload, too many calls."""


_BY_CODE: dict[str, type[PpmlClientError]] = {
    ErrorCode.INVALID_ARGUMENT: InvalidRequest,
    ErrorCode.INVALID_NAME: InvalidName,
    ErrorCode.INVALID_SHARE: InvalidShare,
    ErrorCode.INVALID_MODEL: InvalidModel,
    ErrorCode.MODEL_NOT_FOUND: ModelNotFound,
    ErrorCode.MODEL_EXISTS: ModelExists,
    ErrorCode.DUPLICATE_REQUEST: DuplicateRequest,
    ErrorCode.UNAUTHENTICATED: AuthenticationFailed,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
    ErrorCode.NOT_READY: ServerUnavailable,
    ErrorCode.PREDICTION_ABORTED: PredictionAborted,
    ErrorCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    ErrorCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    ErrorCode.INVALID_DATASET: InvalidDataset,
    ErrorCode.DATASET_NOT_FOUND: DatasetNotFound,
    ErrorCode.DATASET_EXISTS: DatasetExists,
    ErrorCode.INVALID_JOB: InvalidTrainingJob,
    ErrorCode.JOB_NOT_FOUND: JobNotFound,
    ErrorCode.JOB_EXISTS: JobExists,
    ErrorCode.JOB_FINISHED: JobFinished,
    ErrorCode.EVALUATION_ABORTED: EvaluationAborted,
    ErrorCode.INVALID_FEDERATION: InvalidFederation,
    ErrorCode.INVALID_UPDATE: InvalidUpdate,
    ErrorCode.FEDERATION_NOT_FOUND: FederationNotFound,
    ErrorCode.FEDERATION_EXISTS: FederationExists,
    ErrorCode.FEDERATION_FINISHED: FederationFinished,
    ErrorCode.ROUND_CLOSED: RoundClosed,
    ErrorCode.ALREADY_SUBMITTED: AlreadySubmitted,
    ErrorCode.CONTEXT_MISMATCH: ContextMismatch,
    ErrorCode.INVALID_CONTEXT: InvalidContext,
    ErrorCode.CONTEXT_NOT_FOUND: ContextNotFound,
    ErrorCode.INVALID_CIPHERTEXT: InvalidCiphertext,
    ErrorCode.BUDGET_EXHAUSTED: BudgetExhausted,
    ErrorCode.UPLOAD_ABORTED: UploadAborted,
}

_BY_STATUS: dict[grpc.StatusCode, type[PpmlClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.ALREADY_EXISTS: DuplicateRequest,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationFailed,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailable,
    grpc.StatusCode.ABORTED: PredictionAborted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.CANCELLED: PredictionAborted,
    grpc.StatusCode.FAILED_PRECONDITION: JobFinished,
}

# When servers disagree, the most actionable error wins.
_PRIORITY: list[type[PpmlClientError]] = [
    AuthenticationFailed,
    PermissionDenied,
    InvalidName,
    InvalidShare,
    InvalidModel,
    InvalidDataset,
    InvalidTrainingJob,
    InvalidUpdate,
    InvalidFederation,
    ContextMismatch,
    InvalidContext,
    InvalidCiphertext,
    InvalidRequest,
    ModelNotFound,
    DatasetNotFound,
    JobNotFound,
    FederationNotFound,
    ContextNotFound,
    ModelExists,
    DatasetExists,
    JobExists,
    FederationExists,
    AlreadySubmitted,
    JobFinished,
    FederationFinished,
    BudgetExhausted,
    RoundClosed,
    DuplicateRequest,
    ResourceExhausted,
    UploadUnresolved,
    UploadAborted,
    ServerUnavailable,
    PredictionAborted,
    EvaluationAborted,
    DeadlineExceeded,
    PpmlClientError,
]


def from_rpc_error(error: grpc.RpcError, server: str) -> PpmlClientError:
    """The typed exception for one server's failed call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    trailing = dict(error.trailing_metadata() or ()) if hasattr(error, "trailing_metadata") else {}
    cls = _BY_CODE.get(str(trailing.get(ERROR_CODE_KEY, "")))
    if cls is None:
        cls = _BY_STATUS.get(code, PpmlClientError)
    if code == grpc.StatusCode.UNAVAILABLE and "handshake" in (details or "").lower():
        cls = AuthenticationFailed
    return cls(f"{code.name}: {details}", server)


def most_relevant(errors: list[PpmlClientError]) -> PpmlClientError:
    """Pick the error to raise when several servers failed; mention all of them."""
    best = min(errors, key=lambda e: next(i for i, c in enumerate(_PRIORITY) if isinstance(e, c)))
    if len(errors) == 1:
        return best
    others = "; ".join(str(e) for e in errors if e is not best)
    combined = type(best)(f"{best} (also: {others})")
    combined.server = best.server
    return combined
