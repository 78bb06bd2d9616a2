"""A follower's (or the dealer's) control link to the leader.

One bidirectional ``Coordinator.Link`` stream for the life of the process:
it sends ``Hello`` then ``Announce`` messages, and hands every leader message
to ``on_message`` in order. When the stream breaks it calls ``on_lost`` and
reconnects with exponential backoff. Only ids and counts travel here.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import grpc

from ppml.proto.deploy.channels import client_channel
from ppml.proto.domain import commands as cmd
from ppml.proto.wire import serde
from ppml.v1 import coordinator_pb2, coordinator_pb2_grpc

log = logging.getLogger(__name__)

_CLOSE = object()


class LeaderLink:
    def __init__(
        self,
        leader_address: str,
        ca_cert: Path | None,
        token: str,
        hello: cmd.Hello,
        on_message: Callable[[cmd.LeaderCommand], None],
        on_lost: Callable[[str], None],
        job_types: Mapping[str, type],
    ) -> None:
        self._address = leader_address
        self._ca = ca_cert
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._hello = hello
        self._on_message = on_message
        self._on_lost = on_lost
        self._job_types = job_types
        self._outbox: queue.Queue[object] = queue.Queue()
        self._stopped = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-link", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._outbox.put(_CLOSE)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def send(self, message: cmd.PartyMessage) -> bool:
        """Queue a message for the leader; False if the link is down right now."""
        if not self._connected.is_set():
            return False
        self._outbox.put(serde.party_message_to_proto(message))
        return True

    def _requests(self, outbox: queue.Queue[object]) -> Iterator[coordinator_pb2.PartyMessage]:
        yield serde.party_message_to_proto(self._hello)
        while True:
            item = outbox.get()
            if item is _CLOSE:
                return
            assert isinstance(item, coordinator_pb2.PartyMessage)
            yield item

    def _run(self) -> None:
        backoff = 0.1
        while not self._stopped.is_set():
            channel = client_channel(self._address, self._ca)
            outbox: queue.Queue[object] = queue.Queue()
            self._outbox = outbox
            try:
                stub = coordinator_pb2_grpc.CoordinatorStub(channel)
                stream = stub.Link(self._requests(outbox), metadata=self._metadata)
                self._connected.set()
                for message in stream:
                    backoff = 0.1
                    self._on_message(serde.leader_command_from_proto(message, self._job_types))
                reason = "leader closed the link"
            except grpc.RpcError as err:
                reason = f"link to leader failed: {err.code().name} {err.details()}"
            finally:
                self._connected.clear()
                outbox.put(_CLOSE)
                channel.close()
            if self._stopped.is_set():
                return
            log.info("%s; reconnecting", reason)
            self._on_lost(reason)
            self._stopped.wait(backoff)
            backoff = min(backoff * 2, 2.0)
