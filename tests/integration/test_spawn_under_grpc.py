"""Restarting a process from a driver whose gRPC calls are in flight (bench/faults.py).

``LocalCluster`` used to set the parent-death signal from ``preexec_fn``,
which makes ``subprocess`` fork and run Python in the child; with gRPC calls
in flight in other threads, gRPC's fork handlers then ran in the child and
could abort it before exec, so a restarted server or dealer never started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ppml.client.deploy.local import free_port, spawn_command


@pytest.fixture
def busy_grpc() -> Iterator[None]:
    """A gRPC server and four client threads calling it without a pause."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()

    def hammer() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set():
                stub.Check(health_pb2.HealthCheckRequest(), timeout=5)

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        server.stop(None)


def test_children_start_while_grpc_calls_are_in_flight(busy_grpc: None) -> None:
    code = "import os, sys; sys.exit(0 if os.getppid() == int(sys.argv[1]) else 3)"
    for _ in range(80):
        cmd = spawn_command([sys.executable, "-c", code, str(os.getpid())], True)
        child = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.PIPE)
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err.decode(errors="replace")[-500:]
