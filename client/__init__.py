"""ppml client SDK: secret-share inputs, models and datasets; reconstruct results.

Everything a caller needs is importable from here: the :class:`Cluster`
client, :class:`LocalCluster` (the embedded default: servers and a dealer on
loopback), the settings types (:class:`DpSettings`), the CKKS activation
(:class:`Square`) and every SDK error, all
subclasses of :class:`PpmlClientError`.
"""

from ppml.client.cluster import Cluster, Endpoint, ModelListing, Prediction
from ppml.client.datasets_api import DatasetListing
from ppml.client.deploy.local import LocalCluster
from ppml.client.errors import (
    AlreadySubmitted,
    AuthenticationFailed,
    BudgetExhausted,
    ContextMismatch,
    ContextNotFound,
    DatasetExists,
    DatasetNotFound,
    DeadlineExceeded,
    DuplicateRequest,
    EvaluationAborted,
    FederationExists,
    FederationFailed,
    FederationFinished,
    FederationNotFound,
    InputShapeMismatch,
    InvalidCiphertext,
    InvalidContext,
    InvalidDataset,
    InvalidFederation,
    InvalidModel,
    InvalidName,
    InvalidRequest,
    InvalidShare,
    InvalidTokens,
    InvalidTrainingJob,
    InvalidUpdate,
    JobExists,
    JobFinished,
    JobNotFound,
    ModelExists,
    ModelNotFound,
    PermissionDenied,
    PpmlClientError,
    PredictionAborted,
    ResourceExhausted,
    RoundClosed,
    ServerUnavailable,
    TrainingCancelled,
    TrainingFailed,
    UpdateShapeMismatch,
    UploadAborted,
    UploadUnresolved,
)
from ppml.client.exported import ExportedModel
from ppml.client.federation import Federation, JoinReport, RoundProgress
from ppml.client.he_api import HeModelInfo, HePrediction
from ppml.client.he_compile import Square
from ppml.client.model_export import UnsupportedModelError
from ppml.client.training_api import Evaluation
from ppml.client.training_job import TrainingJob
from ppml.proto.domain.federations import DpSettings

__all__ = [
    "AlreadySubmitted",
    "AuthenticationFailed",
    "BudgetExhausted",
    "Cluster",
    "ContextMismatch",
    "ContextNotFound",
    "DatasetExists",
    "DatasetListing",
    "DatasetNotFound",
    "DeadlineExceeded",
    "DpSettings",
    "DuplicateRequest",
    "Endpoint",
    "Evaluation",
    "EvaluationAborted",
    "ExportedModel",
    "Federation",
    "FederationExists",
    "FederationFailed",
    "FederationFinished",
    "FederationNotFound",
    "HeModelInfo",
    "HePrediction",
    "InputShapeMismatch",
    "InvalidCiphertext",
    "InvalidContext",
    "InvalidDataset",
    "InvalidFederation",
    "InvalidModel",
    "InvalidName",
    "InvalidRequest",
    "InvalidShare",
    "InvalidTokens",
    "InvalidTrainingJob",
    "InvalidUpdate",
    "JobExists",
    "JobFinished",
    "JobNotFound",
    "JoinReport",
    "LocalCluster",
    "ModelExists",
    "ModelListing",
    "ModelNotFound",
    "PermissionDenied",
    "PpmlClientError",
    "Prediction",
    "PredictionAborted",
    "ResourceExhausted",
    "RoundClosed",
    "RoundProgress",
    "ServerUnavailable",
    "Square",
    "TrainingCancelled",
    "TrainingFailed",
    "TrainingJob",
    "UnsupportedModelError",
    "UpdateShapeMismatch",
    "UploadAborted",
    "UploadUnresolved",
]
