"""Limits that keep one client from exhausting a server: concurrency, upload time, events."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from ppml.proto.deploy.topology import LimitsConfig
from ppml.proto.domain.architecture import Architecture, Linear
from ppml.proto.domain.datasets import DatasetMeta
from ppml.proto.domain.jobs import JobInfo, JobState, TrainingSpec
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.shares import Ring
from ppml.servers.api.server import create_server
from ppml.servers.store.datasets import DATASET_CODEC, DatasetRegistry
from ppml.servers.store.jobs import JOB_CODEC, JobManager
from ppml.servers.store.limits import Limits
from ppml.servers.store.models import ModelRegistry
from ppml.servers.store.storage import MemoryModelStore, MemoryShareStore
from ppml.v1 import status_pb2, status_pb2_grpc


class _Slow(status_pb2_grpc.StatusServicer):
    def __init__(self) -> None:
        self.release = threading.Event()

    def GetStatus(
        self, request: status_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> status_pb2.ServerStatus:
        self.release.wait(10)
        return status_pb2.ServerStatus()


def test_calls_beyond_the_concurrency_limit_are_refused_at_once() -> None:
    slow = _Slow()
    server, port = create_server(
        [lambda s: status_pb2_grpc.add_StatusServicer_to_server(slow, s)],
        "127.0.0.1:0",
        None,
        max_concurrent_rpcs=2,
    )
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = status_pb2_grpc.StatusStub(channel)
            held = [stub.GetStatus.future(status_pb2.GetStatusRequest()) for _ in range(2)]
            time.sleep(0.3)  # let both reach the handler
            with pytest.raises(grpc.RpcError) as excinfo:
                stub.GetStatus(status_pb2.GetStatusRequest(), timeout=5)
            assert excinfo.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            slow.release.set()
            for call in held:
                call.result(timeout=10)
    finally:
        server.stop(None)


def test_an_upload_stream_that_outlasts_its_budget_is_stopped() -> None:
    limits = Limits(LimitsConfig(upload_max_s=0.2))
    registry = DatasetRegistry(MemoryShareStore(DATASET_CODEC), limits)
    header = DatasetMeta("slow", "", "owner", 4, (2,), 2)

    def chunks() -> Iterator[tuple[Ring, Ring]]:
        for _ in range(4):
            time.sleep(0.1)
            yield np.zeros((1, 2), np.int64), np.zeros((1, 2), np.int64)

    with pytest.raises(PpmlError) as excinfo:
        registry.upload(header, chunks())
    assert excinfo.value.code == ErrorCode.DEADLINE_EXCEEDED
    assert len(registry) == 0


def test_a_jobs_event_history_is_trimmed_to_the_newest() -> None:
    datasets = DatasetRegistry(MemoryShareStore(DATASET_CODEC))
    models = ModelRegistry(MemoryModelStore())
    jobs = JobManager(
        "s", MemoryShareStore(JOB_CODEC), datasets, models, lambda m: True,
        LimitsConfig(max_job_events=5),
    )  # fmt: skip
    architecture = Architecture((Linear(2, 2),), (2,), (2,))
    info = JobInfo("j", "m", "j", "owner", architecture, TrainingSpec(("d",), 1, 8, 0.1))
    for step in range(20):
        jobs._emit(info.evolve(steps_done=step))
    jobs._emit(info.evolve(state=JobState.FAILED, reason="done"))
    jobs._infos["j"] = info.evolve(state=JobState.FAILED)
    seen = list(jobs.watch("j", "owner", lambda: True))  # the newest 5; indices stay absolute
    assert [e.index for e in seen] == [16, 17, 18, 19, 20] and seen[-1].state.terminal
