"""The client SDK: secret-share models and inputs, reconstruct outputs.

A :class:`Cluster` holds one TLS channel per compute server. Secrets exist
only on the caller's side: ``share_model`` and ``predict`` split every tensor
into additive shares with the OS CSPRNG (:mod:`ppml.proto.shares`) and send
share i to server i only; ``predict`` sums the output shares it gets back.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ppml.client import dataset_upload
from ppml.client.errors import (
    InvalidDataset,
    InvalidTrainingJob,
    PpmlClientError,
    ServerUnavailable,
    from_rpc_error,
    most_relevant,
)
from ppml.client.exported import ExportedModel
from ppml.client.model_export import export_model
from ppml.client.training_job import TrainingJob
from ppml.proto import jobs, serde, shares
from ppml.proto.architecture import ModelMeta
from ppml.proto.dataset_meta import DatasetMeta
from ppml.proto.status import StatusReport
from ppml.servers.config import load_config
from ppml.servers.grpc_server import client_channel
from ppml.training.datasets import DatasetError
from ppml.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    status_pb2,
    status_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

T = TypeVar("T")
ModelSource = torch.nn.Module | str | os.PathLike[str] | bytes


@dataclass(frozen=True)
class Endpoint:
    name: str
    address: str


@dataclass(frozen=True)
class Prediction:
    """Reconstructed output plus how the servers batched the request."""

    output: torch.Tensor
    batch_requests: int
    request_id: str


@dataclass(frozen=True)
class ModelListing:
    meta: ModelMeta
    servers: tuple[str, ...]  # servers that hold a share of it
    complete: bool  # every server holds it


@dataclass(frozen=True)
class DatasetListing:
    meta: DatasetMeta
    servers: tuple[str, ...]  # servers that hold a share of it
    complete: bool


@dataclass(frozen=True)
class Evaluation:
    """An accuracy reconstructed on the caller's side from every server's share."""

    correct: int
    rows: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.rows


class _Server:
    def __init__(self, endpoint: Endpoint, channel: grpc.Channel) -> None:
        self.name = endpoint.name
        self.channel = channel
        self.registry = registry_pb2_grpc.ModelRegistryStub(channel)
        self.inference = inference_pb2_grpc.InferenceStub(channel)
        self.status = status_pb2_grpc.StatusStub(channel)
        self.datasets = datasets_pb2_grpc.DatasetRegistryStub(channel)
        self.training = training_pb2_grpc.TrainingStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)


class Cluster:
    """Client of a ppml cluster (all compute servers, in rank order)."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        token: str,
        ca_cert: Path | None,
        timeout: float = 60.0,
    ) -> None:
        if len(endpoints) < 2:
            raise ValueError("a cluster has at least two compute servers")
        self._servers = [_Server(e, client_channel(e.address, ca_cert)) for e in endpoints]
        self._metadata = (("authorization", f"Bearer {token}"),)
        self.timeout = timeout

    @classmethod
    def from_config(
        cls,
        path: str | Path,
        token: str | None = None,
        insecure: bool = False,
        monitor: bool = False,
        timeout: float = 60.0,
    ) -> Cluster:
        """Connect using a topology file; the token defaults to its ``[client]`` token file."""
        config = load_config(path)
        if token is None:
            token_file = config.monitor_token_file if monitor else config.client_token_file
            token = token_file.read_text().strip() if token_file else ""
        endpoints = [Endpoint(p.name, p.grpc_address) for p in config.parties]
        return cls(endpoints, token, None if insecure else config.ca_cert, timeout)

    @property
    def parties(self) -> int:
        return len(self._servers)

    @property
    def server_names(self) -> list[str]:
        return [s.name for s in self._servers]

    # ------------------------------------------------------------ plumbing

    def _call_all(
        self,
        call: Callable[[_Server, int], grpc.Future],
        fail_fast: bool = True,
    ) -> list[Any]:
        """Start one call per server; return results in rank order or raise the best error."""
        done: queue.Queue[int] = queue.Queue()
        calls: list[grpc.Future] = []
        for rank, server in enumerate(self._servers):
            fut = call(server, rank)
            fut.add_done_callback(lambda _, r=rank: done.put(r))
            calls.append(fut)
        results: list[Any] = [None] * len(self._servers)
        errors: list[PpmlClientError] = []
        for _ in calls:
            rank = done.get()
            try:
                results[rank] = calls[rank].result()
            except grpc.RpcError as err:
                errors.append(from_rpc_error(err, self._servers[rank].name))
                if fail_fast:
                    for other in calls:
                        other.cancel()
                    break
        if errors:
            raise most_relevant(errors)
        return results

    def _retry(self, fn: Callable[[], T], attempts: int = 4) -> T:
        """Retry only on UNAVAILABLE, with exponential backoff."""
        delay = 0.2
        for attempt in range(attempts):
            try:
                return fn()
            except ServerUnavailable:
                if attempt == attempts - 1:
                    raise
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ models

    def share_model(
        self,
        model: ModelSource,
        sample_input: torch.Tensor | None = None,
        name: str = "",
        model_id: str | None = None,
    ) -> str:
        """Secret-share a torch module (exported via ONNX) or an ONNX file; returns its id.

        Weights are fixed-point encoded and split here; server i receives share i
        only. If any server rejects the upload, it is removed from the others.
        """
        architecture, weights = export_model(model, sample_input)
        model_id = model_id or uuid.uuid4().hex[:16]
        per_server: list[dict[str, shares.Ring]] = [{} for _ in self._servers]
        for param, value in weights.items():
            for rank, part in enumerate(shares.share(shares.encode(value), self.parties)):
                per_server[rank][param] = part
        arch_msg = serde.architecture_to_proto(architecture)

        def upload(server: _Server, rank: int) -> grpc.Future:
            request = registry_pb2.UploadModelRequest(
                model_id=model_id,
                name=name,
                architecture=arch_msg,
                parameters=serde.named_shares_to_proto(per_server[rank]),
            )
            return server.registry.UploadModel.future(
                request, timeout=self.timeout, metadata=self._metadata
            )

        try:
            self._call_all(upload, fail_fast=False)
        except PpmlClientError:
            self._delete_quietly(model_id)
            raise
        return model_id

    def _delete_quietly(self, model_id: str) -> None:
        for server in self._servers:
            with contextlib.suppress(grpc.RpcError):
                server.registry.DeleteModel(
                    registry_pb2.DeleteModelRequest(model_id=model_id),
                    timeout=10,
                    metadata=self._metadata,
                )

    def list_models(self) -> list[ModelListing]:
        """Models known to any server, with which servers hold their shares."""

        def list_all() -> list[registry_pb2.ListModelsResponse]:
            return self._call_all(
                lambda s, _: s.registry.ListModels.future(
                    registry_pb2.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata
                )
            )

        replies = self._retry(list_all)
        holders: dict[str, list[str]] = {}
        metas: dict[str, ModelMeta] = {}
        for server, reply in zip(self._servers, replies, strict=True):
            for info in reply.models:
                metas.setdefault(info.model_id, serde.model_meta_from_proto(info))
                holders.setdefault(info.model_id, []).append(server.name)
        return [
            ModelListing(metas[k], tuple(v), len(v) == self.parties) for k, v in holders.items()
        ]

    def delete_model(self, model_id: str) -> None:
        self._call_all(
            lambda s, _: s.registry.DeleteModel.future(
                registry_pb2.DeleteModelRequest(model_id=model_id),
                timeout=self.timeout,
                metadata=self._metadata,
            ),
            fail_fast=False,
        )

    def export_model(self, model_id: str) -> ExportedModel:
        """Reconstruct a model's weights here; only its owner may (PermissionDenied otherwise)."""
        request = registry_pb2.ExportModelRequest(model_id=model_id)
        replies = self._call_all(
            lambda s, _: s.registry.ExportModel.future(
                request, timeout=self.timeout, metadata=self._metadata
            ),
            fail_fast=False,
        )
        meta = serde.model_meta_from_proto(replies[0].model)
        expected = meta.architecture.parameter_shapes()
        per_server = [serde.named_shares_from_proto(list(r.parameters), expected) for r in replies]
        weights = {
            name: torch.from_numpy(
                shares.decode(shares.reconstruct([p[name] for p in per_server]))
            ).float()
            for name in expected
        }
        return ExportedModel(meta, weights)

    # ------------------------------------------------------------ datasets

    def share_dataset(
        self,
        features: dataset_upload.DataSource,
        labels: np.ndarray | torch.Tensor | None = None,
        *,
        name: str = "",
        num_classes: int | None = None,
        dataset_id: str | None = None,
        allow: Sequence[str] = ("*",),
        scaling: str = "",
        label_column: int | str = -1,
    ) -> str:
        """Secret-share a labelled data set; returns its id.

        ``features`` is an array (with integer ``labels``), a
        :class:`~ppml.training.datasets.Dataset`, a CSV path, or a built-in
        name (iris, digits, breast_cancer, wine). Rows are checked here
        (empty, NaN/inf, label range) and labels one-hot encoded before
        sharing. ``allow`` lists the identities (besides you) that may train
        on it or evaluate against it; ``"*"`` is any client of the cluster.
        ``scaling`` documents any public scaling you applied.
        """
        try:
            data, feature_shape = dataset_upload.as_dataset(
                features, labels, num_classes, label_column
            )
        except DatasetError as exc:
            raise InvalidDataset(str(exc)) from None
        dataset_id = dataset_id or uuid.uuid4().hex[:16]
        meta = dataset_upload.header(data, feature_shape, dataset_id, name, tuple(allow), scaling)
        sharer = dataset_upload.ChunkSharer(data, meta, self.parties)
        try:
            self._call_all(
                lambda s, rank: s.datasets.UploadDataset.future(
                    sharer.stream(rank), timeout=max(self.timeout, 600), metadata=self._metadata
                ),
                fail_fast=False,
            )
        except PpmlClientError:
            self._quietly(
                lambda s: s.datasets.DeleteDataset(
                    datasets_pb2.DeleteDatasetRequest(dataset_id=dataset_id),
                    timeout=10,
                    metadata=self._metadata,
                )
            )
            raise
        return dataset_id

    def list_datasets(self) -> list[DatasetListing]:
        replies = self._retry(
            lambda: self._call_all(
                lambda s, _: s.datasets.ListDatasets.future(
                    datasets_pb2.ListDatasetsRequest(),
                    timeout=self.timeout,
                    metadata=self._metadata,
                )
            )
        )
        holders: dict[str, list[str]] = {}
        metas: dict[str, DatasetMeta] = {}
        for server, reply in zip(self._servers, replies, strict=True):
            for info in reply.datasets:
                metas.setdefault(info.dataset_id, serde.dataset_meta_from_proto(info))
                holders.setdefault(info.dataset_id, []).append(server.name)
        return [
            DatasetListing(metas[k], tuple(v), len(v) == self.parties) for k, v in holders.items()
        ]

    def delete_dataset(self, dataset_id: str) -> None:
        """Owner only."""
        request = datasets_pb2.DeleteDatasetRequest(dataset_id=dataset_id)
        self._call_all(
            lambda s, _: s.datasets.DeleteDataset.future(
                request, timeout=self.timeout, metadata=self._metadata
            ),
            fail_fast=False,
        )

    # ------------------------------------------------------------ training

    def train(
        self,
        model: ModelSource,
        datasets: Sequence[str],
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        loss: str = "cross_entropy",
        optimizer: str = "sgd",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        validation: str | None = None,
        reveal_metrics: bool = False,
        standardize: bool = False,
        seed: int | None = None,
        name: str = "",
        model_id: str | None = None,
        job_id: str | None = None,
        sample_input: torch.Tensor | None = None,
    ) -> TrainingJob:
        """Train ``model``'s architecture in MPC on shared data sets, from its current weights.

        The architecture and hyper-parameters are public; the initial weights
        are secret-shared here. Returns at once with a :class:`TrainingJob`;
        the servers validate everything before any MPC work starts.
        """
        if isinstance(datasets, str):
            raise InvalidTrainingJob("datasets must be a list of dataset ids")
        if sample_input is None and isinstance(model, torch.nn.Module) and datasets:
            first = self._servers[0]
            try:
                info = first.datasets.GetDataset(
                    datasets_pb2.GetDatasetRequest(dataset_id=datasets[0]),
                    timeout=self.timeout,
                    metadata=self._metadata,
                )
            except grpc.RpcError as err:
                raise from_rpc_error(err, first.name) from None
            sample_input = torch.zeros(1, *info.feature_shape)
            try:
                with torch.no_grad():
                    model(sample_input)
            except RuntimeError as exc:
                raise InvalidTrainingJob(
                    f"the model does not accept rows of dataset {datasets[0]!r} "
                    f"(shape {list(info.feature_shape)}): {exc}"
                ) from None
        architecture, weights = export_model(model, sample_input)
        spec = jobs.TrainingSpec(
            dataset_ids=tuple(datasets),
            validation_id=validation or "",
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            loss=loss,
            optimizer=optimizer,
            reveal_metrics=reveal_metrics,
            seed=secrets.randbits(63) if seed is None else seed,
            standardize=standardize,
        )
        job_id = job_id or uuid.uuid4().hex[:16]
        model_id = model_id or f"{job_id}-model"
        per_server: list[dict[str, shares.Ring]] = [{} for _ in self._servers]
        for param, value in weights.items():
            for rank, part in enumerate(shares.share(shares.encode(value), self.parties)):
                per_server[rank][param] = part
        arch_msg = serde.architecture_to_proto(architecture)
        spec_msg = serde.training_spec_to_proto(spec)

        def start(server: _Server, rank: int) -> grpc.Future:
            request = training_pb2.StartTrainingRequest(
                job_id=job_id,
                model_id=model_id,
                name=name,
                architecture=arch_msg,
                initial_parameters=serde.named_shares_to_proto(per_server[rank]),
                spec=spec_msg,
            )
            return server.training.StartTraining.future(
                request, timeout=self.timeout, metadata=self._metadata
            )

        try:
            self._call_all(start, fail_fast=False)
        except PpmlClientError:
            self._quietly(
                lambda s: s.training.CancelJob(
                    training_pb2.CancelJobRequest(job_id=job_id),
                    timeout=30,
                    metadata=self._metadata,
                )
            )
            raise
        return self.job(job_id, model_id)

    def job(self, job_id: str, model_id: str = "") -> TrainingJob:
        """A handle on an existing job (e.g. one started from another process)."""
        if not model_id:
            first = self._servers[0]
            try:
                reply = first.training.GetJob(
                    training_pb2.GetJobRequest(job_id=job_id), timeout=30, metadata=self._metadata
                )
            except grpc.RpcError as err:
                raise from_rpc_error(err, first.name) from None
            model_id = reply.model_id
        return TrainingJob(
            job_id,
            model_id,
            self._servers,
            self._metadata,
            lambda call, fail_fast: self._call_all(call, fail_fast),
        )

    def list_jobs(self) -> list[jobs.JobInfo]:
        """Every job the first server knows (state as it sees it), oldest first."""
        reply = self._retry(
            lambda: self._call_all(
                lambda s, _: s.training.ListJobs.future(
                    training_pb2.ListJobsRequest(), timeout=self.timeout, metadata=self._metadata
                )
            )
        )
        return [serde.job_info_from_proto(info) for info in reply[0].jobs]

    def evaluate(self, model_id: str, dataset_id: str, timeout: float | None = None) -> Evaluation:
        """Accuracy of a model on a shared data set: only the correct count is revealed, here."""
        request_id = uuid.uuid4().hex
        request = training_pb2.EvaluateRequest(
            request_id=request_id, model_id=model_id, dataset_id=dataset_id
        )
        replies = self._call_all(
            lambda s, _: s.training.Evaluate.future(
                request, timeout=timeout or max(self.timeout, 300), metadata=self._metadata
            )
        )
        parts = [serde.share_from_proto(r.correct, what="correct") for r in replies]
        correct = round(float(shares.decode(shares.reconstruct(parts)).reshape(-1)[0]))
        return Evaluation(correct, int(replies[0].rows))

    def _quietly(self, call: Callable[[_Server], object]) -> None:
        for server in self._servers:
            with contextlib.suppress(grpc.RpcError):
                call(server)

    # ------------------------------------------------------------ inference

    def predict(
        self, model_id: str, x: torch.Tensor | np.ndarray, timeout: float | None = None
    ) -> torch.Tensor:
        """Encrypted prediction: returns the reconstructed output as a float tensor."""
        return self.predict_detailed(model_id, x, timeout).output

    def predict_detailed(
        self, model_id: str, x: torch.Tensor | np.ndarray, timeout: float | None = None
    ) -> Prediction:
        array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        parts = shares.share(shares.encode(array), self.parties)
        request_id = uuid.uuid4().hex
        deadline = timeout or self.timeout

        def send(server: _Server, rank: int) -> grpc.Future:
            request = inference_pb2.PredictRequest(
                request_id=request_id, model_id=model_id, input=serde.share_to_proto(parts[rank])
            )
            return server.inference.Predict.future(
                request, timeout=deadline, metadata=self._metadata
            )

        replies: list[inference_pb2.PredictResponse] = self._call_all(send)
        outputs = [serde.share_from_proto(r.output, what="output") for r in replies]
        value = shares.decode(shares.reconstruct(outputs))
        return Prediction(
            torch.from_numpy(value).float(), min(r.batch_requests for r in replies), request_id
        )

    # ------------------------------------------------------------ monitoring

    def status(self) -> list[StatusReport]:
        replies = self._call_all(
            lambda s, _: s.status.GetStatus.future(
                status_pb2.GetStatusRequest(), timeout=10, metadata=self._metadata
            ),
            fail_fast=False,
        )
        return [serde.status_from_proto(r) for r in replies]

    def health(self) -> dict[str, bool]:
        """Each server's grpc.health.v1 answer (False when unreachable)."""
        result = {}
        for server in self._servers:
            try:
                reply = server.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                result[server.name] = reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                result[server.name] = False
        return result

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.health().values()):
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"cluster not SERVING after {timeout}s: {self.health()}")
            time.sleep(0.2)

    def close(self) -> None:
        for server in self._servers:
            server.channel.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cluster({', '.join(s.name for s in self._servers)})"
