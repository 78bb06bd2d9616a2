"""Thin gRPC servicer of CKKS inference (proto/ppml/v1/he.proto): proto in, one call, proto out."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import grpc

from ppml.proto.errors import ErrorCode, PpmlError
from ppml.servers.api.auth import current_identity
from ppml.servers.he.contexts import ContextHeader, ContextInfo
from ppml.servers.he.models import HeModel
from ppml.servers.he.service import HeService
from ppml.v1 import he_pb2, he_pb2_grpc


def _caller() -> str:
    identity = current_identity()
    return identity.name if identity else "anonymous"


def _context(info: ContextInfo) -> he_pb2.ContextInfo:
    return he_pb2.ContextInfo(
        param_set=info.param_set,
        fingerprint=info.fingerprint,
        stored_bytes=info.stored_bytes,
        created_at=info.created_at,
    )


def _model(model: HeModel) -> he_pb2.HeModelInfo:
    single, batch = model.compiled["single"], model.compiled["batch"]
    slots = single.params.slots
    return he_pb2.HeModelInfo(
        model_id=model.model_id,
        name=model.name,
        owner=model.owner,
        param_set=model.param_set,
        input_shape=list(model.plan.input_shape),
        output_size=model.plan.output_size,
        depth=model.plan.depth,
        single_images_per_group=single.layout.images_per_group(slots),
        single_ciphertexts=single.layout.ciphertexts,
        batch_images_per_group=batch.layout.images_per_group(slots),
        batch_ciphertexts=batch.layout.ciphertexts,
        allowed=list(model.allowed),
        skeleton=model.plan.skeleton().to_bytes(),
    )


def _parts(
    first: he_pb2.ContextChunk, rest: Iterator[he_pb2.ContextChunk]
) -> Iterator[tuple[str, bytes]]:
    for index, chunk in enumerate(itertools.chain([first], rest)):
        if index > 0 and chunk.param_set:
            raise PpmlError(ErrorCode.INVALID_ARGUMENT, "only the first chunk may carry a header")
        if chunk.data:
            yield chunk.part, chunk.data


class HeInferenceServicer(he_pb2_grpc.HeInferenceServicer):
    def __init__(self, service: HeService) -> None:
        self._service = service

    def UploadContext(
        self, request_iterator: Iterator[he_pb2.ContextChunk], context: grpc.ServicerContext
    ) -> he_pb2.ContextInfo:
        first = next(request_iterator, None)
        if first is None or not first.param_set:
            raise PpmlError(
                ErrorCode.INVALID_CONTEXT, "the first chunk must name the parameter set"
            )
        header = ContextHeader(
            first.param_set, first.poly_modulus_degree, tuple(first.coeff_mod_bit_sizes)
        )
        info = self._service.contexts.upload(_caller(), header, _parts(first, request_iterator))
        return _context(info)

    def GetContext(
        self, request: he_pb2.GetContextRequest, context: grpc.ServicerContext
    ) -> he_pb2.ContextInfo:
        return _context(self._service.contexts.info(_caller(), request.param_set))

    def DeleteContext(
        self, request: he_pb2.GetContextRequest, context: grpc.ServicerContext
    ) -> he_pb2.ContextInfo:
        return _context(self._service.contexts.delete(_caller(), request.param_set))

    def RegisterModel(
        self, request: he_pb2.RegisterHeModelRequest, context: grpc.ServicerContext
    ) -> he_pb2.HeModelInfo:
        model = self._service.models.register(
            request.model_id,
            request.name,
            _caller(),
            request.param_set,
            request.plan,
            tuple(request.allowed),
        )
        return _model(model)

    def ListModels(
        self, request: he_pb2.ListHeModelsRequest, context: grpc.ServicerContext
    ) -> he_pb2.ListHeModelsResponse:
        return he_pb2.ListHeModelsResponse(
            models=[_model(m) for m in self._service.models.list(_caller())]
        )

    def DeleteModel(
        self, request: he_pb2.DeleteHeModelRequest, context: grpc.ServicerContext
    ) -> he_pb2.HeModelInfo:
        return _model(self._service.models.delete(request.model_id, _caller()))

    def Predict(
        self, request: he_pb2.HePredictRequest, context: grpc.ServicerContext
    ) -> he_pb2.HePredictResponse:
        result = self._service.predict(
            _caller(),
            request.model_id,
            request.layout,
            request.context_fingerprint,
            request.rows,
            list(request.ciphertexts),
        )
        return he_pb2.HePredictResponse(
            ciphertexts=result.ciphertexts,
            groups=len(result.ciphertexts),
            server_seconds=result.seconds,
            first_row=result.first_row,
            batch_requests=result.batch_requests,
        )
