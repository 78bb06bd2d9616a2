"""One epoch's session parameters and the full mesh of TLS links between processes.

Ranks ``0 .. world_size - 1`` are the compute parties; rank ``world_size``
is the dealer (CrypTen's TTP). Each pair of processes is joined by two TLS
connections, both dialed by the lower rank: one carries data up, the other
down. So rank 0 never listens, every other process listens on exactly its
configured address, with one listener for the life of the process
(:mod:`ppml.servers.mpc.network.listener`). There is no rendezvous store: the epoch
tag (128 random bits) reaches the parties over the leader's control link.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from dataclasses import dataclass

from ppml.servers.mpc.network.links import MAX_FRAME_BYTES
from ppml.servers.mpc.network.listener import Listener
from ppml.servers.mpc.network.tls_links import (
    EPOCH_BYTES,
    RECV,
    SEND,
    Hello,
    TlsIdentity,
    dial,
    make_context,
)

DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Peer:
    """A process as seen from this one: its certificate name and where to dial it."""

    name: str
    host: str | None = None
    port: int | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self.host is None or self.port is None:
            raise ValueError(f"{self.name} has no MPC address")
        return self.host, self.port


@dataclass(frozen=True)
class SessionParams:
    """Everything one process needs to join one epoch.

    ``peers[r]`` is rank ``r`` (``peers[world_size]``, if present, the dealer).
    ``peers[rank]`` is this process: its ``host:port`` is where it listens.
    The other entries are where this process dials them (possibly a relay).
    """

    rank: int
    world_size: int
    peers: tuple[Peer, ...]
    identity: TlsIdentity
    epoch: bytes
    timeout_s: float = DEFAULT_TIMEOUT_S
    connect_timeout_s: float | None = None  # joining an epoch; defaults to timeout_s
    max_frame_bytes: int = MAX_FRAME_BYTES  # the longest frame a peer may declare

    def __post_init__(self) -> None:
        if self.world_size < 1 or len(self.peers) not in (self.world_size, self.world_size + 1):
            raise ValueError("peers must list every compute party, and optionally the dealer")
        if not 0 <= self.rank < len(self.peers):
            raise ValueError(f"rank {self.rank} is not in the session")
        if len(self.epoch) != EPOCH_BYTES:
            raise ValueError(f"an epoch tag has {EPOCH_BYTES} bytes")
        if len({peer.name for peer in self.peers}) != len(self.peers):
            raise ValueError("every rank needs its own certificate name")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if self.max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(peer.name for peer in self.peers)

    @property
    def join_timeout_s(self) -> float:
        return self.timeout_s if self.connect_timeout_s is None else self.connect_timeout_s


def new_epoch_tag() -> bytes:
    """A fresh random epoch tag (the leader makes one per epoch)."""
    return os.urandom(EPOCH_BYTES)


_lock = threading.Lock()
_listener: Listener | None = None


def listener_for(params: SessionParams, total: int) -> Listener | None:
    """This process's listener, started on first use; ``None`` when no lower rank dials it."""
    global _listener
    if params.rank == 0 or params.rank >= total:
        return None
    address = params.peers[params.rank].address
    with _lock:
        if _listener is None:
            _listener = Listener(address, params.identity)
        elif _listener.address != address or _listener.identity != params.identity:
            raise RuntimeError(
                f"this process already listens on {_listener.address}; "
                "its MPC address and identity are fixed for its lifetime"
            )
        return _listener


def close_listener() -> None:
    """Stop this process's listener (tests and process exit)."""
    global _listener
    with _lock:
        if _listener is not None:
            _listener.close()
            _listener = None


Links = dict[int, tuple[ssl.SSLSocket, ssl.SSLSocket]]  # peer -> (outgoing, incoming)


def connect_mesh(params: SessionParams, total: int) -> Links:
    """Link this process with ranks ``0 .. total - 1`` for epoch ``params.epoch``.

    Dials every higher rank (two connections each) and collects both
    connections from every lower rank, all within ``params.join_timeout_s``.
    """
    deadline = time.monotonic() + params.join_timeout_s
    rank, tag = params.rank, params.epoch
    names = params.names[:total]
    listener = listener_for(params, total)
    if listener is not None:
        listener.open_epoch(tag, rank, names)
    links: Links = {}
    try:
        if rank < total - 1:
            context = make_context(params.identity, server_side=False)
            for peer in range(rank + 1, total):
                address, name = params.peers[peer].address, names[peer]
                up = dial(address, context, name, Hello(tag, rank, peer, SEND), deadline)
                links[peer] = (up, up)  # closed below if the next dial fails
                down = dial(address, context, name, Hello(tag, rank, peer, RECV), deadline)
                links[peer] = (up, down)
        if listener is not None:
            slots = {(peer, direction) for peer in range(rank) for direction in (SEND, RECV)}
            arrived = listener.collect(slots, deadline)
            for peer in range(rank):
                links[peer] = (arrived[(peer, RECV)], arrived[(peer, SEND)])
    except BaseException:
        close_links(links)
        if listener is not None:
            listener.close_epoch(tag)
        raise
    for outgoing, incoming in links.values():
        outgoing.settimeout(params.timeout_s)
        incoming.settimeout(params.timeout_s)
    return links


def close_links(links: Links) -> None:
    for outgoing, incoming in links.values():
        outgoing.close()
        incoming.close()


def end_epoch(params: SessionParams) -> None:
    """Stop admitting links for ``params.epoch``."""
    with _lock:
        if _listener is not None:
            _listener.close_epoch(params.epoch)
