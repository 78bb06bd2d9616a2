"""The one long-lived MPC listener of a process, shared by all its epochs.

A process that lower ranks dial (every compute party but rank 0, and the
dealer) binds exactly its configured ``host:port`` once, for its whole life.
Each epoch registers its tag, this process's rank and the certificate name
of every rank; a connection is admitted only if

* the TLS 1.3 handshake succeeds with a client certificate from the cluster CA,
* its hello is well formed and names the open epoch and this rank,
* the claimed sender rank is lower than ours, its certificate name is the
  one configured for that rank, and that (rank, direction) is still free.

Anything else is closed without a word. Admitted sockets wait in the epoch
until the session collects them; closing the epoch closes the uncollected ones.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

from ppml.servers.mpc.tls_links import (
    ACCEPTED,
    HANDSHAKE_TIMEOUT_S,
    Hello,
    TlsIdentity,
    make_context,
    peer_name,
    recv_exact,
    tune,
)

log = logging.getLogger(__name__)
Slot = tuple[int, int]  # (sender rank, direction)
_NO_EPOCH = "no such epoch here (stale or not yet open)"


@dataclass
class _Epoch:
    tag: bytes
    rank: int
    names: tuple[str, ...]
    arrived: dict[Slot, ssl.SSLSocket] = field(default_factory=dict)
    claimed: set[Slot] = field(default_factory=set)


class Listener:
    """Accepts MPC links on ``address`` for whichever epoch is open."""

    def __init__(self, address: tuple[str, int], identity: TlsIdentity) -> None:
        self.address = address
        self.identity = identity
        self._context = make_context(identity, server_side=True)
        self._server = socket.create_server(address, backlog=64)
        self._cond = threading.Condition()
        self._epoch: _Epoch | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, name="mpc-listener", daemon=True)
        self._thread.start()

    def open_epoch(self, tag: bytes, rank: int, names: tuple[str, ...]) -> None:
        """Admit links for epoch ``tag`` (closes any other epoch's waiting links)."""
        with self._cond:
            self._drop_epoch()
            self._epoch = _Epoch(tag, rank, names)

    def collect(self, slots: set[Slot], deadline: float) -> dict[Slot, ssl.SSLSocket]:
        """Wait until every slot's link has arrived (monotonic ``deadline``)."""
        with self._cond:
            while True:
                epoch = self._epoch
                if epoch is None:
                    raise RuntimeError("the MPC epoch was closed while linking")
                missing = slots - epoch.arrived.keys()
                if not missing:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    ranks = sorted({rank for rank, _ in missing})
                    raise RuntimeError(f"ranks {ranks} did not link to this process in time")
                self._cond.wait(remaining)
            epoch.claimed |= slots
            return {slot: epoch.arrived.pop(slot) for slot in slots}

    def close_epoch(self, tag: bytes) -> None:
        with self._cond:
            if self._epoch is not None and self._epoch.tag == tag:
                self._drop_epoch()

    def close(self) -> None:
        """Stop listening (tests; a serving process keeps its listener)."""
        with self._cond:
            self._closed = True
            self._drop_epoch()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._thread.join(5.0)

    def _drop_epoch(self) -> None:
        if self._epoch is not None:
            for sock in self._epoch.arrived.values():
                sock.close()
        self._epoch = None
        self._cond.notify_all()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, peer = self._server.accept()
            except OSError:
                if self._closed:
                    return
                time.sleep(0.05)
                continue
            threading.Thread(
                target=self._admit, args=(conn, peer), name="mpc-admit", daemon=True
            ).start()

    def _admit(self, conn: socket.socket, peer: object) -> None:
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT_S)
            tune(conn)
            sock = self._context.wrap_socket(conn, server_side=True)
        except OSError as exc:  # plaintext, no certificate, another CA...
            log.warning("refused an MPC connection from %s: %s", peer, exc)
            conn.close()
            return
        try:
            reason = self._register(sock, Hello.unpack(recv_exact(sock, Hello.SIZE)))
        except (OSError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
        if reason:
            # a party dialing before this process opened the epoch is a benign race
            level = logging.INFO if reason == _NO_EPOCH else logging.WARNING
            log.log(level, "refused an MPC link from %s (%s): %s", peer, peer_name(sock), reason)
            sock.close()

    def _register(self, sock: ssl.SSLSocket, hello: Hello) -> str:
        """Admit ``sock`` into the open epoch; the reason it is refused, or ''."""
        name = peer_name(sock)
        with self._cond:
            epoch = self._epoch
            if epoch is None or not hmac.compare_digest(hello.epoch, epoch.tag):
                return _NO_EPOCH
            if hello.receiver != epoch.rank or not 0 <= hello.sender < epoch.rank:
                return f"rank {hello.sender} may not link to rank {hello.receiver} here"
            if name != epoch.names[hello.sender]:
                return f"certificate {name!r} does not belong to rank {hello.sender}"
            slot = (hello.sender, hello.direction)
            if slot in epoch.arrived or slot in epoch.claimed:
                return f"rank {hello.sender} is already linked"
            sock.sendall(ACCEPTED)  # before the session can write on a RECV link
            epoch.arrived[slot] = sock
            self._cond.notify_all()
        return ""
