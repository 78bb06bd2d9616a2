"""The client SDK: secret-share models, data and inputs; reconstruct outputs.

A :class:`Cluster` holds one TLS channel per compute server
(:mod:`ppml.client.transport`). Secrets exist only on the caller's side:
``share_model`` and ``predict`` split every tensor into additive shares with
the OS CSPRNG (:mod:`ppml.proto.shares`) and send share i to server i only;
``predict`` sums the output shares it gets back. Data sets and training live
in :mod:`ppml.client.datasets_api` and :mod:`ppml.client.training_api`.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2

from ppml.client.datasets_api import DatasetListing, DatasetsMixin
from ppml.client.errors import InvalidTokens, ServerUnavailable
from ppml.client.exported import ExportedModel
from ppml.client.federation_api import FederationMixin
from ppml.client.he_api import HeMixin
from ppml.client.input_checks import check_rows
from ppml.client.model_export import ModelSource, export_model
from ppml.client.request_check import check_request
from ppml.client.token_input import TokenRows, encode_tokens
from ppml.client.training_api import Evaluation, TrainingMixin
from ppml.client.transport import Endpoint, ServerStubs
from ppml.proto import shares
from ppml.proto.deploy.topology import ClusterConfig, load_config
from ppml.proto.domain.architecture import Architecture, ModelMeta
from ppml.proto.domain.status import StatusReport
from ppml.proto.wire import serde
from ppml.v1 import inference_pb2, registry_pb2, status_pb2


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


def he_key_dir(
    config: ClusterConfig, token: str, monitor: bool, path: Path, from_file: bool
) -> Path:
    """Where this identity's CKKS keys live: beside its token file, or, for a token passed
    in, in a folder named by the token's hash beside the topology file."""
    token_file = config.monitor_token_file if monitor else config.client_token_file
    if from_file and token_file is not None:
        return token_file.with_name(token_file.name + ".ckks")
    return path.resolve().parent / "ckks-keys" / hashlib.sha256(token.encode()).hexdigest()[:16]


class Cluster(DatasetsMixin, TrainingMixin, FederationMixin, HeMixin):
    """Client of a ppml cluster (all compute servers, in rank order)."""

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
        from_file = token is None
        if token is None:
            token_file = config.monitor_token_file if monitor else config.client_token_file
            token = token_file.read_text().strip() if token_file else ""
        endpoints = [Endpoint(p.name, p.grpc_address) for p in config.parties]
        cluster = cls(endpoints, token, config.ca_cert, timeout, insecure)
        # CKKS keys live beside the identity's token (a token passed in: beside the config)
        cluster.he_key_dir = he_key_dir(config, token, monitor, Path(path), from_file)
        return cluster

    # ------------------------------------------------------------ models

    def share_model(
        self,
        model: ModelSource,
        sample_input: torch.Tensor | None = None,
        name: str = "",
        model_id: str | None = None,
        allow: Sequence[str] = (),
        pad_id: int | None = None,
    ) -> str:
        """Secret-share a torch module (exported via ONNX) or an ONNX file; returns its id.

        Weights are fixed-point encoded and split here; server i receives share i
        only. The upload is all-or-nothing: the servers keep it only once every
        one of them holds its share; if a server refuses or fails, it is dropped
        everywhere (:class:`UploadAborted` when a server failed: safe to retry).
        ``allow`` lists the identities (besides you) that may predict with it
        and evaluate it (``"*"``: any client); by default only you may. Change
        it later with :meth:`grant_model` / :meth:`revoke_model`.

        A token model (an ``nn.Embedding`` on its input) is exported from
        ``sample_input`` integer ids ``(batch, length)``, ``length`` its
        maximum; ``pad_id`` (default: the embedding's ``padding_idx``, else
        0) is what :meth:`predict` pads shorter sequences with.
        """
        architecture, weights = export_model(model, sample_input, pad_id)
        model_id = model_id or uuid.uuid4().hex[:16]
        per_server = shares.share_named(weights, self.parties)
        arch_msg = serde.architecture_to_proto(architecture)
        upload_id = secrets.token_hex(16)

        def upload(server: ServerStubs, rank: int) -> grpc.Future:
            request = registry_pb2.UploadModelRequest(
                model_id=model_id,
                name=name,
                architecture=arch_msg,
                parameters=serde.named_shares_to_proto(per_server[rank]),
                allowed=list(allow),
                upload_id=upload_id,
            )
            return server.registry.UploadModel.future(
                request, timeout=self.timeout, metadata=self._metadata
            )

        self._upload_all(upload, "model", model_id, upload_id)
        return model_id

    def grant_model(self, model_id: str, *identities: str) -> ModelMeta:
        """Owner only: let ``identities`` (or ``"*"``) predict with the model and evaluate it."""
        allowed = self.get_model(model_id).allowed
        added = tuple(i for i in identities if i not in allowed)
        return self.set_model_access(model_id, (*allowed, *added))

    def revoke_model(self, model_id: str, *identities: str) -> ModelMeta:
        """Owner only: withdraw a grant (``"*"`` withdraws the grant to everyone)."""
        allowed = self.get_model(model_id).allowed
        return self.set_model_access(model_id, tuple(i for i in allowed if i not in identities))

    def set_model_access(self, model_id: str, allowed: Sequence[str]) -> ModelMeta:
        """Owner only: replace the identities that may predict with the model and evaluate it."""
        request = registry_pb2.SetModelAccessRequest(model_id=model_id, allowed=list(allowed))
        replies = self._call_all(
            lambda s, _: s.registry.SetModelAccess.future(
                request, timeout=self.timeout, metadata=self._metadata
            ),
            fail_fast=False,
        )
        return serde.model_meta_from_proto(replies[0])

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

    def get_model(self, model_id: str) -> ModelMeta:
        """A model's public metadata (from the first server that has it)."""
        request = registry_pb2.GetModelRequest(model_id=model_id)
        reply = self._retry(
            lambda: self._call_all(
                lambda s, _: s.registry.GetModel.future(
                    request, timeout=self.timeout, metadata=self._metadata
                )
            )
        )[0]
        return serde.model_meta_from_proto(reply)

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

    # ------------------------------------------------------------ inference

    def predict(
        self,
        model_id: str,
        x: torch.Tensor | np.ndarray | TokenRows,
        timeout: float | None = None,
        backend: str = "mpc",
    ) -> torch.Tensor:
        """Encrypted prediction: returns the decrypted output as a float tensor.

        ``backend="mpc"`` (the default) secret-shares ``x`` across every server;
        ``backend="ckks"`` encrypts it under this identity's CKKS key for one
        server's own model (:meth:`predict_ckks`, :meth:`he_register`).
        A token model takes a batch of token-id sequences (ragged lists, or
        an integer array), each at most the model's length: the SDK pads
        them with the model's pad id to that length (the servers never learn
        a sequence's true length) and shares them one-hot.
        """
        if backend == "ckks":
            rows = x if isinstance(x, torch.Tensor | np.ndarray) else np.asarray(x)
            return self.predict_ckks(model_id, rows, timeout=timeout).output
        if backend != "mpc":
            raise ValueError(f"backend must be 'mpc' or 'ckks', not {backend!r}")
        return self.predict_detailed(model_id, x, timeout).output

    def predict_detailed(
        self,
        model_id: str,
        x: torch.Tensor | np.ndarray | TokenRows,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Prediction:
        """The prediction with how it was batched; ``request_id`` is yours to choose or fresh.

        Raises :class:`InputShapeMismatch` before anything is sent when ``x``'s rows do not
        have the model's input shape (read once per model from its public metadata), and
        :class:`InvalidTokens` when a token model's ids do not fit it (:meth:`predict`).
        """
        array = self._input(model_id, x)
        parts = shares.share(shares.encode(array), self.parties)
        request_id = request_id or uuid.uuid4().hex
        requests = [
            inference_pb2.PredictRequest(request_id=request_id, model_id=model_id) for _ in parts
        ]
        for request, part in zip(requests, parts, strict=True):
            serde.share_to_proto(part, out=request.input)  # in place: the data is copied once
        check_request(requests[0])  # the same strings go to every server (InvalidName: none sent)
        deadline = timeout or self.timeout
        calls = [
            functools.partial(server.predict, request, timeout=deadline, metadata=self._metadata)
            for server, request in zip(self._servers, requests, strict=True)
        ]
        replies: list[inference_pb2.PredictResponse] = self._call_each(calls)
        outputs = [serde.share_from_proto(r.output, what="output") for r in replies]
        value = shares.decode(shares.reconstruct(outputs))
        return Prediction(
            torch.from_numpy(value).float(), min(r.batch_requests for r in replies), request_id
        )

    def _input(self, model_id: str, x: torch.Tensor | np.ndarray | TokenRows) -> np.ndarray:
        """``x`` as the model's input rows (a token model's one-hot), checked against it."""
        known: dict[str, Architecture] = self.__dict__.setdefault("_input_architectures", {})
        for fresh in (False, True):  # a cached architecture, then (on a mismatch) a fresh one
            if fresh or model_id not in known:
                known[model_id] = self.get_model(model_id).architecture
            architecture = known[model_id]
            if architecture.tokens is not None:
                try:
                    return encode_tokens(x, architecture.tokens, f"model {model_id}")
                except InvalidTokens:
                    if fresh:
                        raise
                    continue
            array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            if tuple(array.shape[1:]) == tuple(architecture.input_shape):
                return array
        check_rows(architecture.input_shape, array.shape, f"model {model_id}")
        return array

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

    def __repr__(self) -> str:
        return f"Cluster({', '.join(s.name for s in self._servers)})"


__all__ = [
    "Cluster",
    "DatasetListing",
    "Endpoint",
    "Evaluation",
    "ModelListing",
    "ModelSource",
    "Prediction",
]
