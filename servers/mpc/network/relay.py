"""A tiny user-space TCP relay: listen on one port, forward to another.

For tests and benchmarks only: it records every byte that passes (to check
what an eavesdropper on an MPC link sees) and can add a one-way delay to each
direction (to emulate a WAN link). Each accepted connection is forwarded to
``target`` by two pump threads; with a delay, a reader thread stamps each
chunk and a writer thread sends it ``delay_s`` later, so the link keeps its
throughput and only gains latency.

Run one as a process::

    python -m ppml.servers.mpc.network.relay --listen 127.0.0.1:9001 --target 127.0.0.1:9000 \\
        --delay-ms 10 --record /tmp/capture
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import queue
import socket
import threading
import time
from pathlib import Path
from typing import BinaryIO

_CHUNK = 256 * 1024


class Relay:
    """Forwards connections on ``listen`` to ``target`` (see the module docstring).

    Recordings: ``record_dir/conn<N>-up.bin`` (client to target) and
    ``conn<N>-down.bin`` (target to client), complete once :meth:`close` returns.
    """

    def __init__(
        self,
        target: tuple[str, int],
        listen: tuple[str, int] = ("127.0.0.1", 0),
        delay_s: float = 0.0,
        record_dir: Path | None = None,
    ) -> None:
        self.target = target
        self.delay_s = delay_s
        self.record_dir = record_dir
        if record_dir is not None:
            record_dir.mkdir(parents=True, exist_ok=True)
        self._server = socket.create_server(listen)
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._files: list[BinaryIO] = []
        self._lock = threading.Lock()
        self._count = itertools.count()
        self._spawn(self._accept_loop)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            number = next(self._count)
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream, self._record(number, "up"))
            self._spawn(self._pump, upstream, client, self._record(number, "down"))

    def _record(self, number: int, direction: str) -> BinaryIO | None:
        if self.record_dir is None:
            return None
        handle = open(self.record_dir / f"conn{number}-{direction}.bin", "wb")  # noqa: SIM115
        with self._lock:
            self._files.append(handle)
        return handle

    def _pump(self, source: socket.socket, sink: socket.socket, record: BinaryIO | None) -> None:
        chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
        if self.delay_s > 0:
            self._spawn(self._delayed_writer, chunks, sink)
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                if record is not None:
                    record.write(data)
                if self.delay_s > 0:
                    chunks.put((time.monotonic() + self.delay_s, data))
                else:
                    sink.sendall(data)
        except OSError:
            pass
        if self.delay_s > 0:
            chunks.put((time.monotonic() + self.delay_s, b""))  # end of stream, after the rest
        else:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    @staticmethod
    def _delayed_writer(
        chunks: queue.SimpleQueue[tuple[float, bytes]], sink: socket.socket
    ) -> None:
        with contextlib.suppress(OSError):
            while True:
                due, data = chunks.get()
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)

    def close(self) -> None:
        """Stop accepting, cut every connection, finish the recordings."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(5.0)
        for sock in sockets:
            sock.close()
        for handle in self._files:
            handle.close()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_address, required=True, help="host:port to accept on")
    parser.add_argument("--target", type=_address, required=True, help="host:port to forward to")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added one-way delay")
    parser.add_argument("--record", type=Path, default=None, help="folder for recordings")
    args = parser.parse_args(argv)
    relay = Relay(args.target, args.listen, args.delay_ms / 1e3, args.record)
    print(f"relaying {relay.address} -> {args.target}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        relay.close()


if __name__ == "__main__":
    main()
