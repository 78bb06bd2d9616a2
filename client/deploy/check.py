"""``ppml deploy check``: can this host reach every endpoint it must, as itself?

From one host's point of view (``--as NAME``) every link it opens is probed
once: a TCP connection, a TLS handshake against the cluster CA and the name
on the certificate that answers. The links follow the topology:

* a client dials the gRPC port of every compute server;
* a compute server of rank >= 1 and the dealer dial the leader's gRPC port;
* on the MPC mesh the lower rank dials the higher (``servers/mpc/network/mesh.py``):
  rank r dials the ``mpc_address`` of every rank above it and the dealer's,
  with its own certificate (mutual TLS 1.3), and the certificate that answers
  must carry the configured name of that rank.

Each link ends in one verdict with a precise reason: connection refused
(nothing listens: a closed port or the wrong address), timed out (a firewall
drops it, or the wrong address), host unreachable, TLS failed (not this
cluster's CA, certificate not valid for the dialed host, or the peer rejected
our certificate) or the wrong identity (another process answered). Nothing
secret is sent: the MPC probe closes before its hello, the gRPC probe before
any request.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppml.proto.deploy.topology import ClusterConfig, ConfigError

DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Link:
    """One link this host opens: what it is, where to, whose certificate must answer."""

    kind: str  # "grpc" | "mpc"
    peer: str
    address: str
    mutual: bool  # present our own certificate (MPC links)


@dataclass(frozen=True)
class LinkReport:
    link: Link
    reachable: bool
    tls_ok: bool
    identity_ok: bool
    detail: str

    @property
    def ok(self) -> bool:
        return self.reachable and self.tls_ok and self.identity_ok


@dataclass(frozen=True)
class Identity:
    """Who is checking: a process with a certificate, or a client (CA only)."""

    name: str
    role: str  # "party" | "dealer" | "client"
    rank: int | None
    cert: Path | None
    key: Path | None


def identity_of(config: ClusterConfig, name: str) -> Identity:
    """The process named ``name`` in ``config``; any other name is a client."""
    for party in config.parties:
        if party.name == name:
            return Identity(name, "party", party.rank, party.tls_cert, party.tls_key)
    if config.has_dealer and config.dealer.name == name:
        dealer = config.dealer
        return Identity(name, "dealer", config.world_size, dealer.tls_cert, dealer.tls_key)
    return Identity(name, "client", None, None, None)


def links_for(config: ClusterConfig, me: Identity) -> list[Link]:
    """Every link ``me`` opens, in the order the check probes them."""
    if me.role == "client":
        return [Link("grpc", p.name, p.grpc_address, False) for p in config.parties]
    links: list[Link] = []
    if me.rank != 0:
        leader = config.leader
        links.append(Link("grpc", leader.name, leader.grpc_address, False))
    assert me.rank is not None
    for party in config.parties[me.rank + 1 :]:
        links.append(Link("mpc", party.name, party.mpc_address, True))
    if me.role == "party" and config.has_dealer:
        if config.dealer.mpc_address is None:
            raise ConfigError("[dealer] has no mpc_address: every party dials the dealer there")
        links.append(Link("mpc", config.dealer.name, config.dealer.mpc_address, True))
    return links


def _context(config: ClusterConfig, me: Identity, link: Link) -> ssl.SSLContext:
    if config.ca_cert is None:
        raise ConfigError("[cluster] has no ca_cert: nothing to check certificates against")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(config.ca_cert))
    context.verify_mode = ssl.CERT_REQUIRED
    if link.mutual:
        # as the MPC links do: TLS 1.3, both certificates, names checked against the rank
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False
        if me.cert is None or me.key is None:
            raise ConfigError(f"{me.name}: no tls_cert/tls_key in the topology for the MPC links")
        context.load_cert_chain(str(me.cert), str(me.key))
    else:
        # as gRPC does: the certificate must be valid for the host dialed
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        context.set_alpn_protocols(["h2"])
    return context


def _common_name(sock: ssl.SSLSocket) -> str | None:
    cert: Any = sock.getpeercert()
    for rdn in cert.get("subject", ()) if cert else ():
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _connect_error(exc: OSError, address: str, timeout: float) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host of {address} ({exc.strerror}): wrong address?"
    if isinstance(exc, TimeoutError):
        return (
            f"timed out after {timeout:g}s connecting to {address}: "
            "a firewall drops it or the address is wrong"
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused at {address}: nothing listens there (port closed or wrong)"
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"no route to {address} ({exc.strerror}): wrong address or network down"
    return f"cannot connect to {address}: {exc}"


def _tls_error(exc: ssl.SSLError, link: Link) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = exc.verify_message or str(exc)
        if "hostname" in message.lower() or "ip address mismatch" in message.lower():
            return (
                f"TLS failed: the certificate at {link.address} is not valid for that host "
                f"({message}); reissue {link.peer}'s certificate with this address"
            )
        return (
            f"TLS failed: the certificate at {link.address} is not signed by this cluster's CA "
            f"({message}): another cluster's process, or the wrong ca_cert"
        )
    reason = exc.reason or str(exc)
    if link.mutual and reason.upper().startswith(("TLSV13_ALERT", "SSLV3_ALERT", "TLSV1_ALERT")):
        return (
            f"TLS failed: {link.peer} at {link.address} rejected our certificate ({reason}): "
            "is ours signed by the same CA?"
        )
    return f"TLS failed at {link.address}: {reason}"


def probe(config: ClusterConfig, me: Identity, link: Link, timeout: float) -> LinkReport:
    """Connect, handshake and check the name on one link."""
    host, port = link.address.rsplit(":", 1)
    try:
        raw = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as exc:
        return LinkReport(link, False, False, False, _connect_error(exc, link.address, timeout))
    context = _context(config, me, link)
    try:
        with context.wrap_socket(raw, server_hostname=host) as sock:
            if link.mutual:
                # TLS 1.3: the listener checks our certificate after our side finished;
                # a rejection arrives as an alert on the first read, silence means accepted
                sock.settimeout(min(timeout, 1.0))
                with contextlib.suppress(TimeoutError):
                    sock.recv(1)
            name = _common_name(sock)
    except ssl.SSLError as exc:
        return LinkReport(link, True, False, False, _tls_error(exc, link))
    except OSError as exc:
        return LinkReport(link, True, False, False, f"TLS failed at {link.address}: {exc}")
    finally:
        raw.close()
    if name != link.peer:
        return LinkReport(
            link,
            True,
            True,
            False,
            f"wrong identity at {link.address}: certificate names {name!r}, expected "
            f"{link.peer!r} (another process listens there: wrong address in the topology?)",
        )
    return LinkReport(link, True, True, True, f"{link.peer} answered at {link.address}")


def check(config: ClusterConfig, name: str, timeout: float = DEFAULT_TIMEOUT_S) -> list[LinkReport]:
    """Probe every link ``name`` opens (see the module docstring)."""
    me = identity_of(config, name)
    return [probe(config, me, link, timeout) for link in links_for(config, me)]
