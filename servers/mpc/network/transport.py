"""ppml's CrypTen communicator: every MPC message over mutually authenticated TLS.

:class:`TlsCommunicator` implements the API CrypTen calls on
``crypten.communicator.get()`` (point-to-point, collectives, objects) over
the per-epoch mesh of :mod:`ppml.servers.mpc.network.mesh`: no TCPStore, no gloo.
Each method carries CrypTen's own ``_logging`` decorator, so rounds and bytes
are counted exactly as CrypTen counts them for gloo. Groups are tuples of
ranks (``main_group``, ``ttp_group``, ``ttp_comm_group``); collectives are
sends to and receives from each member, combined in rank order (so every
party gets bit-identical results).

Use: :func:`install` once (the one patch: ``crypten.communicator``'s module
global ``DistributedCommunicator``, which ``crypten.init()``, ``uninit()``,
``get()`` and ``is_initialized()`` look up), then :func:`configure` with the
epoch's :class:`~ppml.servers.mpc.network.mesh.SessionParams` before each
``crypten.init()``.

Failure: the first error on any link (peer gone, timeout, protocol error)
breaks the session: every socket is shut down at once, so the peers' next
receive fails too, and every call raises ``RuntimeError``. ``crypten.uninit()``
never raises; the process may then configure a new epoch and init again.
"""

from __future__ import annotations

import contextlib
import pickle
import socket
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch.distributed import ReduceOp

from ppml.servers.mpc.core.crypten_compat import crypten
from ppml.servers.mpc.network import mesh
from ppml.servers.mpc.network.links import InLink, OutLink, byte_view
from ppml.servers.mpc.network.reduce_ops import combine

_logging = crypten.communicator.communicator._logging
Communicator: Any = crypten.communicator.Communicator
_CLOSE_TIMEOUT_S = 10.0
_params: mesh.SessionParams | None = None


def configure(params: mesh.SessionParams) -> None:
    """Parameters of the next ``crypten.init()``; starts this process's listener if it has one."""
    global _params
    mesh.listener_for(params, len(params.peers))
    _params = params


class TlsCommunicator(Communicator):
    """One process's links for one epoch (see the module docstring)."""

    BYTES_PER_ELEMENT = 8
    ENCRYPTED_LINKS = True  # checked before any key travels (ppml.servers.mpc.randomness.prng)
    instance: TlsCommunicator | None = None

    def __init__(self, params: mesh.SessionParams, init_ttp: bool) -> None:
        total = params.world_size + 1 if init_ttp else params.world_size
        if len(params.peers) < total:
            raise ValueError("the TTP provider needs the dealer in SessionParams.peers")
        self.params = params
        self.world_size = params.world_size
        self.rank = params.rank
        self.main_group = tuple(range(self.world_size))
        self.ttp_group = tuple(range(total))
        self.ttp_comm_group = (0, total - 1)
        self.ttp_initialized = init_ttp
        self._name = f"rank{self.rank}"
        self.reset_communication_stats()
        self._broken: str | None = None
        self._fail_lock = threading.Lock()
        self._sockets = mesh.connect_mesh(params, total)
        names = params.names
        self._out = {p: OutLink(s[0], names[p], self._fail) for p, s in self._sockets.items()}
        self._in = {
            p: InLink(s[1], names[p], self._fail, params.max_frame_bytes)
            for p, s in self._sockets.items()
        }

    # ------------------------------------------------------------ life cycle

    @classmethod
    def is_initialized(cls) -> bool:
        return cls.instance is not None

    @classmethod
    def initialize(cls, rank: int = 0, world_size: int = 1, init_ttp: bool = False) -> None:
        """Called by ``crypten.init()``; ``rank``/``world_size`` come from :func:`configure`."""
        if _params is None:
            raise RuntimeError(
                "call ppml.servers.mpc.network.transport.configure() before crypten.init()"
            )
        cls.instance = cls(_params, init_ttp)

    @classmethod
    def get(cls) -> TlsCommunicator | None:
        return cls.instance

    @classmethod
    def shutdown(cls) -> None:
        """Leave the epoch; never raises. Rank 0 first tells the dealer "terminate"."""
        instance = cls.instance
        if instance is None:
            return
        try:
            if instance.rank == 0 and instance.ttp_initialized and instance._broken is None:
                with contextlib.suppress(RuntimeError):
                    instance.send_obj("terminate", instance.get_ttp_rank(), instance.ttp_group)
        finally:
            instance._close()
            cls.instance = None
            _forget_session_keys()

    def _close(self) -> None:
        if self._broken is None:
            for link in self._out.values():
                link.close(_CLOSE_TIMEOUT_S)
        self._fail("this process left the session")
        mesh.close_links(self._sockets)
        mesh.end_epoch(self.params)

    def _fail(self, reason: str) -> RuntimeError:
        """Break the session (first reason wins) and shut every link down."""
        with self._fail_lock:
            if self._broken is None:
                self._broken = reason
                for outgoing, incoming in self._sockets.values():
                    for sock in (outgoing, incoming):
                        with contextlib.suppress(OSError):
                            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        return RuntimeError(f"MPC session failed: {self._broken}")

    def break_session(self, reason: str) -> None:
        """End the session on purpose (a link's stream is out of step); first reason wins."""
        self._fail(reason)

    @contextlib.contextmanager
    def reads_bounded(self, seconds: float) -> Iterator[None]:
        """Inside: a receive from a compute peer waits at most ``seconds`` (or the session's
        own timeout, if lower), then breaks the session like any timeout."""
        incoming = [self._sockets[peer][1] for peer in self._others()]
        before = [sock.gettimeout() for sock in incoming]
        for sock, timeout in zip(incoming, before, strict=True):
            sock.settimeout(seconds if timeout is None else min(timeout, seconds))
        try:
            yield
        finally:
            for sock, timeout in zip(incoming, before, strict=True):
                with contextlib.suppress(OSError):
                    sock.settimeout(timeout)

    @property
    def broken(self) -> str | None:
        """Why the session broke (a link failed), or None while it is sound."""
        return self._broken

    def _check(self) -> None:
        if self._broken is not None:
            raise RuntimeError(f"MPC session failed: {self._broken}")

    # ------------------------------------------------------------ helpers

    def _post(self, tensor: torch.Tensor, dst: int) -> Any:
        self._check()
        return self._out[dst].post(byte_view(tensor.detach().contiguous()))

    def _read(self, like: torch.Tensor, src: int) -> torch.Tensor:
        self._check()
        return self._in[src].read_into(torch.empty(like.size(), dtype=like.dtype))

    def _others(self, group: Any = None) -> list[int]:
        members = self.main_group if group is None else tuple(group)
        if self.rank not in members:
            raise ValueError(f"rank {self.rank} is not in group {members}")
        return [rank for rank in members if rank != self.rank]

    # ------------------------------------------------------------ point to point

    @_logging
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        self._post(tensor, dst).wait()

    @_logging
    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        if src is None:
            raise ValueError("recv needs a source rank")
        return self._read(tensor, src)

    @_logging
    def isend(self, tensor: torch.Tensor, dst: int) -> Any:
        return self._post(tensor, dst)

    @_logging
    def irecv(self, tensor: torch.Tensor, src: int | None = None) -> Any:
        if src is None:
            raise ValueError("irecv needs a source rank")
        self._check()
        return self._in[src].post(tensor)

    # ------------------------------------------------------------ collectives

    @_logging
    def scatter(
        self, scatter_list: list[torch.Tensor], src: int, size: Any = None, device: Any = None
    ) -> torch.Tensor:
        if src == self.rank:
            sent = [self._post(scatter_list[r], r) for r in self._others()]
            for request in sent:
                request.wait()
            return scatter_list[self.rank]
        size = scatter_list[self.rank].size() if size is None else size
        return self._read(torch.empty(size, dtype=torch.long), src)

    @_logging
    def reduce(self, input: Any, dst: int, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        tensors = list(input) if batched else [input]
        if self.rank != dst:
            sent = [self._post(tensor, dst) for tensor in tensors]
            for request in sent:
                request.wait()
            return None
        result = self._gather_combine(tensors, op)
        return result if batched else result[0]

    @_logging
    def all_reduce(self, input: Any, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        tensors = list(input) if batched else [input]
        sent = [self._post(tensor, peer) for peer in self._others() for tensor in tensors]
        result = self._gather_combine(tensors, op)
        for request in sent:
            request.wait()
        return result if batched else result[0]

    def _gather_combine(self, tensors: list[torch.Tensor], op: Any) -> list[torch.Tensor]:
        """Receive every party's ``tensors`` and combine each position in rank order."""
        by_rank: list[list[torch.Tensor]] = []
        for rank in self.main_group:
            if rank == self.rank:
                by_rank.append(tensors)
            else:
                by_rank.append([self._read(tensor, rank) for tensor in tensors])
        own = self.main_group.index(self.rank)
        return [combine([row[i] for row in by_rank], op, own) for i in range(len(tensors))]

    @_logging
    def gather(self, tensor: torch.Tensor, dst: int) -> list[Any]:
        if self.rank != dst:
            self._post(tensor, dst).wait()
            return [None]
        return [tensor if r == dst else self._read(tensor, r) for r in self.main_group]

    @_logging
    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        sent = [self._post(tensor, peer) for peer in self._others()]
        result = [tensor if r == self.rank else self._read(tensor, r) for r in self.main_group]
        for request in sent:
            request.wait()
        return result

    @_logging
    def broadcast(self, input: Any, src: int, group: Any = None, batched: bool = False) -> Any:
        tensors = list(input) if batched else [input]
        others = self._others(group)
        if self.rank == src:
            sent = [self._post(tensor, peer) for peer in others for tensor in tensors]
            for request in sent:
                request.wait()
        else:
            self._check()
            for tensor in tensors:
                self._in[src].read_into(tensor)
        return input

    @_logging
    def barrier(self) -> None:
        empty = torch.empty(0, dtype=torch.uint8)
        sent = [self._post(empty, peer) for peer in self._others()]
        for peer in self._others():
            self._read(empty, peer)
        for request in sent:
            request.wait()

    # ------------------------------------------------------------ objects

    @_logging
    def send_obj(self, obj: Any, dst: int, group: Any = None) -> None:
        self._check()
        self._out[dst].post(memoryview(pickle.dumps(obj))).wait()

    @_logging
    def recv_obj(self, src: int, group: Any = None) -> Any:
        self._check()
        return crypten.common.serial.restricted_loads(self._in[src].read_bytes())

    def post_frames(self, frames: list[bytes], dst: int) -> list[Any]:
        """Queue raw frames to ``dst`` and return at once: wait on the returned requests.

        For bulk data (the fast engine's bundles): no pickling, and a sender
        can feed several peers at the same time. The frames must not change
        until their requests complete (bytes never do).
        """
        self._check()
        return [self._out[dst].post(memoryview(frame)) for frame in frames]

    def recv_frame(self, src: int) -> bytearray:
        """The next raw frame from ``src`` (see :meth:`post_frames`); counted as bytes only."""
        self._check()
        buffer = self._in[src].read_buffer()
        self.comm_bytes += len(buffer)
        return buffer

    @_logging
    def broadcast_obj(self, obj: Any, src: int, group: Any = None) -> Any:
        others = self._others(group)
        self._check()
        if self.rank == src:
            payload = memoryview(pickle.dumps(obj))
            sent = [self._out[peer].post(payload) for peer in others]
            for request in sent:
                request.wait()
            return obj
        return crypten.common.serial.restricted_loads(self._in[src].read_bytes())

    # ------------------------------------------------------------ identity

    def get_world_size(self) -> int:
        return self.world_size

    def get_rank(self) -> int:
        return self.rank

    def get_ttp_rank(self) -> int:
        return self.world_size

    def set_name(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"improper name for rank {self.rank}")
        self._name = name

    def get_name(self) -> str:
        return self._name

    def get_distributed_backend(self) -> str:
        return "ppml-tls"


def _forget_session_keys() -> None:
    """The dealer's per-party key and the PRZS keys die with the session's links."""
    from ppml.servers.mpc.randomness import prng

    crypten.mpc.provider.ttp_provider.TTPClient.uninit()
    prng.clear_generators()


_original: Any = None


def install() -> None:
    """Make ``crypten.init()`` & co. use :class:`TlsCommunicator` (idempotent)."""
    global _original
    module = crypten.communicator
    if module.DistributedCommunicator is not TlsCommunicator:
        _original = module.DistributedCommunicator
        module.DistributedCommunicator = TlsCommunicator


def uninstall() -> None:
    """Restore CrypTen's gloo communicator (tests only)."""
    global _original
    if _original is not None:
        crypten.communicator.DistributedCommunicator = _original
        _original = None
