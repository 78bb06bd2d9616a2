"""Three parties over plain TCP: one connection per pair, length-prefixed frames of packed arrays.

For running the engine alone as three OS processes (benchmarks) and for
tests. There is no TLS and no authentication here: a server's links are the
cluster's mutual-TLS ones (``servers/mpc/rep3/service``); this module only
moves bytes between processes on one host or a trusted network.

Wire format, per round and peer: one frame, an 8-byte little-endian length
then :func:`~ppml.servers.mpc.rep3.rounds.pack`'s bytes of the round's
arrays for that peer (sent straight from the arrays with ``sendmsg``). The
receiver knows the sizes it expects
(:class:`~ppml.servers.mpc.rep3.rounds.Expect`): it never reads past the
expected frame, refuses one whose header gives another length, and hands
the arrays out as views of the frame's buffer (no copy).

Mesh set-up (:func:`connect`): each party listens; it connects to every
lower-ranked party's listener and says its rank in one byte, and accepts the
higher-ranked ones. Listeners can be bound before the processes start
(:func:`listen` with port 0, the socket handed down), so no port is guessed.
"""

from __future__ import annotations

import select
import socket
import struct
import time

import numpy as np

from ppml.servers.mpc.rep3.keys import PARTIES
from ppml.servers.mpc.rep3.rounds import Array, Expect, Received, pack

_HEADER = struct.Struct("<Q")
_NOW = socket.MSG_DONTWAIT


class SocketNet:
    """One party's end of a TCP mesh; counts its rounds and the payload bytes it sends.

    A round sends first (every frame usually fits the kernel's buffers at
    once), then reads each expected frame with blocking reads: one system
    call per message in the common case, no polling. Frames that do not fit
    are pumped with ``select`` while reading, so that no two parties wait on
    each other's full buffers. The timeout is the kernel's (``SO_RCVTIMEO``).
    """

    def __init__(self, rank: int, socks: dict[int, socket.socket], timeout_s: float = 60.0) -> None:
        if set(socks) != {p for p in range(PARTIES) if p != rank}:
            raise ValueError(f"party {rank} needs one socket per other party, got {sorted(socks)}")
        self.rank = rank
        self._socks = socks
        self._timeout_s = timeout_s
        self.rounds = 0
        self.bytes_sent = 0
        whole, frac = divmod(timeout_s, 1.0)
        limit = struct.pack("ll", int(whole), int(frac * 1e6))
        for s in socks.values():
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)

    def exchange(self, send: dict[int, list[Array]], expect: dict[int, list[Expect]]) -> Received:
        """Send every peer its frame, then read every expected frame."""
        if not send and not expect:
            return {}
        self.rounds += 1
        unsent: dict[int, memoryview] = {}
        for peer, arrays in send.items():
            rest = self._send_now(self._socks[peer], arrays)
            if rest is not None:
                unsent[peer] = rest
        frames = {peer: _Frame(peer, specs) for peer, specs in expect.items()}
        if unsent:
            self._pump(unsent, frames)
        for peer, frame in frames.items():
            sock = self._socks[peer]
            while not frame.done:
                try:
                    frame.read(sock, 0)
                except BlockingIOError:  # SO_RCVTIMEO expired
                    raise TimeoutError(
                        f"party {self.rank}: no progress in {self._timeout_s} s"
                    ) from None
        return {peer: frame.arrays() for peer, frame in frames.items()}

    def _send_now(self, sock: socket.socket, arrays: list[Array]) -> memoryview | None:
        """Send what the kernel takes without waiting; the unsent rest of the frame, if any."""
        parts = [np.ascontiguousarray(a) for a in arrays]
        size = sum(a.nbytes for a in parts)
        self.bytes_sent += size
        header = _HEADER.pack(size)
        try:
            sent = sock.sendmsg([header, *(a.data for a in parts)], [], _NOW)
        except BlockingIOError:
            sent = 0
        if sent == len(header) + size:
            return None
        return memoryview(header + pack(parts))[sent:]

    def _pump(self, unsent: dict[int, memoryview], frames: dict[int, _Frame]) -> None:
        """Send the rest of large frames while reading what arrives, until all is sent."""
        deadline = time.monotonic() + self._timeout_s
        while unsent:
            progress = False
            for peer in list(unsent):
                try:
                    sent = self._socks[peer].send(unsent[peer], _NOW)
                except BlockingIOError:
                    continue
                progress = True
                unsent[peer] = unsent[peer][sent:]
                if not unsent[peer]:
                    del unsent[peer]
            for peer, frame in frames.items():
                try:
                    if not frame.done:
                        frame.read(self._socks[peer], _NOW)
                        progress = True
                except BlockingIOError:
                    pass
            if not progress:
                left = deadline - time.monotonic()
                readers = [self._socks[p] for p, f in frames.items() if not f.done]
                writers = [self._socks[p] for p in unsent]
                if left <= 0 or not any(select.select(readers, writers, [], left)[:2]):
                    raise TimeoutError(f"party {self.rank}: no progress in {self._timeout_s} s")

    def close(self) -> None:
        for s in self._socks.values():
            s.close()


class _Frame:
    """One expected frame being read (header and body in one buffer), never past its end."""

    def __init__(self, peer: int, specs: list[Expect]) -> None:
        self.peer = peer
        self.specs = specs
        self.size = sum(s.nbytes for s in specs)
        self.buf = bytearray(_HEADER.size + self.size)
        self._view = memoryview(self.buf)
        self._got = 0

    @property
    def done(self) -> bool:
        return self._got == len(self.buf)

    def read(self, sock: socket.socket, flags: int) -> None:
        """One ``recv``: BlockingIOError if nothing came; raises on a closed link or a bad size."""
        had = self._got
        k = sock.recv_into(self._view[had:], 0, flags)
        if k == 0:
            raise ConnectionError(f"party {self.peer} closed the link")
        self._got += k
        if had < _HEADER.size <= self._got:
            (length,) = _HEADER.unpack_from(self.buf)
            if length != self.size:
                raise ValueError(f"party {self.peer} sent {length} bytes, expected {self.size}")

    def arrays(self) -> list[Array]:
        """The arrays of the body, as :func:`~ppml.servers.mpc.rep3.rounds.unpack` splits it.

        Views of this frame's own buffer (fresh per frame, writable), not copies.
        """
        out: list[Array] = []
        offset = _HEADER.size
        for s in self.specs:
            n = s.nbytes
            out.append(
                np.frombuffer(self.buf, s.dtype, n // s.dtype.itemsize, offset).reshape(s.shape)
            )
            offset += n
        return out


def listen(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket (port 0: the kernel picks one; read it with ``getsockname``)."""
    sock = socket.create_server((host, port), backlog=PARTIES)
    return sock


def connect(
    rank: int, listener: socket.socket, addresses: list[tuple[str, int]], timeout_s: float = 60.0
) -> SocketNet:
    """Join the mesh: connect to lower ranks' ``addresses``, accept higher ranks on ``listener``."""
    socks: dict[int, socket.socket] = {}
    try:
        for peer in range(rank):
            s = socket.create_connection(addresses[peer], timeout=timeout_s)
            s.sendall(bytes([rank]))
            socks[peer] = s
        listener.settimeout(timeout_s)
        while len(socks) < PARTIES - 1:
            conn, _ = listener.accept()
            conn.settimeout(timeout_s)
            said = conn.recv(1)
            peer = said[0] if said else -1
            if not rank < peer < PARTIES or peer in socks:
                conn.close()
                raise ConnectionError(f"party {rank}: a connection said it was party {peer}")
            socks[peer] = conn
    except BaseException:
        for s in socks.values():
            s.close()
        raise
    return SocketNet(rank, socks, timeout_s)
