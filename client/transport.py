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
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc

from ppml.client.errors import (
    DeadlineExceeded,
    PpmlClientError,
    PredictionAborted,
    ServerUnavailable,
    UploadAborted,
    UploadUnresolved,
    from_rpc_error,
    most_relevant,
)
from ppml.client.request_check import checked_channel
from ppml.proto.deploy.channels import client_channel
from ppml.v1 import (
    coordinator_pb2,
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
T = TypeVar("T")
Self = TypeVar("Self", bound="ClusterBase")

# Threads that make blocking calls for :meth:`ClusterBase._call_each`. Not a real
# bound: a thread starts only when every other one is busy. A bound that made one
# server's call wait behind other predictions would leave the servers that did get
# theirs waiting for its share until their deadline.
MAX_CALL_THREADS = 1024


@dataclass(frozen=True)
class Endpoint:
    name: str
    address: str


class ServerStubs:
    """One server's channel and the stub of every service on it.

    Every stub but ``predict`` checks its request's strings before sending
    (:func:`checked_channel`); ``predict``, the hot path, is the raw
    ``Inference/Predict`` method, for callers that :func:`check_request` the
    request themselves, once for all servers.
    """

    def __init__(self, endpoint: Endpoint, raw: grpc.Channel) -> None:
        self.name = endpoint.name
        self.channel = channel = checked_channel(raw)
        self.predict = inference_pb2_grpc.InferenceStub(raw).Predict
        self.registry = registry_pb2_grpc.ModelRegistryStub(channel)
        self.inference = inference_pb2_grpc.InferenceStub(channel)
        self.status = status_pb2_grpc.StatusStub(channel)
        self.datasets = datasets_pb2_grpc.DatasetRegistryStub(channel)
        self.training = training_pb2_grpc.TrainingStub(channel)
        self.federation = federation_pb2_grpc.FederationStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
        self.coordinator = coordinator_pb2_grpc.CoordinatorStub(channel)  # served by rank 0
        self.he = he_pb2_grpc.HeInferenceStub(channel)  # single-server CKKS inference


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
        self._servers = [ServerStubs(e, client_channel(e.address, ca_cert)) for e in endpoints]
        self._metadata = (("authorization", f"Bearer {token}"),)
        self.timeout = timeout
        self._call_threads = futures.ThreadPoolExecutor(MAX_CALL_THREADS, "ppml-call")

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

    def _upload_all(
        self,
        call: Callable[[ServerStubs, int], grpc.Future],
        kind: str,
        record_id: str,
        upload: str,
    ) -> None:
        """Start one upload per server; all-or-nothing, decided by server 0 (the leader).

        The servers keep an upload staged until every one holds it. When any
        server fails, server 0 is asked for the outcome, which aborts the
        upload everywhere unless it was already committed; a committed upload
        is a success even if a server's reply was lost (that server commits
        when it is back). Otherwise the servers' own refusal is raised (e.g.
        :class:`InvalidDataset`), or :class:`UploadAborted` when the cause was
        a server that failed or went away.
        """
        futures = [call(server, rank) for rank, server in enumerate(self._servers)]
        finished: queue.Queue[int] = queue.Queue()
        for rank, future in enumerate(futures):
            future.add_done_callback(lambda _, r=rank: finished.put(r))
        first_error = None
        for _ in futures:
            first_error = self._rpc_error(futures, finished.get())
            if first_error is not None:
                break
        if first_error is None:
            return
        committed, reason = self._resolve_upload(kind, record_id, upload, first_error)
        if committed:
            log.warning(
                "%s %r is committed on every server although %s; a server that did not "
                "answer commits it when it is back",
                kind,
                record_id,
                first_error,
            )
            return
        for future in futures:
            future.cancel()  # aborted: the other servers' streams may stop now
        errors = [e for r in range(len(futures)) if (e := self._rpc_error(futures, r)) is not None]
        failures = (UploadAborted, ServerUnavailable, DeadlineExceeded, PredictionAborted)
        refusals = [e for e in errors if not isinstance(e, failures)]
        if refusals:  # a server said why: that is the error (nothing was kept either)
            raise most_relevant(refusals)
        failed = [e for e in errors if not isinstance(e, UploadAborted)]  # not the consequences
        cause = most_relevant(failed) if failed else first_error
        raise UploadAborted(
            f"the upload of {kind} {record_id!r} did not happen: {cause} ({reason}). "
            "It was dropped on every server and nothing was kept; it is safe to retry."
        ) from cause

    def _rpc_error(self, futures: list[grpc.Future], rank: int) -> PpmlClientError | None:
        """The SDK error of a finished call (None if it succeeded or was cancelled here)."""
        if futures[rank].cancelled():
            return None
        err = futures[rank].exception()
        if isinstance(err, grpc.RpcError):
            return from_rpc_error(err, self._servers[rank].name)
        return None

    def _resolve_upload(
        self, kind: str, record_id: str, upload: str, cause: PpmlClientError
    ) -> tuple[bool, str]:
        """Ask server 0 whether the upload was committed; it aborts it everywhere if not."""
        request = coordinator_pb2.ResolveUploadRequest(
            kind=kind, record_id=record_id, upload_id=upload
        )
        leader = self._servers[0]

        def ask() -> coordinator_pb2.ResolveUploadResponse:
            try:
                return leader.coordinator.ResolveUpload(
                    request, timeout=10, metadata=self._metadata
                )
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE:  # a handshake cut short: down
                    raise ServerUnavailable(f"UNAVAILABLE: {err.details()}", leader.name) from None
                raise from_rpc_error(err, leader.name) from None

        try:
            reply = self._retry(ask, attempts=6)
        except ServerUnavailable as err:
            raise UploadUnresolved(
                f"the upload of {kind} {record_id!r} failed ({cause}) and {leader.name}, which "
                f"decides whether an upload is kept, could not be reached ({err}): the {kind} is "
                "on every server or on none, settled when it is back; list it then, and upload "
                "it again (the same id) if it is missing",
                leader.name,
            ) from err
        return reply.committed, reply.reason

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

    def _call_each(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Make one blocking call per server at once; return the results in rank order.

        The cheaper twin of :meth:`_call_all` for the hot path (no future and no
        gRPC polling thread per call): the calls run on threads kept between
        calls. The first failure is raised at once, as the most relevant of
        the errors known by then; the other calls cannot be cancelled, so they
        end on their own (or when the cluster is closed).
        """
        pending = [self._call_threads.submit(call) for call in calls]
        done, _ = futures.wait(pending, return_when=futures.FIRST_EXCEPTION)
        errors: list[PpmlClientError] = []
        for rank, future in enumerate(pending):
            err = future.exception() if future in done else None
            if isinstance(err, grpc.RpcError):
                errors.append(from_rpc_error(err, self._servers[rank].name))
            elif err is not None:
                raise err
        if errors:
            raise most_relevant(errors)
        return [future.result() for future in pending]

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
            server.channel.close()  # also ends the calls still in flight
        self._call_threads.shutdown(wait=False)

    def __enter__(self: Self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
