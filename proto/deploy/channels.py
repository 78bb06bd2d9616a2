"""gRPC channels to ppml servers, and the options every ppml process uses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

MAX_MESSAGE_BYTES = 512 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
]

def client_channel(
    address: str, ca_cert: Path | None, options: Sequence[tuple[str, object]] = ()
) -> grpc.Channel:
    """A channel to a ppml server: TLS against the cluster CA unless ``ca_cert`` is None."""
    opts = [*GRPC_OPTIONS, *options]
    if ca_cert is None:
        return grpc.insecure_channel(address, options=opts)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_cert.read_bytes())
    return grpc.secure_channel(address, credentials, options=opts)
