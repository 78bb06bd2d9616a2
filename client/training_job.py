"""A training job seen from the client: progress, result, metrics, cancel.

Every server streams the same events (same index, same counters). Metric
values travel only as each server's share; :class:`TrainingJob` adds the
shares up here, on the owner's machine, so no server ever learns the loss or
the accuracy.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from ppml.client.errors import (
    DeadlineExceeded,
    JobFinished,
    PpmlClientError,
    ServerUnavailable,
    TrainingCancelled,
    TrainingFailed,
    from_rpc_error,
)
from ppml.proto import shares
from ppml.proto.domain import jobs
from ppml.proto.wire import serde
from ppml.v1 import training_pb2

CallAll = Callable[[Callable[[Any, int], grpc.Future], bool], list[Any]]


@dataclass(frozen=True)
class Progress:
    """One progress event, with metrics reconstructed when the owner asked for them."""

    index: int
    state: str  # queued | running | succeeded | failed | cancelled
    epoch: int
    batch: int
    steps_done: int
    steps_total: int
    samples_done: int
    samples_per_s: float
    loss: float | None = None  # mean training loss of the epoch that just ended
    accuracy: float | None = None  # validation accuracy after that epoch
    reason: str = ""
    epsilon: float = 0.0  # DP-SGD: epsilon spent after steps_done steps (0.0 without DP)

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    loss: float
    accuracy: float | None


@dataclass(frozen=True)
class JobStatus:
    """The job as every server reports it."""

    info: jobs.JobInfo  # the first reachable server's view (public fields agree)
    states: dict[str, str]  # server name -> state, or "unreachable"

    @property
    def state(self) -> str:
        """failed/cancelled if any server says so; otherwise their common state."""
        values = set(self.states.values())
        for final in ("failed", "cancelled"):
            if final in values:
                return final
        values.discard("unreachable")
        return values.pop() if len(values) == 1 else "running"


def _value(parts: list[shares.Ring]) -> float:
    return float(shares.decode(shares.reconstruct(parts)).reshape(-1)[0])


def reconstruct_metrics(per_server: Sequence[jobs.EpochMetrics]) -> EpochResult:
    """Add up every server's shares of one epoch's metrics."""
    loss = _value([m.mean_loss for m in per_server])
    rows = per_server[0].validation_rows
    accuracy = _value([m.correct for m in per_server]) / rows if rows else None
    return EpochResult(per_server[0].epoch, loss, accuracy)


class TrainingJob:
    """Handle of a job started with :meth:`ppml.client.Cluster.train`."""

    def __init__(
        self,
        job_id: str,
        model_id: str,
        servers: Sequence[Any],
        metadata: tuple[tuple[str, str], ...],
        call_all: CallAll,
    ) -> None:
        self.job_id = job_id
        self.model_id = model_id
        self._servers = servers
        self._metadata = metadata
        self._call_all = call_all

    def __repr__(self) -> str:
        return f"TrainingJob({self.job_id!r} -> model {self.model_id!r})"

    def status(self) -> JobStatus:
        """The job on every server; a server that cannot be reached shows as "unreachable"."""
        request = training_pb2.GetJobRequest(job_id=self.job_id)
        infos: list[jobs.JobInfo] = []
        states: dict[str, str] = {}
        errors: list[PpmlClientError] = []
        for server in self._servers:
            try:
                reply = server.training.GetJob(request, timeout=30, metadata=self._metadata)
            except grpc.RpcError as err:
                error = from_rpc_error(err, server.name)
                if not isinstance(error, ServerUnavailable | DeadlineExceeded):
                    raise error from None
                errors.append(error)
                states[server.name] = "unreachable"
                continue
            infos.append(serde.job_info_from_proto(reply))
            states[server.name] = infos[-1].state.value
        if not infos:
            raise errors[0]
        return JobStatus(infos[0], states)

    def epsilon(self) -> float:
        """DP-SGD: epsilon spent so far, at the job's delta (0.0 for a job without DP)."""
        return self.status().info.dp_epsilon

    def metrics(self) -> list[EpochResult]:
        """Per-epoch loss and validation accuracy (owner only, if reveal_metrics)."""
        request = training_pb2.GetJobRequest(job_id=self.job_id)
        replies = self._call_all(
            lambda s, _: s.training.GetJob.future(request, timeout=30, metadata=self._metadata),
            False,
        )
        per_server = [serde.job_info_from_proto(r).metrics for r in replies]
        epochs = min(len(m) for m in per_server)
        return [reconstruct_metrics([m[i] for m in per_server]) for i in range(epochs)]

    def progress(self) -> Iterator[Progress]:
        """Events in order, merged across servers, until the job ends."""
        request = training_pb2.WatchJobRequest(job_id=self.job_id)
        streams = [s.training.WatchJob(request, metadata=self._metadata) for s in self._servers]
        alive = list(range(len(streams)))
        errors: list[PpmlClientError] = []
        try:
            while alive:
                events: list[jobs.JobEvent] = []
                for rank in list(alive):
                    try:
                        events.append(serde.job_event_from_proto(next(streams[rank])))
                    except StopIteration:
                        alive.remove(rank)
                    except grpc.RpcError as err:
                        alive.remove(rank)
                        errors.append(from_rpc_error(err, self._servers[rank].name))
                if not events:
                    break
                event = self._merge(events)
                yield event
                if event.finished:
                    return
            if errors:
                raise errors[0]
        finally:
            for stream in streams:
                with contextlib.suppress(Exception):
                    stream.cancel()

    def _merge(self, events: list[jobs.JobEvent]) -> Progress:
        first = min(events, key=lambda e: 0 if e.state.terminal else 1)
        loss = accuracy = None
        with_metrics = [e.metrics for e in events if e.metrics is not None]
        if len(with_metrics) == len(self._servers):
            result = reconstruct_metrics(with_metrics)
            loss, accuracy = result.loss, result.accuracy
        return Progress(
            index=first.index,
            state=first.state.value,
            epoch=first.epoch,
            batch=first.batch,
            steps_done=first.steps_done,
            steps_total=first.steps_total,
            samples_done=first.samples_done,
            samples_per_s=min(e.samples_per_s for e in events),
            loss=loss,
            accuracy=accuracy,
            reason=next((e.reason for e in events if e.reason), ""),
            epsilon=first.dp_epsilon,
        )

    def result(self, timeout: float | None = None, poll_s: float = 0.5) -> str:
        """Wait for the job; returns the trained model's id or raises why it did not finish."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            state = status.state
            if set(status.states.values()) == {"succeeded"}:
                return self.model_id
            if state in ("failed", "cancelled"):
                reasons = self._reasons(state)
                cls = TrainingFailed if state == "failed" else TrainingCancelled
                raise cls(f"job {self.job_id} {state}: {reasons}")
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded(f"job {self.job_id} still {state} after {timeout}s")
            time.sleep(poll_s)

    def _reasons(self, state: str) -> str:
        request = training_pb2.GetJobRequest(job_id=self.job_id)
        parts = []
        for server in self._servers:
            try:
                info = server.training.GetJob(request, timeout=10, metadata=self._metadata)
            except grpc.RpcError:
                continue
            if info.reason and serde.job_state_from_proto(info.state).value == state:
                parts.append(f"{server.name}: {info.reason}")
        return "; ".join(parts) or "no reason given"

    def cancel(self) -> JobStatus:
        """Stop the job on every server; returns once they all report it ended."""
        request = training_pb2.CancelJobRequest(job_id=self.job_id)
        with contextlib.suppress(JobFinished):
            self._call_all(
                lambda s, _: s.training.CancelJob.future(
                    request, timeout=60, metadata=self._metadata
                ),
                False,
            )
        return self.status()
