"""Data fetching for the dashboard: one snapshot of every server, never raising.

A :class:`LiveSource` holds one TLS channel per compute server (from the same
topology file as the SDK) and, every refresh, asks each server in parallel for
its ``grpc.health.v1`` state, its status report and the public metadata of
its models, data sets, training jobs and federations, with the read-only ``monitor`` token
and short timeouts. A server that does not answer becomes a
:class:`ServerSnapshot` with ``error`` set; the others are still shown, and a
server too old to offer a service (UNIMPLEMENTED) just contributes no rows to
it. Only read-only RPCs are called (Check, GetStatus, ListModels,
ListDatasets, ListJobs, ListFederations): the monitor role may not call
anything else.

Snapshots round-trip through JSON (the status and model messages in
protobuf's JSON form, data sets, jobs and federations as the plain records of
:mod:`ppml.dashboard.records`), so a :class:`ReplaySource` can play recorded snapshots
back: that is how the rendering is tested without a cluster.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2

from ppml.client.transport import Endpoint, ServerStubs
from ppml.dashboard import records
from ppml.proto.deploy.channels import client_channel
from ppml.proto.deploy.topology import load_config
from ppml.proto.domain.architecture import ModelMeta
from ppml.proto.domain.status import StatusReport
from ppml.proto.errors import PpmlError
from ppml.proto.wire import serde
from ppml.v1 import (
    datasets_pb2,
    federation_pb2,
    registry_pb2,
    status_pb2,
    training_pb2,
)

TIMEOUT_S = 1.5
# Retry a dead server every ~2 s (gRPC's default backoff grows to 2 min), so a
# restarted server shows up again on the next refreshes.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
HEALTH_NAMES = {
    health_pb2.HealthCheckResponse.SERVING: "SERVING",
    health_pb2.HealthCheckResponse.NOT_SERVING: "NOT_SERVING",
    health_pb2.HealthCheckResponse.UNKNOWN: "UNKNOWN",
}
UNREACHABLE = "UNREACHABLE"
_T = TypeVar("_T")
_TRANSPORT_PREFIX = re.compile(r"^[A-Z_]+: (?:ipv[46]|unix|dns):\S+?: ")


@dataclass(frozen=True)
class ServerSnapshot:
    """What one compute server said at one moment (or why it said nothing)."""

    name: str
    rank: int
    address: str
    health: str  # SERVING | NOT_SERVING | UNKNOWN | UNREACHABLE
    status: StatusReport | None = None
    models: tuple[ModelMeta, ...] = ()
    # why something could not be read, "; "-joined parts like "models: UNAVAILABLE: ..."
    # (status, models, datasets, jobs, federations); "" when all went well
    error: str = ""

    @property
    def up(self) -> bool:
        return self.health == "SERVING"

    @property
    def reachable(self) -> bool:
        return self.health != UNREACHABLE

    def answered(self, what: str) -> bool:
        """Whether ``what`` ("status", "models", "datasets", "jobs" or "federations")
        could be read."""
        if not self.reachable or self.error.startswith("dashboard:"):
            return False
        return not any(part.startswith(f"{what}:") for part in self.error.split("; "))


@dataclass(frozen=True)
class ClusterSnapshot:
    """Every server's snapshot at one refresh, in rank order.

    ``datasets``, ``training_jobs`` and ``federations`` hold one record per
    server and data set (job, federation) that server listed, in rank order
    (see :mod:`ppml.dashboard.records`); empty when no server offers the
    service, and in snapshots recorded before it existed.
    """

    cluster: str
    dealer: str
    taken_at: float  # unix seconds
    servers: tuple[ServerSnapshot, ...]
    datasets: tuple[dict[str, Any], ...] = ()
    training_jobs: tuple[dict[str, Any], ...] = ()
    federations: tuple[dict[str, Any], ...] = ()

    @property
    def leader(self) -> ServerSnapshot | None:
        return self.servers[0] if self.servers else None

    def server(self, name: str) -> ServerSnapshot | None:
        return next((s for s in self.servers if s.name == name), None)


class SnapshotSource(Protocol):
    """Where the app gets its snapshots (a live cluster, or recorded ones)."""

    def fetch(self) -> ClusterSnapshot: ...


# ---------------------------------------------------------------- live cluster


def _describe_rpc_error(err: grpc.RpcError) -> str:
    """``CODE: details``, keeping only the last cause of a connection failure."""
    code = err.code() if hasattr(err, "code") else None
    details = " ".join(str(err.details() if hasattr(err, "details") else err).split())
    # "failed to connect to all addresses; last error: UNKNOWN: ipv4:h:p: Connection refused"
    details = _TRANSPORT_PREFIX.sub("", details.rsplit("last error: ", 1)[-1])
    return f"{code.name if code is not None else 'ERROR'}: {details[:300]}"


def _describe_failure(what: str, err: grpc.RpcError) -> str:
    if hasattr(err, "code") and err.code() == grpc.StatusCode.UNIMPLEMENTED:
        return f"{what}: UNIMPLEMENTED (this server version does not offer it)"
    return f"{what}: {_describe_rpc_error(err)}"


_Calls = tuple[grpc.Future, ...]  # health, status, models, datasets, jobs, federations


@dataclass(frozen=True)
class _Collected:
    """One server's answers: its snapshot, and its data sets', jobs' and federations' records."""

    server: ServerSnapshot
    datasets: list[records.Record] = field(default_factory=list)
    jobs: list[records.Record] = field(default_factory=list)
    federations: list[records.Record] = field(default_factory=list)


class _Endpoint(ServerStubs):
    """One server's stubs (the SDK's), plus what a snapshot records about it."""

    def __init__(self, name: str, rank: int, address: str, channel: grpc.Channel) -> None:
        super().__init__(Endpoint(name, address), channel)
        self.rank = rank
        self.address = address


class LiveSource:
    """Read-only client of every compute server in a topology file."""

    def __init__(
        self,
        config_path: str | Path,
        insecure: bool = False,
        token: str | None = None,
        timeout: float = TIMEOUT_S,
    ) -> None:
        config = load_config(config_path)
        if token is None:
            token_file = config.monitor_token_file
            token = token_file.read_text().strip() if token_file else ""
        ca = None if insecure else config.ca_cert
        self.cluster_name = config.name
        self.dealer_name = config.dealer_name if config.has_dealer else ""  # "": no dealer
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._endpoints = [
            _Endpoint(
                p.name, p.rank, p.grpc_address, client_channel(p.grpc_address, ca, CHANNEL_OPTIONS)
            )
            for p in config.parties
        ]

    def fetch(self) -> ClusterSnapshot:
        """Ask every server at once; never raises."""
        taken_at = time.time()
        calls = [(e, self._start(e)) for e in self._endpoints]  # all in flight at once
        collected = [self._collect_safely(e, c) for e, c in calls]
        return ClusterSnapshot(
            self.cluster_name,
            self.dealer_name,
            taken_at,
            tuple(c.server for c in collected),
            tuple(r for c in collected for r in c.datasets),
            tuple(r for c in collected for r in c.jobs),
            tuple(r for c in collected for r in c.federations),
        )

    def _collect_safely(self, e: _Endpoint, calls: _Calls | Exception) -> _Collected:
        try:
            if isinstance(calls, Exception):
                raise calls
            return self._collect(e, *calls)
        except Exception as exc:  # a bug or odd reply must not take the page down
            error = f"dashboard: {exc!r}"
            return _Collected(ServerSnapshot(e.name, e.rank, e.address, "UNKNOWN", error=error))

    def _start(self, e: _Endpoint) -> _Calls | Exception:
        kwargs: dict[str, Any] = {"timeout": self.timeout, "metadata": self._metadata}
        try:
            return (
                e.health.Check.future(health_pb2.HealthCheckRequest(), timeout=self.timeout),
                e.status.GetStatus.future(status_pb2.GetStatusRequest(), **kwargs),
                e.registry.ListModels.future(registry_pb2.ListModelsRequest(), **kwargs),
                e.datasets.ListDatasets.future(datasets_pb2.ListDatasetsRequest(), **kwargs),
                e.training.ListJobs.future(training_pb2.ListJobsRequest(), **kwargs),
                e.federation.ListFederations.future(
                    federation_pb2.ListFederationsRequest(), **kwargs
                ),
            )
        except Exception as exc:
            return exc

    def _collect(
        self,
        e: _Endpoint,
        health: grpc.Future,
        status: grpc.Future,
        models: grpc.Future,
        datasets: grpc.Future,
        jobs: grpc.Future,
        federations: grpc.Future,
    ) -> _Collected:
        errors: list[str] = []
        try:
            state = HEALTH_NAMES.get(health.result().status, "UNKNOWN")
        except grpc.RpcError as err:
            state = UNREACHABLE
            errors.append(f"health: {_describe_rpc_error(err)}")
        report: StatusReport | None = _read("status", status, serde.status_from_proto, None, errors)
        metas: tuple[ModelMeta, ...] = _read("models", models, _models_from_reply, (), errors)
        dataset_records: list[records.Record] = _read(
            "datasets", datasets, lambda r: records.datasets_from_reply(e.name, r), [], errors
        )
        job_records: list[records.Record] = _read(
            "jobs", jobs, lambda r: records.jobs_from_reply(e.name, r), [], errors
        )
        federation_records: list[records.Record] = _read(
            "federations",
            federations,
            lambda r: records.federations_from_reply(e.name, r),
            [],
            errors,
        )
        if state == UNREACHABLE:  # one line is enough: the same failure every time
            errors = errors[:1]
        server = ServerSnapshot(e.name, e.rank, e.address, state, report, metas, "; ".join(errors))
        return _Collected(server, dataset_records, job_records, federation_records)

    def close(self) -> None:
        for e in self._endpoints:
            e.channel.close()


def _read(
    what: str, call: grpc.Future, parse: Callable[[Any], _T], default: _T, errors: list[str]
) -> _T:
    """``call``'s reply, parsed; ``default`` (and a line in ``errors``) if the call failed."""
    try:
        return parse(call.result())
    except grpc.RpcError as err:
        errors.append(_describe_failure(what, err))
        return default


def _models_from_reply(reply: registry_pb2.ListModelsResponse) -> tuple[ModelMeta, ...]:
    metas = []
    for info in reply.models:
        try:
            metas.append(serde.model_meta_from_proto(info))
        except PpmlError:  # a malformed entry must not hide the others
            continue
    return tuple(metas)


# ---------------------------------------------------------------- recorded snapshots


def snapshot_to_json(snapshot: ClusterSnapshot) -> dict[str, Any]:
    """A JSON-ready dict; status and models in protobuf's JSON form."""
    return {
        "cluster": snapshot.cluster,
        "dealer": snapshot.dealer,
        "taken_at": snapshot.taken_at,
        "datasets": list(snapshot.datasets),
        "training_jobs": list(snapshot.training_jobs),
        "federations": list(snapshot.federations),
        "servers": [
            {
                "name": s.name,
                "rank": s.rank,
                "address": s.address,
                "health": s.health,
                "error": s.error,
                "status": None
                if s.status is None
                else json_format.MessageToDict(serde.status_to_proto(s.status)),
                "models": [
                    json_format.MessageToDict(serde.model_meta_to_proto(m)) for m in s.models
                ],
            }
            for s in snapshot.servers
        ],
    }


def snapshot_from_json(data: dict[str, Any]) -> ClusterSnapshot:
    servers = []
    for s in data["servers"]:
        status = None
        if s.get("status") is not None:
            msg = json_format.ParseDict(
                s["status"], status_pb2.ServerStatus(), ignore_unknown_fields=True
            )
            status = serde.status_from_proto(msg)
        models = tuple(
            serde.model_meta_from_proto(
                json_format.ParseDict(m, registry_pb2.ModelInfo(), ignore_unknown_fields=True)
            )
            for m in s.get("models", [])
        )
        servers.append(
            ServerSnapshot(
                s["name"], s["rank"], s["address"], s["health"], status, models, s.get("error", "")
            )
        )
    return ClusterSnapshot(
        data["cluster"],
        data["dealer"],
        float(data["taken_at"]),
        tuple(servers),
        # absent from snapshots recorded before the dashboard read them
        tuple(data.get("datasets") or ()),
        tuple(data.get("training_jobs") or ()),
        tuple(data.get("federations") or ()),
    )


def save_snapshots(path: str | Path, snapshots: Sequence[ClusterSnapshot]) -> None:
    Path(path).write_text(json.dumps([snapshot_to_json(s) for s in snapshots], indent=1) + "\n")


def load_snapshots(path: str | Path) -> list[ClusterSnapshot]:
    return [snapshot_from_json(item) for item in json.loads(Path(path).read_text())]


class ReplaySource:
    """Plays recorded snapshots back, one per fetch, then keeps returning the last."""

    def __init__(self, snapshots: Sequence[ClusterSnapshot]) -> None:
        if not snapshots:
            raise ValueError("a replay needs at least one snapshot")
        self._snapshots = list(snapshots)
        self._next = 0

    @classmethod
    def from_file(cls, path: str | Path) -> ReplaySource:
        return cls(load_snapshots(path))

    def fetch(self) -> ClusterSnapshot:
        snapshot = self._snapshots[min(self._next, len(self._snapshots) - 1)]
        self._next += 1
        return snapshot
