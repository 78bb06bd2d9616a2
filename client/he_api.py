""":class:`ppml.client.Cluster`'s single-server CKKS inference methods.

A different trust model from MPC (docs/architecture.md, "CKKS inference"):
one server evaluates *its owner's plaintext model* on the client's
ciphertexts. The client's keys are made and kept here
(:mod:`ppml.client.he_keys`); the server gets the public evaluation keys once
per identity and parameter set, then only ciphertexts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
import torch

from ppml.client.errors import ContextNotFound, InputShapeMismatch, from_rpc_error
from ppml.client.he_compile import compile_plan
from ppml.client.he_keys import ClientKeys
from ppml.client.transport import ClusterBase, ServerStubs
from ppml.proto.he import layout as slots_layout
from ppml.proto.he.params import DEFAULT_PARAM_SET, param_set
from ppml.proto.he.plan import HePlan
from ppml.v1 import he_pb2

T = TypeVar("T")
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class HePrediction:
    output: torch.Tensor
    layout: str
    seconds: float  # the whole call, encryption and decryption included
    server_seconds: float
    bytes_up: int
    bytes_down: int
    batch_requests: int = 1  # concurrent requests of yours that shared the evaluation


@dataclass(frozen=True)
class HeModelInfo:
    model_id: str
    name: str
    owner: str
    param_set: str
    input_shape: tuple[int, ...]
    output_size: int
    depth: int
    skeleton: HePlan

    @staticmethod
    def from_proto(info: he_pb2.HeModelInfo) -> HeModelInfo:
        return HeModelInfo(
            info.model_id,
            info.name,
            info.owner,
            info.param_set,
            tuple(info.input_shape),
            info.output_size,
            info.depth,
            HePlan.from_bytes(info.skeleton),
        )


class HeMixin(ClusterBase):
    """CKKS inference on one server (rank 0 unless ``server`` says otherwise)."""

    he_key_dir: Path | None = None

    def _he_call(self, server: int, call: Callable[[ServerStubs], T]) -> T:
        stubs = self._servers[server]
        try:
            return call(stubs)
        except grpc.RpcError as e:
            raise from_rpc_error(e, stubs.name) from None

    def _he_keys(self, set_name: str) -> ClientKeys:
        cache: dict[str, ClientKeys] = self.__dict__.setdefault("_he_key_cache", {})
        if set_name not in cache:
            folder = self.he_key_dir or Path.home() / ".ppml" / "ckks" / self._identity_tag()
            cache[set_name] = ClientKeys(folder, set_name)
        return cache[set_name]

    def _identity_tag(self) -> str:
        import hashlib

        token = dict(self._metadata).get("authorization", "")
        return hashlib.sha256(token.encode()).hexdigest()[:16]

    def he_register(
        self,
        model: torch.nn.Module,
        input_shape: Sequence[int],
        name: str = "",
        model_id: str | None = None,
        param_set_name: str = DEFAULT_PARAM_SET,
        allow: Sequence[str] = (),
        server: int = 0,
    ) -> str:
        """Register *your own* plaintext model for CKKS serving on one server.

        The server sees the weights in the clear: this is for a model the
        server's operator may know (its own). The plan is checked here and
        there: activations must be :class:`ppml.client.he_compile.Square`, and
        the model's depth must fit the parameter set.
        """
        plan = compile_plan(model, tuple(input_shape))
        model_id = model_id or uuid.uuid4().hex[:16]
        request = he_pb2.RegisterHeModelRequest(
            model_id=model_id,
            name=name,
            param_set=param_set_name,
            plan=plan.to_bytes(),
            allowed=list(allow),
        )
        self._he_call(
            server,
            lambda s: s.he.RegisterModel(request, timeout=self.timeout, metadata=self._metadata),
        )
        return model_id

    def he_models(self, server: int = 0) -> list[HeModelInfo]:
        reply = self._he_call(
            server,
            lambda s: s.he.ListModels(
                he_pb2.ListHeModelsRequest(), timeout=self.timeout, metadata=self._metadata
            ),
        )
        return [HeModelInfo.from_proto(m) for m in reply.models]

    def he_delete(self, model_id: str, server: int = 0) -> None:
        """Owner only: stop serving a CKKS model and remove its plan from the server."""
        request = he_pb2.DeleteHeModelRequest(model_id=model_id)
        self._he_call(
            server,
            lambda s: s.he.DeleteModel(request, timeout=self.timeout, metadata=self._metadata),
        )
        self.__dict__.get("_he_models", {}).pop((model_id, server), None)

    def _he_model(self, model_id: str, server: int) -> HeModelInfo:
        cache: dict[tuple[str, int], HeModelInfo] = self.__dict__.setdefault("_he_models", {})
        if (model_id, server) not in cache:
            for info in self.he_models(server):
                cache[(info.model_id, server)] = info
        if (model_id, server) not in cache:
            from ppml.client.errors import ModelNotFound

            raise ModelNotFound(
                f"no CKKS model {model_id!r} you may use", self._servers[server].name
            )
        return cache[(model_id, server)]

    def he_upload_keys(self, param_set_name: str = DEFAULT_PARAM_SET, server: int = 0) -> str:
        """Upload this identity's public evaluation keys (once); returns their fingerprint."""
        keys = self._he_keys(param_set_name)
        params = keys.params

        def chunks() -> Iterator[he_pb2.ContextChunk]:
            yield he_pb2.ContextChunk(
                param_set=params.name,
                poly_modulus_degree=params.poly_modulus_degree,
                coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
            )
            for part, data in keys.public_parts().items():
                for start in range(0, len(data), CHUNK_BYTES):
                    yield he_pb2.ContextChunk(part=part, data=data[start : start + CHUNK_BYTES])

        reply = self._he_call(
            server,
            lambda s: s.he.UploadContext(
                chunks(), timeout=max(self.timeout, 120.0), metadata=self._metadata
            ),
        )
        uploaded: set[tuple[str, int]] = self.__dict__.setdefault("_he_uploaded", set())
        uploaded.add((reply.fingerprint, server))
        return str(reply.fingerprint)

    def _ensure_keys(self, keys: ClientKeys, server: int) -> None:
        uploaded: set[tuple[str, int]] = self.__dict__.setdefault("_he_uploaded", set())
        if (keys.fingerprint, server) in uploaded:
            return
        try:
            stored = self._he_call(
                server,
                lambda s: s.he.GetContext(
                    he_pb2.GetContextRequest(param_set=keys.params.name),
                    timeout=self.timeout,
                    metadata=self._metadata,
                ),
            )
            if stored.fingerprint == keys.fingerprint:
                uploaded.add((keys.fingerprint, server))
                return
        except ContextNotFound:
            pass
        self.he_upload_keys(keys.params.name, server)

    def predict_ckks(
        self,
        model_id: str,
        x: torch.Tensor | np.ndarray,
        layout: str | None = None,
        server: int = 0,
        timeout: float | None = None,
    ) -> HePrediction:
        """Encrypt ``x`` under this identity's CKKS key, have one server evaluate, decrypt.

        ``layout``: ``"single"`` (one ciphertext per few images; the latency
        layout) or ``"batch"`` (many images per ciphertext; the throughput
        layout); by default ``single`` up to twice its group size, else ``batch``.
        """
        start = time.perf_counter()
        array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        info = self._he_model(model_id, server)
        if array.ndim < 1 or tuple(array.shape[1:]) != info.input_shape or array.shape[0] < 1:
            raise InputShapeMismatch(
                f"CKKS model {model_id} takes rows of shape {info.input_shape}, "
                f"not {tuple(array.shape[1:])}"
            )
        keys = self._he_keys(info.param_set)
        self._ensure_keys(keys, server)
        slots = param_set(info.param_set).slots
        plan = info.skeleton
        if layout is None:
            single = slots_layout.input_layout(plan, "single", slots).images_per_group(slots)
            layout = "single" if array.shape[0] <= 2 * single else "batch"
        where = slots_layout.input_layout(plan, layout, slots)
        features = slots_layout.input_features(plan, array.astype(np.float64))
        per_group = where.images_per_group(slots)
        spans = slots_layout.groups(array.shape[0], per_group)
        blobs = [
            keys.encrypt(vec)
            for span in spans
            for vec in slots_layout.pack(where, features[span.start : span.stop], slots)
        ]
        request = he_pb2.HePredictRequest(
            model_id=model_id,
            layout=layout,
            context_fingerprint=keys.fingerprint,
            rows=array.shape[0],
            ciphertexts=blobs,
        )
        reply = self._he_call(
            server,
            lambda s: s.he.Predict(
                request, timeout=timeout or self.timeout, metadata=self._metadata
            ),
        )
        outputs = [
            slots_layout.unpack(where, keys.decrypt(blob), len(span), info.output_size, skip)
            for span, blob, skip in zip(
                spans, reply.ciphertexts, [reply.first_row] + [0] * len(spans), strict=False
            )
        ]
        return HePrediction(
            torch.from_numpy(np.concatenate(outputs)).float(),
            layout,
            time.perf_counter() - start,
            reply.server_seconds,
            sum(map(len, blobs)),
            sum(map(len, reply.ciphertexts)),
            max(1, reply.batch_requests),
        )
