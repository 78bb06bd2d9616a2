"""Fakes for testing one layer of a server alone: an in-memory server environment."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ppml.proto.deploy.topology import ClusterConfig, DealerConfig, PartyConfig, ServingConfig
from ppml.proto.domain import commands as cmd
from ppml.servers.control.holds import Holds
from ppml.servers.kinds.base import KindEnv
from ppml.servers.mpc.core.model import ModelCache
from ppml.servers.store.datasets import DATASET_CODEC, DatasetRegistry
from ppml.servers.store.federations import FEDERATION_CODEC, FederationManager
from ppml.servers.store.jobs import JOB_CODEC, JobManager
from ppml.servers.store.metrics import ServerMetrics
from ppml.servers.store.models import ModelRegistry
from ppml.servers.store.storage import MemoryModelStore, MemoryShareStore


def cluster_config(world_size: int = 2, serving: ServingConfig | None = None) -> ClusterConfig:
    parties = tuple(
        PartyConfig(
            rank=rank,
            name="leader" if rank == 0 else f"server-{rank}",
            grpc_address=f"127.0.0.1:{50051 + rank}",
            mpc_address=f"127.0.0.1:{29500 + rank}",
            tls_cert=None,
            tls_key=None,
            data_dir=Path("/nonexistent"),
            auth_file=None,
        )
        for rank in range(world_size)
    )
    return ClusterConfig(
        path=Path("/nonexistent/cluster.toml"),
        name="test",
        ca_cert=None,
        parties=parties,
        dealer=DealerConfig(),
        client_token_file=None,
        monitor_token_file=None,
        serving=serving or ServingConfig(),
    )


def make_env(
    rank: int = 0,
    world_size: int = 2,
    submit: Callable[[cmd.PartyMessage], bool] = lambda message: True,
    serving: bool = True,
    metrics: ServerMetrics | None = None,
    config: ClusterConfig | None = None,
) -> KindEnv:
    models = ModelRegistry(MemoryModelStore())
    datasets = DatasetRegistry(MemoryShareStore(DATASET_CODEC))
    jobs = JobManager("leader", MemoryShareStore(JOB_CODEC), datasets, models, submit)
    return KindEnv(
        rank,
        config or cluster_config(world_size),
        Holds(),
        models,
        datasets,
        jobs,
        metrics or ServerMetrics(),
        ModelCache(),
        submit,
        lambda: serving,
        FederationManager("leader", rank, MemoryShareStore(FEDERATION_CODEC), models, submit),
    )
