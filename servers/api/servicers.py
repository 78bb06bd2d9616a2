"""Thin gRPC servicers: proto in, one domain call, proto out.

No validation, storage or MPC logic lives here; errors are mapped to
gRPC statuses by :class:`ppml.servers.api.errors.ErrorMappingInterceptor`.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterator

import grpc

from ppml.proto.domain import commands as cmd
from ppml.proto.domain.status import StatusReport
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.ids import check_id
from ppml.proto.shares import Ring
from ppml.proto.wire import federations as fed_wire
from ppml.proto.wire import serde
from ppml.servers.api.auth import current_identity
from ppml.servers.control.leader import Leader
from ppml.servers.control.uploads import KINDS, UploadCoordinator, upload_key
from ppml.servers.kinds.evaluate import EvaluationService
from ppml.servers.kinds.predict import InferenceService
from ppml.servers.store.datasets import DatasetRegistry
from ppml.servers.store.federations import FederationManager
from ppml.servers.store.jobs import JobManager
from ppml.servers.store.models import ModelRegistry
from ppml.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    datasets_pb2,
    datasets_pb2_grpc,
    federation_pb2,
    federation_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    status_pb2,
    status_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)


def _owner() -> str:
    identity = current_identity()
    return identity.name if identity else "anonymous"


class RegistryServicer(registry_pb2_grpc.ModelRegistryServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def UploadModel(
        self, request: registry_pb2.UploadModelRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ModelInfo:
        architecture = serde.architecture_from_proto(request.architecture)
        shares = serde.named_shares_from_proto(
            list(request.parameters), architecture.parameter_shapes()
        )
        owner = _owner()
        meta = self._registry.upload(
            request.model_id,
            request.name,
            owner,
            architecture,
            shares,
            tuple(request.allowed),
            upload=upload_key("model", owner, request.upload_id) if request.upload_id else "",
            wait_s=context.time_remaining(),
        )
        return serde.model_meta_to_proto(meta)

    def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ListModelsResponse:
        models = [serde.model_meta_to_proto(m) for m in self._registry.list()]
        return registry_pb2.ListModelsResponse(models=models)

    def GetModel(
        self, request: registry_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ModelInfo:
        return serde.model_meta_to_proto(self._registry.meta(request.model_id))

    def DeleteModel(
        self, request: registry_pb2.DeleteModelRequest, context: grpc.ServicerContext
    ) -> registry_pb2.DeleteModelResponse:
        self._registry.delete(request.model_id, _owner())
        return registry_pb2.DeleteModelResponse()

    def SetModelAccess(
        self, request: registry_pb2.SetModelAccessRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ModelInfo:
        meta = self._registry.set_access(request.model_id, _owner(), tuple(request.allowed))
        return serde.model_meta_to_proto(meta)

    def ExportModel(
        self, request: registry_pb2.ExportModelRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ExportModelResponse:
        model = self._registry.export(request.model_id, _owner())
        return registry_pb2.ExportModelResponse(
            model=serde.model_meta_to_proto(model.meta),
            parameters=serde.named_shares_to_proto(model.shares),
        )


def _chunks(
    first: datasets_pb2.UploadDatasetChunk,
    rest: Iterator[datasets_pb2.UploadDatasetChunk],
) -> Iterator[tuple[Ring, Ring]]:
    for index, chunk in enumerate(itertools.chain([first], rest)):
        if index > 0 and chunk.HasField("header"):
            raise PpmlError(ErrorCode.INVALID_ARGUMENT, "only the first chunk may carry a header")
        if chunk.HasField("features") or chunk.HasField("labels"):
            yield (
                serde.share_from_proto(chunk.features, what=f"chunk {index} features"),
                serde.share_from_proto(chunk.labels, what=f"chunk {index} labels"),
            )


class DatasetRegistryServicer(datasets_pb2_grpc.DatasetRegistryServicer):
    def __init__(self, datasets: DatasetRegistry) -> None:
        self._datasets = datasets

    def UploadDataset(
        self,
        request_iterator: Iterator[datasets_pb2.UploadDatasetChunk],
        context: grpc.ServicerContext,
    ) -> datasets_pb2.DatasetInfo:
        first = next(request_iterator, None)
        if first is None or not first.HasField("header"):
            raise PpmlError(ErrorCode.INVALID_ARGUMENT, "the first chunk must carry a header")
        header = serde.dataset_header_from_proto(first.header, _owner())
        upload_id = first.header.upload_id
        upload = upload_key("dataset", header.owner, upload_id) if upload_id else ""
        chunks = _chunks(first, request_iterator)
        meta = self._datasets.upload(header, chunks, upload, context.time_remaining())
        return serde.dataset_meta_to_proto(meta)

    def ListDatasets(
        self, request: datasets_pb2.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> datasets_pb2.ListDatasetsResponse:
        metas = [serde.dataset_meta_to_proto(m) for m in self._datasets.list()]
        return datasets_pb2.ListDatasetsResponse(datasets=metas)

    def GetDataset(
        self, request: datasets_pb2.GetDatasetRequest, context: grpc.ServicerContext
    ) -> datasets_pb2.DatasetInfo:
        return serde.dataset_meta_to_proto(self._datasets.meta(request.dataset_id))

    def DeleteDataset(
        self, request: datasets_pb2.DeleteDatasetRequest, context: grpc.ServicerContext
    ) -> datasets_pb2.DeleteDatasetResponse:
        self._datasets.delete(request.dataset_id, _owner())
        return datasets_pb2.DeleteDatasetResponse()

    def SetDatasetAccess(
        self, request: datasets_pb2.SetDatasetAccessRequest, context: grpc.ServicerContext
    ) -> datasets_pb2.DatasetInfo:
        meta = self._datasets.set_access(
            request.dataset_id, _owner(), tuple(request.allowed), tuple(request.release)
        )
        return serde.dataset_meta_to_proto(meta)


class TrainingServicer(training_pb2_grpc.TrainingServicer):
    def __init__(self, jobs: JobManager, evaluations: EvaluationService) -> None:
        self._jobs = jobs
        self._evaluations = evaluations

    def StartTraining(
        self, request: training_pb2.StartTrainingRequest, context: grpc.ServicerContext
    ) -> training_pb2.JobInfo:
        architecture = serde.architecture_from_proto(request.architecture)
        initial = serde.named_shares_from_proto(
            list(request.initial_parameters), architecture.parameter_shapes()
        )
        info = self._jobs.start(
            request.job_id,
            request.model_id,
            request.name,
            _owner(),
            architecture,
            initial,
            serde.training_spec_from_proto(request.spec),
        )
        return serde.job_info_to_proto(info)

    def GetJob(
        self, request: training_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> training_pb2.JobInfo:
        return serde.job_info_to_proto(self._jobs.get(request.job_id, _owner()))

    def ListJobs(
        self, request: training_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> training_pb2.ListJobsResponse:
        infos = [serde.job_info_to_proto(i) for i in self._jobs.list(_owner())]
        return training_pb2.ListJobsResponse(jobs=infos)

    def WatchJob(
        self, request: training_pb2.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[training_pb2.JobEvent]:
        events = self._jobs.watch(request.job_id, _owner(), context.is_active)
        for event in events:
            yield serde.job_event_to_proto(event)

    def CancelJob(
        self, request: training_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> training_pb2.JobInfo:
        return serde.job_info_to_proto(self._jobs.cancel(request.job_id, _owner()))

    def Evaluate(
        self, request: training_pb2.EvaluateRequest, context: grpc.ServicerContext
    ) -> training_pb2.EvaluateResponse:
        outcome = self._evaluations.evaluate(
            request.request_id,
            request.model_id,
            request.dataset_id,
            _owner(),
            context.time_remaining(),
        )
        return training_pb2.EvaluateResponse(
            request_id=request.request_id,
            correct=serde.share_to_proto(outcome.correct),
            rows=outcome.rows,
            job_seq=outcome.job_seq,
        )


class FederationServicer(federation_pb2_grpc.FederationServicer):
    def __init__(self, federations: FederationManager) -> None:
        self._federations = federations

    def CreateFederation(
        self, request: federation_pb2.CreateFederationRequest, context: grpc.ServicerContext
    ) -> federation_pb2.FederationInfo:
        architecture = serde.architecture_from_proto(request.architecture)
        spec = fed_wire.spec_from_proto(request.spec)
        initial: dict[str, Ring] = {}
        if spec.backend == "mpc":
            initial = serde.named_shares_from_proto(
                list(request.initial_parameters), architecture.parameter_shapes()
            )
        info = self._federations.create(
            request.federation_id,
            request.model_id,
            request.name,
            _owner(),
            architecture,
            spec,
            initial,
            request.ckks_public_context,
            request.ckks_initial_model,
        )
        return fed_wire.info_to_proto(info)

    def GetFederation(
        self, request: federation_pb2.GetFederationRequest, context: grpc.ServicerContext
    ) -> federation_pb2.FederationInfo:
        return fed_wire.info_to_proto(self._federations.get(request.federation_id, _owner()))

    def ListFederations(
        self, request: federation_pb2.ListFederationsRequest, context: grpc.ServicerContext
    ) -> federation_pb2.ListFederationsResponse:
        infos = [fed_wire.info_to_proto(i) for i in self._federations.list(_owner())]
        return federation_pb2.ListFederationsResponse(federations=infos)

    def WatchFederation(
        self, request: federation_pb2.WatchFederationRequest, context: grpc.ServicerContext
    ) -> Iterator[federation_pb2.FederationEvent]:
        events = self._federations.watch(request.federation_id, _owner(), context.is_active)
        for event in events:
            yield fed_wire.event_to_proto(event)

    def CancelFederation(
        self, request: federation_pb2.CancelFederationRequest, context: grpc.ServicerContext
    ) -> federation_pb2.FederationInfo:
        info = self._federations.cancel(request.federation_id, _owner())
        return fed_wire.info_to_proto(info)

    def GetRound(
        self, request: federation_pb2.GetRoundRequest, context: grpc.ServicerContext
    ) -> federation_pb2.RoundInfo:
        info, shares, sums = self._federations.round_view(
            request.federation_id, _owner(), request.from_round
        )
        return federation_pb2.RoundInfo(
            info=fed_wire.info_to_proto(info),
            global_parameters=serde.named_shares_to_proto(shares),
            ckks_aggregates=[data for _, data in sums],
            ckks_rounds=[round_no for round_no, _ in sums],
        )

    def SubmitUpdate(
        self, request: federation_pb2.SubmitUpdateRequest, context: grpc.ServicerContext
    ) -> federation_pb2.SubmitUpdateResponse:
        info = self._federations.get(request.federation_id, _owner())
        update = serde.named_shares_from_proto(
            list(request.update), info.architecture.parameter_shapes()
        )
        weight = serde.share_from_proto(request.weight, what="weight")
        loss = serde.share_from_proto(request.loss, "loss") if request.HasField("loss") else None
        count = self._federations.submit(
            request.federation_id, _owner(), request.round, update, weight, loss
        )
        return federation_pb2.SubmitUpdateResponse(round=request.round, submitted=count)

    def SubmitEncryptedUpdate(
        self,
        request: federation_pb2.SubmitEncryptedUpdateRequest,
        context: grpc.ServicerContext,
    ) -> federation_pb2.SubmitUpdateResponse:
        count = self._federations.submit_encrypted(
            request.federation_id, _owner(), request.round, request.update
        )
        return federation_pb2.SubmitUpdateResponse(round=request.round, submitted=count)


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, service: InferenceService) -> None:
        self._service = service

    def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictResponse:
        share = serde.share_from_proto(request.input, what="input")
        outcome = self._service.predict(
            request.request_id, request.model_id, share, context.time_remaining(), _owner()
        )
        return inference_pb2.PredictResponse(
            request_id=request.request_id,
            output=serde.share_to_proto(outcome.share),
            batch_requests=outcome.batch_requests,
            job_seq=outcome.job_seq,
        )


class StatusServicer(status_pb2_grpc.StatusServicer):
    def __init__(self, report: Callable[[], StatusReport]) -> None:
        self._report = report

    def GetStatus(
        self, request: status_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> status_pb2.ServerStatus:
        return serde.status_to_proto(self._report())


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    """The leader's end of the control links (only rank 0 registers it)."""

    def __init__(self, leader: Leader, uploads: UploadCoordinator | None = None) -> None:
        self._leader = leader
        self._uploads = uploads

    def ResolveUpload(
        self, request: coordinator_pb2.ResolveUploadRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.ResolveUploadResponse:
        if request.kind not in KINDS:
            raise PpmlError(ErrorCode.INVALID_ARGUMENT, f"kind must be one of {', '.join(KINDS)}")
        if self._uploads is None:
            raise PpmlError(ErrorCode.NOT_READY, "this server decides no uploads")
        upload = upload_key(request.kind, _owner(), request.upload_id)
        record_id = check_id(request.record_id, "record_id")
        decision = self._uploads.resolve(request.kind, record_id, upload)
        return coordinator_pb2.ResolveUploadResponse(
            committed=decision.commit, reason=decision.reason
        )

    def Link(
        self,
        request_iterator: Iterator[coordinator_pb2.PartyMessage],
        context: grpc.ServicerContext,
    ) -> Iterator[coordinator_pb2.LeaderMessage]:
        first = next(request_iterator, None)  # None: the stream ended at once
        hello = None if first is None else serde.party_message_from_proto(first)
        if not isinstance(hello, cmd.Hello):
            raise PpmlError(ErrorCode.INVALID_ARGUMENT, "a link must start with Hello")
        identity = current_identity()
        outbox = self._leader.attach(hello, identity.name if identity else None)
        rank = hello.rank

        def read() -> None:
            try:
                for message in request_iterator:
                    received = serde.party_message_from_proto(message)
                    if isinstance(received, cmd.DealerStats) and hello.role == "dealer":
                        self._leader.record_dealer_stats(received)
                    elif hello.role == "party":
                        self._leader.submit(rank, received)
            except (grpc.RpcError, PpmlError, ValueError):
                pass
            finally:
                self._leader.detach(rank, outbox)
                outbox.put(None)

        threading.Thread(target=read, name=f"link-{rank}", daemon=True).start()
        context.add_callback(lambda: outbox.put(None))
        while True:
            try:
                command = outbox.get(timeout=30)
            except queue.Empty:
                if not context.is_active():
                    return
                continue
            if command is None:
                return
            yield serde.leader_command_to_proto(command)
