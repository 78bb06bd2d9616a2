"""Three parties over plain TCP: one connection per pair, length-prefixed frames of packed arrays.

For running the engine alone as three OS processes (benchmarks) and for
tests. There is no TLS and no authentication here: a server's links are the
cluster's mutual-TLS ones (``servers/mpc/rep3/service``); this module only
moves bytes between processes on one host or a trusted network.

Wire format, per round and peer: one frame, an 8-byte little-endian length
then :func:`~ppml.servers.mpc.rep3.rounds.pack`'s bytes of the round's
arrays for that peer. The receiver knows the sizes it expects
(:class:`~ppml.servers.mpc.rep3.rounds.Expect`), so a frame of any other
length is refused before its body is read.

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

from ppml.servers.mpc.rep3.keys import PARTIES
from ppml.servers.mpc.rep3.rounds import Array, Expect, Received, pack, unpack

_HEADER = struct.Struct("<Q")


class SocketNet:
    """One party's end of a TCP mesh; counts its rounds and the payload bytes it sends."""

    def __init__(self, rank: int, socks: dict[int, socket.socket], timeout_s: float = 60.0) -> None:
        if set(socks) != {p for p in range(PARTIES) if p != rank}:
            raise ValueError(f"party {rank} needs one socket per other party, got {sorted(socks)}")
        self.rank = rank
        self._socks = socks
        self._timeout_s = timeout_s
        self.rounds = 0
        self.bytes_sent = 0
        for s in socks.values():
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def exchange(self, send: dict[int, list[Array]], expect: dict[int, list[Expect]]) -> Received:
        """Send every peer its frame while reading the expected frames, without blocking on one."""
        if not send and not expect:
            return {}
        self.rounds += 1
        outgoing: dict[int, memoryview] = {}
        for peer, arrays in send.items():
            body = pack(arrays)
            self.bytes_sent += len(body)
            outgoing[peer] = memoryview(_HEADER.pack(len(body)) + body)
        incoming = {peer: _Frame(sum(s.nbytes for s in specs)) for peer, specs in expect.items()}
        deadline = time.monotonic() + self._timeout_s
        while outgoing or any(not f.done for f in incoming.values()):
            progress = False
            for peer in list(outgoing):
                try:
                    sent = self._socks[peer].send(outgoing[peer])
                except BlockingIOError:
                    continue
                progress = True
                outgoing[peer] = outgoing[peer][sent:]
                if not outgoing[peer]:
                    del outgoing[peer]
            for peer, frame in incoming.items():
                if not frame.done and frame.read(self._socks[peer], peer):
                    progress = True
            if not progress:
                left = deadline - time.monotonic()
                readers = [self._socks[p] for p, f in incoming.items() if not f.done]
                writers = [self._socks[p] for p in outgoing]
                if left <= 0 or not any(select.select(readers, writers, [], left)[:2]):
                    raise TimeoutError(f"party {self.rank}: no progress in {self._timeout_s} s")
        return {peer: unpack(frame.body, expect[peer]) for peer, frame in incoming.items()}

    def close(self) -> None:
        for s in self._socks.values():
            s.close()


class _Frame:
    """One expected frame being read: header first, then a body of the expected size."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._header = bytearray(_HEADER.size)
        self.body = bytearray(size)
        self._got = 0  # bytes of header + body read so far

    @property
    def done(self) -> bool:
        return self._got == _HEADER.size + self.size

    def read(self, sock: socket.socket, peer: int) -> bool:
        """Read what is available; False if nothing was. Raises on a closed link or wrong size."""
        if self._got < _HEADER.size:
            view = memoryview(self._header)[self._got :]
        else:
            view = memoryview(self.body)[self._got - _HEADER.size :]
        try:
            k = sock.recv_into(view)
        except BlockingIOError:
            return False
        if k == 0:
            raise ConnectionError(f"party {peer} closed the link")
        self._got += k
        if self._got == _HEADER.size:
            (length,) = _HEADER.unpack(self._header)
            if length != self.size:
                raise ValueError(f"party {peer} sent {length} bytes, expected {self.size}")
        return True


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
