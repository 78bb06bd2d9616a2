"""Mutual TLS 1.3 for MPC links: contexts, the hello, dialing a peer.

Every MPC connection is TLS 1.3 with a certificate required on both sides,
checked against the cluster CA (:mod:`ppml.proto.deploy.tls`); no session tickets.
Identity is bound to rank: the dialer checks that the listener's certificate
name is the one configured for the rank it dials *before* it says anything,
and the listener checks that the dialer's certificate name is the one
configured for the rank its hello claims (:mod:`ppml.servers.mpc.network.listener`).

The hello (dialer to listener, the first bytes after the handshake)::

    magic "ppml-mpc" | version u16 | epoch tag 16 bytes | sender rank u16 |
    receiver rank u16 | direction u8

The listener answers one byte :data:`ACCEPTED` or closes the connection
without a word (stale or unknown epoch, wrong identity). ``direction`` says
which side writes application data on this connection: the lower rank opens
two connections to each higher rank, one per direction, so that each socket
is only ever written by one process and read by the other.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION = 1
EPOCH_BYTES = 16
ACCEPTED = b"\x01"
SEND = 0  # the dialer writes data on this connection
RECV = 1  # the listener writes data on this connection
HANDSHAKE_TIMEOUT_S = 10.0
_RETRY_S = 0.05  # first pause between attempts, growing to _RETRY_MAX_S
_RETRY_MAX_S = 0.5
_HELLO = struct.Struct("!8sH16sHHB")
_MAGIC = b"ppml-mpc"


@dataclass(frozen=True)
class TlsIdentity:
    """This process's certificate and key, and the cluster CA that signed every peer's."""

    ca: Path
    cert: Path
    key: Path


def make_context(identity: TlsIdentity, server_side: bool) -> ssl.SSLContext:
    """TLS 1.3 only, certificate required from the peer, verified against the cluster CA.

    Host names are not checked here: the rank's configured certificate name is
    (see :func:`peer_name`), which binds the peer's identity to its rank.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(identity.ca))
    context.load_cert_chain(str(identity.cert), str(identity.key))
    context.options |= ssl.OP_NO_TICKET
    if server_side:
        context.num_tickets = 0
    return context


@dataclass(frozen=True)
class Hello:
    epoch: bytes
    sender: int
    receiver: int
    direction: int

    SIZE = _HELLO.size

    def pack(self) -> bytes:
        return _HELLO.pack(_MAGIC, VERSION, self.epoch, self.sender, self.receiver, self.direction)

    @classmethod
    def unpack(cls, data: bytes) -> Hello:
        """Parse a hello; ``ValueError`` for anything but this version's well-formed hello."""
        if len(data) != _HELLO.size:
            raise ValueError("short hello")
        magic, version, epoch, sender, receiver, direction = _HELLO.unpack(data)
        if magic != _MAGIC or version != VERSION or direction not in (SEND, RECV):
            raise ValueError("not a ppml MPC hello of this version")
        return cls(epoch, sender, receiver, direction)


def peer_name(sock: ssl.SSLSocket) -> str | None:
    """The commonName of the peer's verified certificate (``None`` if there is none)."""
    try:
        cert = sock.getpeercert()
    except (ValueError, OSError):  # no completed handshake (any more)
        return None
    subject: Any = cert.get("subject", ()) if cert else ()
    for rdn in subject:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes; ``ConnectionError`` if the peer closes first."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    while view:
        received = sock.recv_into(view, len(view))
        if received == 0:
            raise ConnectionError("connection closed")
        view = view[received:]
    return bytes(buffer)


def tune(sock: socket.socket) -> None:
    """Per-link socket options: no Nagle delay (MPC rounds are latency-bound)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def dial(
    address: tuple[str, int],
    context: ssl.SSLContext,
    expected_name: str,
    hello: Hello,
    deadline: float,
) -> ssl.SSLSocket:
    """Open one accepted link to ``address``, retrying until ``deadline`` (monotonic).

    Retries while the peer is not listening yet or has not opened this epoch;
    fails at once if the peer's certificate is not the expected one.
    """
    last: Exception | None = None
    pause = _RETRY_S / 1.5
    while True:
        pause = min(_RETRY_MAX_S, pause * 1.5)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"no MPC link to {expected_name} at {address}: {last}")
        try:
            raw = socket.create_connection(address, timeout=min(remaining, HANDSHAKE_TIMEOUT_S))
        except OSError as exc:
            last = exc
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            continue
        try:
            tune(raw)
            sock = context.wrap_socket(raw)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            raise RuntimeError(f"{address} is not a member of this cluster: {exc}") from exc
        except OSError as exc:
            raw.close()
            last = exc
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            continue
        name = peer_name(sock)
        if name != expected_name:
            sock.close()
            raise RuntimeError(f"{address} presented {name!r}, expected {expected_name!r}")
        try:
            sock.sendall(hello.pack())
            if recv_exact(sock, 1) == ACCEPTED:
                return sock
            last = ConnectionError("unexpected answer to the hello")
        except OSError as exc:
            last = exc
        sock.close()
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
