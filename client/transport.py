"""The SDK's plumbing: one channel and stub set per compute server, calls to all of them.

:class:`ClusterBase` is what every part of :class:`ppml.client.Cluster` stands
on: the servers in rank order, the caller's bearer token, and helpers that
start one call per server and turn gRPC failures into the SDK's typed errors.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc

from ppml.client.errors import PpmlClientError, ServerUnavailable, from_rpc_error, most_relevant
from ppml.client.request_check import checked_channel
from ppml.proto.deploy.channels import client_channel
from ppml.v1 import (
    datasets_pb2_grpc,
    federation_pb2_grpc,
    inference_pb2_grpc,
    registry_pb2_grpc,
    status_pb2_grpc,
    training_pb2_grpc,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
Self = TypeVar("Self", bound="ClusterBase")


@dataclass(frozen=True)
class Endpoint:
    name: str
    address: str


class ServerStubs:
    """One server's channel and the stub of every service on it."""

    def __init__(self, endpoint: Endpoint, channel: grpc.Channel) -> None:
        self.name = endpoint.name
        self.channel = channel
        self.registry = registry_pb2_grpc.ModelRegistryStub(channel)
        self.inference = inference_pb2_grpc.InferenceStub(channel)
        self.status = status_pb2_grpc.StatusStub(channel)
        self.datasets = datasets_pb2_grpc.DatasetRegistryStub(channel)
        self.training = training_pb2_grpc.TrainingStub(channel)
        self.federation = federation_pb2_grpc.FederationStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)


class ClusterBase:
    """Connections to every compute server of a cluster, in rank order."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        token: str,
        ca_cert: Path | None,
        timeout: float = 60.0,
        insecure: bool = False,
    ) -> None:
        """``ca_cert`` is required: without it every share and token would travel in
        the clear, which only an explicit ``insecure=True`` allows (with a warning)."""
        if len(endpoints) < 2:
            raise ValueError("a cluster has at least two compute servers")
        if ca_cert is None and not insecure:
            raise ValueError(
                "no CA certificate to check the servers with: set [cluster] ca_cert in the "
                "topology file (or pass insecure=True to send shares and tokens in the clear)"
            )
        if insecure:
            log.warning("connecting WITHOUT TLS (insecure): shares and tokens travel in the clear")
            ca_cert = None
        self._servers = [
            ServerStubs(e, checked_channel(client_channel(e.address, ca_cert))) for e in endpoints
        ]
        self._metadata = (("authorization", f"Bearer {token}"),)
        self.timeout = timeout

    @property
    def parties(self) -> int:
        return len(self._servers)

    @property
    def server_names(self) -> list[str]:
        return [s.name for s in self._servers]

    # ------------------------------------------------------------ plumbing

    def _call_all_or_undo(
        self,
        call: Callable[[ServerStubs, int], grpc.Future],
        undo: Callable[[ServerStubs], object],
    ) -> list[Any]:
        """Like :meth:`_call_all`, but if any server fails, undo the call where it succeeded.

        Only there: a server that refused may have refused because the id
        belongs to someone else, whose object must not be touched.
        """
        done: list[bool] = [False] * len(self._servers)

        def tracked(server: ServerStubs, rank: int) -> grpc.Future:
            future = call(server, rank)
            future.add_done_callback(
                lambda f, r=rank: done.__setitem__(r, f.exception() is None)
            )
            return future

        try:
            return self._call_all(tracked, fail_fast=False)
        except PpmlClientError:
            for rank, server in enumerate(self._servers):
                if done[rank]:
                    with contextlib.suppress(grpc.RpcError):
                        undo(server)
            raise

    def _call_all(
        self,
        call: Callable[[ServerStubs, int], grpc.Future],
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

    def close(self) -> None:
        for server in self._servers:
            server.channel.close()

    def __enter__(self: Self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
