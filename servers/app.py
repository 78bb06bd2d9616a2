"""One compute server: gRPC front + one MPC party, wired together."""

from __future__ import annotations

import logging
import threading
from importlib import metadata

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ppml.proto.deploy.tokens import load_auth_file
from ppml.proto.deploy.topology import ClusterConfig
from ppml.proto.domain import commands as cmd
from ppml.proto.domain.status import FastPool, StatusReport
from ppml.servers import kinds
from ppml.servers.api.auth import TokenAuthInterceptor
from ppml.servers.api.errors import ErrorMappingInterceptor
from ppml.servers.api.he_servicer import HeInferenceServicer
from ppml.servers.api.prometheus import MetricsEndpoint, make_registry, serve_metrics
from ppml.servers.api.request_strings import RequestStringsInterceptor
from ppml.servers.api.server import ServerTls, create_server
from ppml.servers.api.servicers import (
    CoordinatorServicer,
    DatasetRegistryServicer,
    FederationServicer,
    InferenceServicer,
    RegistryServicer,
    StatusServicer,
    TrainingServicer,
)
from ppml.servers.control.follower import Follower
from ppml.servers.control.holds import Holds
from ppml.servers.control.leader import Leader
from ppml.servers.control.uploads import UploadCoordinator, UploadGate
from ppml.servers.he.contexts import ContextStore
from ppml.servers.he.models import HeModelRegistry
from ppml.servers.he.service import HeService
from ppml.servers.kinds.base import KindEnv
from ppml.servers.kinds.evaluate import EvaluationService
from ppml.servers.kinds.predict import InferenceService
from ppml.servers.mpc import epochs
from ppml.servers.mpc.core.model import ModelCache
from ppml.servers.mpc.fast.service.party import FastInference
from ppml.servers.mpc.rep3.service import aggregate as replicated_aggregate
from ppml.servers.mpc.rep3.service import party as replicated
from ppml.servers.mpc.rep3.service import spec as replicated_spec
from ppml.servers.mpc.rep3.service import training as replicated_training
from ppml.servers.mpc.worker import JobCallback, JoinCallback, MpcWorker
from ppml.servers.store.datasets import DATASET_CODEC, DatasetRegistry
from ppml.servers.store.federations import FEDERATION_CODEC, FederationManager
from ppml.servers.store.jobs import JOB_CODEC, JobManager
from ppml.servers.store.limits import Limits
from ppml.servers.store.metrics import ServerMetrics
from ppml.servers.store.models import ModelRegistry
from ppml.servers.store.storage import FileModelStore, FileShareStore
from ppml.v1 import (
    coordinator_pb2_grpc,
    datasets_pb2_grpc,
    federation_pb2_grpc,
    he_pb2_grpc,
    inference_pb2_grpc,
    registry_pb2_grpc,
    status_pb2_grpc,
    training_pb2_grpc,
)

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return metadata.version("ppml")
    except metadata.PackageNotFoundError:
        return "dev"


class ComputeServer:
    """Builds and runs rank ``rank`` of the cluster described by ``config``."""

    def __init__(self, config: ClusterConfig, rank: int, insecure: bool = False) -> None:
        party = config.party(rank)
        self.config = config
        self.rank = rank
        self.tls = not insecure
        self.metrics = ServerMetrics()
        self.holds = Holds(config.serving.request_id_window_s)
        model_store = FileModelStore(party.data_dir)
        dataset_store = FileShareStore(party.data_dir, DATASET_CODEC)
        limits = Limits(config.limits, config.serving.max_batch_rows, model_store, dataset_store)
        self.uploads = UploadGate({"dataset": dataset_store, "model": model_store}, self._submit)
        self.registry = ModelRegistry(
            model_store,
            limits,
            gate=self.uploads,
            refuse=None if config.has_dealer else replicated_spec.unsupported,
        )
        self.datasets = DatasetRegistry(dataset_store, limits, gate=self.uploads)
        self.upload_coordinator: UploadCoordinator | None = None
        self.leader: Leader | None = None
        self.follower: Follower | None = None
        self.jobs = JobManager(
            party.name,
            FileShareStore(party.data_dir, JOB_CODEC),
            self.datasets,
            self.registry,
            self._submit,
            config.limits,
            None if config.has_dealer else replicated_training.unsupported_training,
        )
        self.federations = FederationManager(
            party.name,
            rank,
            FileShareStore(party.data_dir, FEDERATION_CODEC),
            self.registry,
            self._submit,
            config.limits,
            None if config.has_dealer else replicated_aggregate.unsupported_federation,
        )
        serving = config.serving
        self.fast = (
            FastInference(serving.max_batch_rows, serving.fast_pool_bundles)
            if config.world_size == 2 and serving.fast_inference and config.has_dealer
            else None
        )
        self.replicated = None if config.has_dealer else replicated.ReplicatedInference()
        env = KindEnv(
            rank,
            config,
            self.holds,
            self.registry,
            self.datasets,
            self.jobs,
            self.metrics,
            ModelCache(),
            self._submit,
            lambda: self.worker.serving,
            self.federations,
            self.fast,
            self.replicated,
        )
        self.kinds = kinds.build(env)
        if rank == 0:
            self.leader = Leader(
                config,
                lambda command: self.worker.submit(command),
                self.holds,
                kinds.planners(self.kinds, config.world_size),
            )
            self.upload_coordinator = UploadCoordinator(
                config.world_size,
                self.uploads,
                self.leader.send_upload_decision,
                config.limits.upload_max_s,
            )
            self.leader.on_staged = self.upload_coordinator.staged
            on_joined: JoinCallback = self.leader.on_joined
            on_job_done: JobCallback = self.leader.on_job_done
        else:
            token = party.peer_token_file.read_text().strip() if party.peer_token_file else ""
            self.follower = Follower(
                config,
                rank,
                lambda command: self.worker.submit(command),
                lambda: self.worker.leave(),
                self.holds,
                kinds.job_types(),
                token,
                insecure,
            )
            self.follower.on_lost(self.jobs.fail_active)
            self.follower.on_lost(self.federations.fail_active)
            self.follower.on_upload = self.uploads.apply
            on_joined, on_job_done = (lambda epoch, ok, error: None), (lambda run, ok, sound: None)
        epochs.identity(config, rank)  # the MPC links' TLS material must exist: fail now
        self.worker = MpcWorker(
            rank,
            lambda tag: epochs.session_params(config, rank, tag),
            self.metrics,
            self.kinds,
            on_joined,
            on_job_done,
        )
        self.inference = InferenceService(env)
        # single-server CKKS inference: this server's own models, the clients' public keys
        self.he = HeService(ContextStore(party.data_dir), HeModelRegistry(party.data_dir))
        self.evaluations = EvaluationService(env)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self._stop = threading.Event()
        if party.auth_file is None and not insecure:
            raise ValueError(
                f"{party.name}: no auth_file in the topology: refusing to accept every caller "
                "(give it an auth file, or run with --insecure for a throwaway test)"
            )
        self._auth = load_auth_file(party.auth_file) if party.auth_file is not None else None
        self.server, self.port = self._build_server(insecure)
        self.metrics_endpoint: MetricsEndpoint | None = None

    def _submit(self, message: cmd.PartyMessage) -> bool:
        """Send an announcement or cancel request to the leader (rank 0: itself)."""
        if self.leader is not None:
            return self.leader.submit(self.rank, message)
        assert self.follower is not None
        return self.follower.submit(message)

    def _build_server(self, insecure: bool) -> tuple[grpc.Server, int]:
        cfg = self.config.party(self.rank)
        interceptors: list[grpc.ServerInterceptor] = [ErrorMappingInterceptor()]
        if self._auth is not None:
            interceptors.append(TokenAuthInterceptor(self._auth))
        else:
            log.warning("no auth_file for %s: every caller is accepted", cfg.name)
        interceptors.append(RequestStringsInterceptor())  # inside the error mapping
        registrations = [
            lambda s: registry_pb2_grpc.add_ModelRegistryServicer_to_server(
                RegistryServicer(self.registry), s
            ),
            lambda s: inference_pb2_grpc.add_InferenceServicer_to_server(
                InferenceServicer(self.inference), s
            ),
            lambda s: datasets_pb2_grpc.add_DatasetRegistryServicer_to_server(
                DatasetRegistryServicer(self.datasets), s
            ),
            lambda s: training_pb2_grpc.add_TrainingServicer_to_server(
                TrainingServicer(self.jobs, self.evaluations), s
            ),
            lambda s: federation_pb2_grpc.add_FederationServicer_to_server(
                FederationServicer(self.federations), s
            ),
            lambda s: he_pb2_grpc.add_HeInferenceServicer_to_server(
                HeInferenceServicer(self.he), s
            ),
            lambda s: status_pb2_grpc.add_StatusServicer_to_server(StatusServicer(self.report), s),
            lambda s: health_pb2_grpc.add_HealthServicer_to_server(self.health, s),
        ]
        if self.leader is not None:
            leader, uploads = self.leader, self.upload_coordinator
            registrations.append(
                lambda s: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
                    CoordinatorServicer(leader, uploads), s
                )
            )
        tls = None
        if not insecure:
            if cfg.tls_cert is None or cfg.tls_key is None:
                raise ValueError(f"{cfg.name}: tls_cert and tls_key are required (or --insecure)")
            tls = ServerTls(cfg.tls_cert, cfg.tls_key)
        limits = self.config.limits
        return create_server(
            registrations,
            cfg.grpc_address,
            tls,
            interceptors,
            limits.max_concurrent_rpcs,
            limits.max_message_mb,
        )

    def report(self) -> StatusReport:
        snap = self.metrics.snapshot()
        epoch = self.worker.epoch
        queued = len(self.holds) + (self.leader.backlog if self.leader else 0)
        party = self.config.party(self.rank)
        dealer = cmd.DealerStats({}, 0)
        if self.leader is not None:
            links_up, dealer_connected = self.leader.links_up, self.leader.dealer_connected
            dealer = self.leader.dealer_stats
        else:
            assert self.follower is not None
            links_up, dealer_connected = self.follower.links_up, False
        return StatusReport(
            rank=self.rank,
            world_size=self.config.world_size,
            version=_version(),
            uptime_s=snap.uptime_s,
            tls=self.tls,
            serving=self.worker.serving,
            mpc_epoch=epoch or 0,
            last_error=snap.last_error,
            queue_depth=queued,
            models_stored=len(self.registry),
            datasets_stored=len(self.datasets),
            training_jobs=self.jobs.counts(),
            heartbeats=snap.heartbeats,
            requests_total=snap.requests_total,
            models=snap.models,
            batch_sizes=snap.batch_sizes,
            mpc_cost=snap.job_costs,
            errors=snap.errors,
            name=party.name,
            grpc_address=party.grpc_address,
            links_up=links_up,
            dealer_connected=dealer_connected,
            dealer_requests=dealer.requests,
            dealer_sessions=dealer.sessions,
            running_job=self.worker.running,
            fast_pool=self.fast.stats() if self.fast is not None else FastPool(),
            he_models=self.he.serving(),
            he_contexts=self.he.contexts.counts(),
        )

    def _watch_health(self) -> None:
        last = None
        while not self._stop.is_set():
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if self.worker.serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            if status != last:
                for service in ("", "ppml.v1.Inference"):
                    self.health.set(service, status)
                last = status
            self._stop.wait(0.1)

    def start(self) -> None:
        for service in ("", "ppml.v1.Inference"):
            self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.leader is not None:
            self.leader.start()
        self.worker.start()
        self.server.start()
        self.uploads.start()
        if self.follower is not None:
            self.follower.start()
        threading.Thread(target=self._watch_health, name="health", daemon=True).start()
        self._start_metrics()
        log.info(
            "%s (rank %d/%d) listening on port %d, TLS %s",
            self.config.party(self.rank).name,
            self.rank,
            self.config.world_size,
            self.port,
            "on" if self.tls else "OFF",
        )

    def _start_metrics(self) -> None:
        party = self.config.party(self.rank)
        if party.metrics_port is None:
            return
        self.metrics_endpoint = serve_metrics(
            make_registry(self.report),
            party.grpc_host,
            party.metrics_port,
            party.tls_cert if self.tls else None,
            party.tls_key if self.tls else None,
            self._auth,
        )
        log.info(
            "Prometheus metrics on %s://%s:%d/metrics",
            "https" if self.tls else "http",
            party.grpc_host,
            self.metrics_endpoint.port,
        )

    def stop(self, grace: float = 2.0) -> None:
        self._stop.set()
        self.uploads.stop()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.worker.stop()
