"""Length-prefixed frames over one-way TLS links, with few copies.

A frame is ``u64 little-endian length | payload``. An :class:`OutLink` owns
the socket it writes and one writer thread, so the MPC thread never blocks on
a slow reader (two parties sending large payloads to each other at once do
not deadlock). Small frames go out on the caller's thread when the writer is
idle and the kernel send buffer has room (no thread hand-off per round).
An :class:`InLink` is read only by the MPC thread, with ``recv_into`` straight
into the destination tensor's memory; posted receives complete in order.

A peer declares each frame's length; the reader trusts it only up to
``max_frame_bytes`` (a longer one ends the session with a protocol error), and
a frame longer than ``GROW_BYTES`` read into a buffer of its own grows that
buffer as the bytes arrive, so a length alone, without the bytes, never makes
this process allocate more than that.

Invariants: frames on a link arrive in the order they were posted; a tensor
handed to :meth:`OutLink.post` must not change until its request completes;
only one thread (the MPC thread) posts to a link or reads from it.
"""

from __future__ import annotations

import collections
import fcntl
import queue
import socket
import ssl
import struct
import termios
import threading
from collections.abc import Callable
from typing import Any

import torch

HEADER = struct.Struct("<Q")
COALESCE_BYTES = 64 * 1024  # header and payload in one TLS write up to this size
DIRECT_BYTES = 16 * 1024  # the caller may write frames up to this size itself
# The longest frame a reader accepts unless configured (``[serving] mpc_max_frame_mb``):
# far above any message of the limits' largest model and batch that is not a bundle.
MAX_FRAME_BYTES = 4096 << 20
GROW_BYTES = 256 << 20  # a longer frame of its own: its buffer doubles as the bytes arrive
OnError = Callable[[str], RuntimeError]


def byte_view(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy."""
    if not tensor.is_contiguous():
        raise ValueError("tensor must be contiguous")
    flat = tensor.detach().reshape(-1)
    return flat.view(torch.uint8).numpy().data if flat.numel() else memoryview(b"")


class Completed:
    """A request that completed on the spot."""

    def wait(self, timeout: Any = None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


COMPLETED = Completed()


class SendRequest:
    """Completion of one queued frame; ``wait()`` as on torch's ``Work``."""

    __slots__ = ("_done", "_error")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self._error: RuntimeError | None = None

    def finish(self, error: RuntimeError | None = None) -> None:
        self._error = error
        self._done.release()

    def wait(self, timeout: Any = None) -> bool:
        with self._done:
            pass
        if self._error is not None:
            raise self._error
        return True

    def is_completed(self) -> bool:
        return not self._done.locked()


class OutLink:
    """The writing end of one link, with its writer thread."""

    def __init__(self, sock: ssl.SSLSocket, peer: str, on_error: OnError) -> None:
        self._sock = sock
        self._peer = peer
        self._on_error = on_error
        self._queue: queue.SimpleQueue[tuple[memoryview, SendRequest] | None] = queue.SimpleQueue()
        self._state = threading.Lock()  # guards _pending and _broken
        self._pending = 0
        self._broken: RuntimeError | None = None
        self._thread = threading.Thread(target=self._run, name=f"mpc-to-{peer}", daemon=True)
        self._thread.start()

    def post(self, payload: memoryview) -> SendRequest | Completed:
        """Send one frame; the request completes once it is in the kernel."""
        size = len(payload)
        with self._state:
            if self._broken is not None:
                raise self._broken
            direct = size <= DIRECT_BYTES and self._pending == 0 and self._has_room(size)
            if not direct:
                request = SendRequest()
                self._pending += 1
                self._queue.put((payload, request))
                return request
        try:  # the writer thread is idle and only this thread posts: write here
            self._sock.sendall(HEADER.pack(size) + payload)
        except OSError as exc:
            raise self._break(exc) from exc
        return COMPLETED

    def _has_room(self, size: int) -> bool:
        """Whether ``size`` more bytes fit in the send buffer without blocking."""
        try:
            queued = struct.unpack("i", fcntl.ioctl(self._sock, termios.TIOCOUTQ, b"\0" * 4))[0]
            capacity = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        except OSError:
            return False
        return queued + size + 1024 <= capacity // 4

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            payload, request = item
            try:
                header = HEADER.pack(len(payload))
                if len(payload) <= COALESCE_BYTES:
                    self._sock.sendall(header + payload)
                else:
                    self._sock.sendall(header)
                    self._sock.sendall(payload)
            except Exception as exc:  # never leave a waiter hanging: break the link
                request.finish(self._break(exc))
                return
            with self._state:
                self._pending -= 1
            request.finish()

    def _break(self, exc: BaseException) -> RuntimeError:
        error = self._on_error(f"sending to {self._peer}: {exc or type(exc).__name__}")
        with self._state:
            self._broken = error
            while True:  # fail whatever is still queued
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[1].finish(error)
        return error

    def close(self, timeout: float) -> None:
        """Let the writer send what is queued, then stop it (the socket stays open)."""
        self._queue.put(None)
        self._thread.join(timeout)


class RecvRequest:
    """A posted receive into ``tensor``; completes in posting order on its link."""

    __slots__ = ("_link", "done", "tensor")

    def __init__(self, link: InLink, tensor: torch.Tensor) -> None:
        self._link = link
        self.tensor = tensor
        self.done = False

    def wait(self, timeout: Any = None) -> bool:
        self._link.complete(self)
        return True

    def is_completed(self) -> bool:
        return self.done


class InLink:
    """The reading end of one link (read only by the MPC thread)."""

    def __init__(
        self,
        sock: ssl.SSLSocket,
        peer: str,
        on_error: OnError,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self._sock = sock
        self._peer = peer
        self._on_error = on_error
        self._max_frame_bytes = max_frame_bytes
        self._header = bytearray(HEADER.size)
        self._posted: collections.deque[RecvRequest] = collections.deque()

    def post(self, tensor: torch.Tensor) -> RecvRequest:
        request = RecvRequest(self, tensor)
        self._posted.append(request)
        return request

    def complete(self, request: RecvRequest) -> None:
        """Receive every posted request up to and including ``request``."""
        while not request.done:
            self._receive(self._posted.popleft())

    def read_into(self, tensor: torch.Tensor) -> torch.Tensor:
        """The next frame into ``tensor`` (after any posted receives)."""
        while self._posted:
            self._receive(self._posted.popleft())
        self._read_tensor(tensor)
        return tensor

    def read_bytes(self) -> bytes:
        """The next frame as bytes (after any posted receives)."""
        return bytes(self.read_buffer())

    def read_buffer(self) -> bytearray:
        """The next frame in a buffer of its own (after any posted receives), not copied again."""
        while self._posted:
            self._receive(self._posted.popleft())
        size = self._frame_size()
        buffer = bytearray(min(size, GROW_BYTES))
        self._read_exact(memoryview(buffer))
        while len(buffer) < size:  # at most twice what the peer actually sent
            done = len(buffer)
            buffer.extend(bytes(min(done, size - done)))
            self._read_exact(memoryview(buffer)[done:])
        return buffer

    def _receive(self, request: RecvRequest) -> None:
        self._read_tensor(request.tensor)
        request.done = True

    def _read_tensor(self, tensor: torch.Tensor) -> None:
        target = tensor if tensor.is_contiguous() else torch.empty_like(tensor).contiguous()
        view = byte_view(target)
        size = self._frame_size()
        if size != len(view):
            raise self._on_error(
                f"protocol error: {self._peer} sent {size} bytes where {len(view)} were expected"
            )
        self._read_exact(view)
        if target is not tensor:
            tensor.copy_(target)

    def _frame_size(self) -> int:
        self._read_exact(memoryview(self._header))
        size = int(HEADER.unpack(self._header)[0])
        if size > self._max_frame_bytes:
            raise self._on_error(
                f"protocol error: {self._peer} declared a frame of {size} bytes, over the "
                f"limit of {self._max_frame_bytes} ([serving] mpc_max_frame_mb)"
            )
        return size

    def _read_exact(self, view: memoryview) -> None:
        recv_into = self._sock.recv_into
        try:
            while view:
                received = recv_into(view, len(view))
                if received == 0:
                    raise ConnectionError(f"{self._peer} closed the link")
                view = view[received:]
        except TimeoutError as exc:
            timeout = self._sock.gettimeout()
            raise self._on_error(f"no data from {self._peer} for {timeout} s") from exc
        except OSError as exc:
            raise self._on_error(f"receiving from {self._peer}: {exc}") from exc
