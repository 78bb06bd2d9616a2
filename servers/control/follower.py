"""A follower (rank >= 1): applies the leader's decisions to this server."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping

from ppml.proto.deploy.topology import ClusterConfig
from ppml.proto.domain import commands as cmd
from ppml.servers.control.holds import Holds
from ppml.servers.control.leader_link import LeaderLink

log = logging.getLogger(__name__)

RunHere = Callable[[cmd.JoinEpoch | cmd.RunJob], None]


class Follower:
    def __init__(
        self,
        config: ClusterConfig,
        rank: int,
        run_here: RunHere,
        leave: Callable[[], None],
        holds: Holds,
        job_types: Mapping[str, type],
        token: str,
        insecure: bool,
    ) -> None:
        self._run_here = run_here  # this server's MPC worker
        self._leave = leave
        self._holds = holds
        self._lost_listeners: list[Callable[[str], None]] = []
        # applies the leader's decisions on staged uploads; set by the server
        self.on_upload: Callable[[cmd.UploadDecision], object] = lambda decision: None
        self.link = LeaderLink(
            config.leader.grpc_address,
            None if insecure else config.ca_cert,
            token,
            cmd.Hello(rank, "party", secrets.token_hex(8)),
            self._on_command,
            self._on_lost,
            job_types,
        )

    def start(self) -> None:
        self.link.start()

    @property
    def links_up(self) -> list[str]:
        """``["leader"]`` while the control link to the leader is up."""
        return ["leader"] if self.link.connected else []

    def _on_command(self, command: cmd.LeaderCommand) -> None:
        if isinstance(command, cmd.DropRequests):
            self._holds.fail(command.request_ids, command.reason)
        elif isinstance(command, cmd.UploadDecision):
            self.on_upload(command)
        else:
            self._run_here(command)

    def on_lost(self, listener: Callable[[str], None]) -> None:
        """Also call ``listener(reason)`` when the link to the leader breaks."""
        self._lost_listeners.append(listener)

    def _on_lost(self, reason: str) -> None:
        self._holds.fail(None, f"lost contact with the leader: {reason}")
        self._leave()
        for listener in self._lost_listeners:
            listener(f"lost contact with the leader: {reason}")

    def submit(self, message: cmd.PartyMessage) -> bool:
        """Send an announcement or cancel request to the leader."""
        return self.link.send(message)
