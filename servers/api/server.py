"""The one gRPC server factory used by every ppml process."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from ppml.proto.deploy.channels import GRPC_OPTIONS

log = logging.getLogger(__name__)

Register = Callable[[grpc.Server], None]


@dataclass(frozen=True)
class ServerTls:
    cert: Path
    key: Path


def create_server(
    registrations: Sequence[Register],
    address: str,
    tls: ServerTls | None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    max_concurrent_rpcs: int = 256,
    max_message_mb: int = 64,
) -> tuple[grpc.Server, int]:
    """Build an unstarted server; returns it and the bound port (bind port 0 in tests).

    Predict handlers block until their MPC job has run, so the pool holds one
    thread per admitted call (plus a few for the control links): a request
    that finds no free thread would miss the current batch. Beyond
    ``max_concurrent_rpcs`` a call is refused at once with RESOURCE_EXHAUSTED
    instead of piling up.

    ``tls=None`` means plaintext and is only reached through an explicit
    ``--insecure``; it logs a warning.
    """
    limit = max_message_mb << 20
    options = [
        *(o for o in GRPC_OPTIONS if not o[0].endswith("message_length")),
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=max_concurrent_rpcs + 16, thread_name_prefix="grpc"
        ),
        interceptors=list(interceptors),
        options=options,
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    for register in registrations:
        register(server)
    if tls is None:
        log.warning("serving WITHOUT TLS on %s (--insecure): shares travel in the clear", address)
        port = server.add_insecure_port(address)
    else:
        credentials = grpc.ssl_server_credentials([(tls.key.read_bytes(), tls.cert.read_bytes())])
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind {address}")
    return server, port


