"""From the topology file to one epoch's MPC session parameters.

Every compute party and the dealer reach each other over mutually
authenticated TLS (:mod:`ppml.servers.mpc.network.mesh`): each process's certificate
is its topology entry's ``tls_cert`` (name = its ``name``), checked against
the cluster CA, and it listens on its ``mpc_address``. The epoch tag comes
from the leader over its TLS control link (:class:`~ppml.proto.domain.commands.JoinEpoch`).
"""

from __future__ import annotations

import secrets

from ppml.proto.deploy.topology import ClusterConfig, ConfigError
from ppml.servers.mpc.network.mesh import Peer, SessionParams
from ppml.servers.mpc.network.tls_links import EPOCH_BYTES, TlsIdentity


def new_tag() -> str:
    """A fresh epoch tag (hex of 128 random bits from the OS CSPRNG)."""
    return secrets.token_hex(EPOCH_BYTES)


def peers(config: ClusterConfig) -> tuple[Peer, ...]:
    """Every party in rank order, then the dealer (if the cluster has one): names and addresses."""
    out = [Peer(p.name, *p.mpc_host_port) for p in config.parties]
    if not config.has_dealer:
        return tuple(out)
    dealer = config.dealer
    if dealer.mpc_address is None:
        raise ConfigError("[dealer] needs an mpc_address: every party dials the dealer there")
    out.append(Peer(dealer.name, *dealer.mpc_host_port))
    return tuple(out)


def identity(config: ClusterConfig, rank: int) -> TlsIdentity:
    """The TLS identity of rank ``rank`` (``world_size``: the dealer) on the MPC links."""
    if rank == config.world_size:
        who, cert, key = config.dealer.name, config.dealer.tls_cert, config.dealer.tls_key
    else:
        party = config.party(rank)
        who, cert, key = party.name, party.tls_cert, party.tls_key
    if config.ca_cert is None or cert is None or key is None:
        raise ConfigError(
            f"{who}: the MPC links need [cluster] ca_cert and its own tls_cert and tls_key "
            "(they are mutually authenticated TLS even under --insecure)"
        )
    return TlsIdentity(config.ca_cert, cert, key)


def _bind(config: ClusterConfig, rank: int) -> str | None:
    if rank == config.world_size:
        return config.dealer.mpc_bind
    return config.party(rank).mpc_bind


def session_params(config: ClusterConfig, rank: int, tag: str) -> SessionParams:
    """Parameters for rank ``rank`` to join the epoch tagged ``tag``.

    Everyone dials a process at its ``mpc_address``; the process itself
    listens at its ``mpc_bind`` when given (behind NAT, or a relay in tests).
    """
    everyone = list(peers(config))
    bind = _bind(config, rank)
    if bind is not None:
        host, port = bind.rsplit(":", 1)
        everyone[rank] = Peer(everyone[rank].name, host, int(port))
    return SessionParams(
        rank=rank,
        world_size=config.world_size,
        peers=tuple(everyone),
        identity=identity(config, rank),
        epoch=bytes.fromhex(tag),
        timeout_s=config.serving.mpc_timeout_s,
        max_frame_bytes=config.serving.mpc_max_frame_mb << 20,
    )
