"""ppml client SDK: secret-share inputs, models and datasets; reconstruct results."""

from ppml.client.cluster import Cluster, Endpoint, ModelListing, Prediction
from ppml.client.errors import (
    AuthenticationFailed,
    DeadlineExceeded,
    DuplicateRequest,
    InvalidModel,
    InvalidName,
    InvalidRequest,
    InvalidShare,
    ModelExists,
    ModelNotFound,
    PermissionDenied,
    PpmlClientError,
    PredictionAborted,
    ResourceExhausted,
    ServerUnavailable,
    UploadAborted,
    UploadUnresolved,
)
from ppml.client.model_export import UnsupportedModelError

__all__ = [
    "AuthenticationFailed",
    "Cluster",
    "DeadlineExceeded",
    "DuplicateRequest",
    "Endpoint",
    "InvalidModel",
    "InvalidName",
    "InvalidRequest",
    "InvalidShare",
    "ModelExists",
    "ModelListing",
    "ModelNotFound",
    "PermissionDenied",
    "PpmlClientError",
    "Prediction",
    "PredictionAborted",
    "ResourceExhausted",
    "ServerUnavailable",
    "UnsupportedModelError",
    "UploadAborted",
    "UploadUnresolved",
]
