"""A follower (rank >= 1): applies the leader's decisions to this server."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from ppml.proto.deploy.topology import ClusterConfig
from ppml.proto.domain import commands as cmd
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.servers.control.holds import PendingTable
from ppml.servers.control.leader_link import LeaderLink
from ppml.servers.mpc.worker import MpcWorker

log = logging.getLogger(__name__)


class Follower:
    def __init__(
        self,
        config: ClusterConfig,
        rank: int,
        worker: MpcWorker,
        pending: PendingTable,
        token: str,
        insecure: bool,
    ) -> None:
        self._worker = worker
        self._pending = pending
        self._lost_listeners: list[Callable[[str], None]] = []
        self.link = LeaderLink(
            config.leader.grpc_address,
            None if insecure else config.ca_cert,
            token,
            cmd.Hello(rank, "party", secrets.token_hex(8)),
            self._on_command,
            self._on_lost,
        )

    def start(self) -> None:
        self.link.start()

    @property
    def links_up(self) -> list[str]:
        """``["leader"]`` while the control link to the leader is up."""
        return ["leader"] if self.link.connected else []

    def _on_command(self, command: cmd.LeaderCommand) -> None:
        if isinstance(command, cmd.DropRequests):
            error = PpmlError(ErrorCode.PREDICTION_ABORTED, command.reason)
            self._pending.fail(list(command.request_ids), error)
        else:
            self._worker.submit(command)

    def on_lost(self, listener: Callable[[str], None]) -> None:
        """Also call ``listener(reason)`` when the link to the leader breaks."""
        self._lost_listeners.append(listener)

    def _on_lost(self, reason: str) -> None:
        error = PpmlError(ErrorCode.PREDICTION_ABORTED, f"lost contact with the leader: {reason}")
        self._pending.fail(None, error)
        self._worker.leave()
        for listener in self._lost_listeners:
            listener(f"lost contact with the leader: {reason}")

    def announce(self, rank: int, announce: cmd.Announce) -> bool:
        return self.link.send(announce)

    def submit(self, rank: int, message: cmd.PartyMessage) -> bool:
        """Send a job announcement or cancel request to the leader."""
        return self.link.send(message)
