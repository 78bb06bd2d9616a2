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

Anyone who can reach the port can connect before any certificate is checked,
so the listener bounds what a stranger costs it: at most
:data:`MAX_ADMITTING` connections are in their handshake at once (at most
:data:`MAX_ADMITTING_PER_HOST` from one address), on a fixed pool of threads;
a connection beyond that is closed at once (a real peer's dial retries until
its deadline). A handshake and hello must complete within
:data:`ADMIT_TIMEOUT_S`. The accept loop survives any error, and refusals are
logged as one summary line per :data:`REFUSAL_LOG_INTERVAL_S` at most.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ppml.servers.mpc.network.tls_links import (
    ACCEPTED,
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
ADMIT_TIMEOUT_S = 3.0  # TLS handshake plus hello of one connection (milliseconds when real)
MAX_ADMITTING = 32  # connections in their handshake at once (a real epoch needs 2 per lower rank)
MAX_ADMITTING_PER_HOST = 8
REFUSAL_LOG_INTERVAL_S = 30.0
ACCEPT_BACKLOG = 1024  # the kernel caps it at net.core.somaxconn
_ACCEPT_ERROR_PAUSE_S = 0.05


class RefusalLog:
    """Counts refused connections; logs at most one WARNING line per ``interval_s``.

    The first refusal is logged at once; later ones are counted, and the next
    line (at the first refusal after the interval) reports how many there were.
    """

    def __init__(self, interval_s: float = REFUSAL_LOG_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._count = 0
        self._next_line = 0.0

    def note(self, peer: object, reason: str) -> None:
        with self._lock:
            self._count += 1
            now = time.monotonic()
            if now < self._next_line:
                return
            count, self._count = self._count, 0
            self._next_line = now + self._interval_s
        log.warning(
            "refused %d MPC connection(s) since the last such line; the latest from %s: %s",
            count,
            peer,
            reason,
        )


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
        # a deep accept queue: a burst of strangers must not make a peer's SYN wait for a retry
        self._server = socket.create_server(address, backlog=ACCEPT_BACKLOG)
        self._cond = threading.Condition()
        self._epoch: _Epoch | None = None
        self._closed = False
        self.refusals = RefusalLog()
        self._pool = ThreadPoolExecutor(MAX_ADMITTING, thread_name_prefix="mpc-admit")
        self._slots = threading.Lock()  # guards _admitting
        self._admitting: dict[str, int] = {}  # connections in their handshake, per host
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
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _drop_epoch(self) -> None:
        if self._epoch is not None:
            for sock in self._epoch.arrived.values():
                sock.close()
        self._epoch = None
        self._cond.notify_all()

    def _accept_loop(self) -> None:
        """Accept until closed; no error, whatever its cause, ends the loop."""
        while not self._closed:
            try:
                conn, peer = self._server.accept()
            except Exception as exc:  # EMFILE, ENOBUFS..., or the socket closed by close()
                if self._closed:
                    return
                self.refusals.note("?", f"accept failed: {exc}")
                time.sleep(_ACCEPT_ERROR_PAUSE_S)
                continue
            try:
                self._dispatch(conn, peer)
            except Exception as exc:  # e.g. no thread could be started: drop this one only
                conn.close()
                self.refusals.note(peer, f"could not admit: {exc}")

    def _dispatch(self, conn: socket.socket, peer: object) -> None:
        """Hand ``conn`` to a handshake thread, or close it at once if too many are busy."""
        host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        with self._slots:
            busy = sum(self._admitting.values())
            mine = self._admitting.get(host, 0)
            if busy >= MAX_ADMITTING or mine >= MAX_ADMITTING_PER_HOST:
                full = True
            else:
                full = False
                self._admitting[host] = mine + 1
        if full:
            conn.close()
            self.refusals.note(peer, "too many connections in their handshake")
            return
        try:
            self._pool.submit(self._admit_then_free, conn, peer, host)
        except BaseException:
            self._free(host)
            raise

    def _free(self, host: str) -> None:
        with self._slots:
            left = self._admitting.get(host, 1) - 1
            if left > 0:
                self._admitting[host] = left
            else:
                self._admitting.pop(host, None)

    def _admit_then_free(self, conn: socket.socket, peer: object, host: str) -> None:
        try:
            self._admit(conn, peer)
        except Exception as exc:  # never lose a slot or a socket to an unexpected error
            conn.close()
            self.refusals.note(peer, f"admission failed: {exc}")
        finally:
            self._free(host)

    def _admit(self, conn: socket.socket, peer: object) -> None:
        try:
            conn.settimeout(ADMIT_TIMEOUT_S)
            tune(conn)
            sock = self._context.wrap_socket(conn, server_side=True)
        except OSError as exc:  # plaintext, no certificate, another CA, too slow...
            conn.close()
            self.refusals.note(peer, str(exc) or type(exc).__name__)
            return
        try:
            reason = self._register(sock, Hello.unpack(recv_exact(sock, Hello.SIZE)))
        except (OSError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
        if reason:
            if reason == _NO_EPOCH:  # a party dialing before this process opened the epoch
                log.info("refused an MPC link from %s (%s): %s", peer, peer_name(sock), reason)
            else:
                self.refusals.note(f"{peer} ({peer_name(sock)})", reason)
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
