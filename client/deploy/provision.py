"""Provisioning a real multi-host cluster: one bundle folder per host (``ppml deploy init``).

Given the parties (in rank order), the dealer and the clients with their real
addresses, :func:`provision` writes::

    OUT/ca/                      the CA certificate and key (stays with the CA operator)
    OUT/<party>/                 one per compute server
        cluster.toml             the shared topology (real addresses, relative paths)
        tls/ca.pem               the CA certificate (never its key)
        tls/<party>.pem, .key    its own certificate (SANs: its host) and key
        auth/<party>.toml        the tokens it accepts (SHA-256 hashes only)
        secrets/<party>.peer.token   its own identity on its link to the leader
    OUT/<dealer>/                the dealer: the same, without an auth file
    OUT/clients/<client>/        cluster.toml with a [client] section, tls/ca.pem, its token

A bundle holds nothing of any other host: no other key, no other token. Every
bundle's ``cluster.toml`` is the same file (client bundles add their
``[client]`` table), so the paths of the other hosts' files simply do not
exist there.

Trust set-up (b), where each organisation keeps its own key: the organisation
runs ``ppml deploy csr`` (key and CSR on its own machine), the CA operator
passes the CSR to ``ppml deploy init --csr NAME=FILE`` (or signs it alone with
``ppml deploy sign``); that host's bundle then has its certificate but no key,
and the organisation puts its key at ``tls/NAME.key``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ppml.proto.deploy.tls import TlsFiles, issue_server_cert, make_ca, sign_csr
from ppml.proto.deploy.tokens import new_token, write_auth_file, write_secret

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_RESERVED = {"ca", "clients"}


class ProvisionError(ValueError):
    """A host specification is malformed or the plan is inconsistent."""


@dataclass(frozen=True)
class PartySpec:
    name: str
    host: str
    grpc_port: int
    mpc_port: int
    metrics_port: int | None = None


@dataclass(frozen=True)
class DealerSpec:
    name: str
    host: str
    mpc_port: int


@dataclass(frozen=True)
class Plan:
    """Who runs where: parties in rank order (rank 0 leads), the dealer, the clients.

    No dealer: three parties on the replicated engine (``engine = "replicated"``).
    """

    parties: tuple[PartySpec, ...]
    dealer: DealerSpec | None
    clients: tuple[str, ...]
    monitors: tuple[str, ...] = ()
    cluster_name: str = "ppml"
    serving: Mapping[str, float] = field(default_factory=dict)
    limits: Mapping[str, float] = field(default_factory=dict)

    @property
    def servers(self) -> tuple[str, ...]:
        """Every process with an MPC identity: the parties, then the dealer (if any)."""
        dealer = () if self.dealer is None else (self.dealer.name,)
        return (*(p.name for p in self.parties), *dealer)


@dataclass(frozen=True)
class Bundles:
    """Where :func:`provision` put everything."""

    ca: TlsFiles
    hosts: dict[str, Path]  # party and dealer name -> bundle folder
    clients: dict[str, Path]  # client and monitor name -> bundle folder


def _check_name(name: str) -> str:
    if not _NAME.match(name) or name in _RESERVED:
        raise ProvisionError(
            f"{name!r} is not a usable name: letters, digits, '.', '_', '-' "
            f"(up to 63, starting with a letter or digit), not {sorted(_RESERVED)}"
        )
    return name


def _check_host(host: str, spec: str) -> str:
    if not host:
        raise ProvisionError(f"{spec!r}: empty host")
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$", host):
        raise ProvisionError(f"{spec!r}: {host!r} is neither an IPv4 address nor a DNS name")
    return host


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ProvisionError(f"{spec!r}: {text!r} is not a port in 1..65535")
    return int(text)


def _split(spec: str) -> tuple[str, list[str]]:
    name, sep, rest = spec.partition("=")
    if not sep:
        raise ProvisionError(f"{spec!r}: expected NAME=HOST:PORT...")
    return _check_name(name), rest.split(":")


def parse_party(spec: str) -> PartySpec:
    """``NAME=HOST:GRPC_PORT:MPC_PORT[:METRICS_PORT]``."""
    name, fields = _split(spec)
    if len(fields) not in (3, 4):
        raise ProvisionError(f"{spec!r}: expected NAME=HOST:GRPC_PORT:MPC_PORT[:METRICS_PORT]")
    metrics = _port(fields[3], spec) if len(fields) == 4 else None
    return PartySpec(
        name, _check_host(fields[0], spec), _port(fields[1], spec), _port(fields[2], spec), metrics
    )


def parse_dealer(spec: str) -> DealerSpec:
    """``NAME=HOST:MPC_PORT``."""
    name, fields = _split(spec)
    if len(fields) != 2:
        raise ProvisionError(f"{spec!r}: expected NAME=HOST:MPC_PORT")
    return DealerSpec(name, _check_host(fields[0], spec), _port(fields[1], spec))


def check_plan(plan: Plan) -> None:
    if len(plan.parties) < 2:
        raise ProvisionError("a cluster needs at least two compute servers (--party, twice)")
    if plan.dealer is None and len(plan.parties) != 3:
        raise ProvisionError(
            "without --dealer a cluster runs the replicated engine, on exactly three servers "
            f"(--party, three times); this plan has {len(plan.parties)}: add --dealer or a party"
        )
    names = [*plan.servers, *plan.clients, *plan.monitors]
    for name in names:
        _check_name(name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ProvisionError(f"every process and client needs its own name; repeated: {duplicates}")
    if not plan.clients and not plan.monitors:
        raise ProvisionError("name at least one --client (or --monitor)")
    used: dict[tuple[str, int], str] = {}
    listeners = [
        *((p.host, p.grpc_port, f"{p.name} gRPC") for p in plan.parties),
        *((p.host, p.mpc_port, f"{p.name} MPC") for p in plan.parties),
        *((p.host, p.metrics_port, f"{p.name} metrics") for p in plan.parties if p.metrics_port),
        *(
            ((plan.dealer.host, plan.dealer.mpc_port, f"{plan.dealer.name} MPC"),)
            if plan.dealer is not None
            else ()
        ),
    ]
    for host, port, what in listeners:
        assert port is not None
        if (host, port) in used:
            raise ProvisionError(f"{what} and {used[host, port]} both listen on {host}:{port}")
        used[host, port] = what


def topology_text(plan: Plan, client: str | None = None, monitor: str | None = None) -> str:
    """The shared ``cluster.toml``; a client bundle's adds its ``[client]`` table."""
    lines = [
        "# ppml topology (written by `ppml deploy init`): the same file on every host.",
        "# Parties in rank order (rank 0 leads), then the dealer. Paths are relative to",
        "# this file; each host's bundle holds only its own key, certificate and tokens.",
        "[cluster]",
        f'name = "{plan.cluster_name}"',
        'ca_cert = "tls/ca.pem"',
        *([] if plan.dealer is not None else ['engine = "replicated"  # three servers, no dealer']),
        "",
    ]
    for party in plan.parties:
        lines += [
            "[[parties]]",
            f'name = "{party.name}"',
            f'grpc_address = "{party.host}:{party.grpc_port}"',
            f'mpc_address = "{party.host}:{party.mpc_port}"',
        ]
        if party.metrics_port is not None:
            lines.append(f"metrics_port = {party.metrics_port}")
        lines += [
            f'tls_cert = "tls/{party.name}.pem"',
            f'tls_key = "tls/{party.name}.key"',
            f'data_dir = "data/{party.name}"',
            f'auth_file = "auth/{party.name}.toml"',
            f'peer_token_file = "secrets/{party.name}.peer.token"',
            "",
        ]
    dealer = plan.dealer
    if dealer is not None:
        lines += [
            "[dealer]",
            f'name = "{dealer.name}"',
            f'mpc_address = "{dealer.host}:{dealer.mpc_port}"',
            f'tls_cert = "tls/{dealer.name}.pem"',
            f'tls_key = "tls/{dealer.name}.key"',
            f'peer_token_file = "secrets/{dealer.name}.peer.token"',
            "",
        ]
    if client is not None or monitor is not None:
        lines.append("[client]")
        if client is not None:
            lines.append(f'token_file = "secrets/{client}.token"')
        if monitor is not None:
            lines.append(f'monitor_token_file = "secrets/{monitor}.token"')
        lines.append("")
    for section, values in (("serving", plan.serving), ("limits", plan.limits)):
        if values:
            lines.append(f"[{section}]")
            lines += [f"{key} = {value}" for key, value in values.items()]
            lines.append("")
    return "\n".join(lines)


def _bundle_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _readme(path: Path, text: str) -> None:
    (path / "BUNDLE.txt").write_text(text.strip() + "\n")


def provision(out: Path, plan: Plan, csrs: Mapping[str, bytes] | None = None) -> Bundles:
    """Write the CA and one bundle per host into ``out`` (which must be empty or absent).

    ``csrs`` maps a party or dealer name to its PEM CSR (set-up (b)): that
    host's certificate is signed from the CSR, and its bundle has no key.
    """
    check_plan(plan)
    csrs = dict(csrs or {})
    unknown = sorted(set(csrs) - set(plan.servers))
    if unknown:
        raise ProvisionError(f"--csr for {unknown}: not a party or the dealer")
    if out.exists() and any(out.iterdir()):
        raise ProvisionError(f"{out} is not empty: refusing to overwrite a cluster's CA and keys")
    _bundle_dir(out)
    ca = make_ca(_bundle_dir(out / "ca"), f"ppml {plan.cluster_name} CA")
    peers = {name: new_token() for name in plan.servers}
    clients = {name: new_token() for name in plan.clients}
    monitors = {name: new_token() for name in plan.monitors}
    auth_entries = [
        *((name, "client", token) for name, token in clients.items()),
        *((name, "monitor", token) for name, token in monitors.items()),
        *((name, "peer", token) for name, token in peers.items()),
    ]
    topology = topology_text(plan)
    hosts = {p.name: p.host for p in plan.parties}
    if plan.dealer is not None:
        hosts[plan.dealer.name] = plan.dealer.host
    bundles: dict[str, Path] = {}
    for name in plan.servers:
        bundle = _bundle_dir(out / name)
        tls = _bundle_dir(bundle / "tls")
        shutil.copyfile(ca.cert, tls / "ca.pem")
        if name in csrs:
            info = sign_csr(ca, csrs[name], tls / f"{name}.pem", expect_name=name)
            if hosts[name] not in info.hosts:
                raise ProvisionError(
                    f"the CSR for {name} covers {info.hosts}, not its address {hosts[name]}"
                )
            key_note = f"Put your own key (from `ppml deploy csr`) at tls/{name}.key, mode 0600."
        else:
            issue_server_cert(ca, tls, name, [hosts[name]])
            key_note = f"tls/{name}.key is this host's private key: keep it here, mode 0600."
        write_secret(bundle / "secrets" / f"{name}.peer.token", peers[name])
        os.chmod(bundle / "secrets", 0o700)
        (bundle / "cluster.toml").write_text(topology)
        if plan.dealer is not None and name == plan.dealer.name:
            run = "ppml-dealer --config cluster.toml"
        else:
            rank = [p.name for p in plan.parties].index(name)
            write_auth_file(bundle / "auth" / f"{name}.toml", auth_entries)
            run = f"ppml-server --config cluster.toml --rank {rank}"
        _readme(
            bundle,
            f"ppml bundle for {name} (host {hosts[name]}). Run here: {run}\n"
            f"Check the links first: ppml deploy check --config cluster.toml --as {name}\n"
            f"{key_note}\nSee docs/deploy.md.",
        )
        bundles[name] = bundle
    client_bundles: dict[str, Path] = {}
    for name, token in [*clients.items(), *monitors.items()]:
        bundle = _bundle_dir(out / "clients" / name)
        _bundle_dir(bundle / "tls")
        shutil.copyfile(ca.cert, bundle / "tls" / "ca.pem")
        write_secret(bundle / "secrets" / f"{name}.token", token)
        os.chmod(bundle / "secrets", 0o700)
        is_monitor = name in monitors
        (bundle / "cluster.toml").write_text(
            topology_text(plan, None if is_monitor else name, name if is_monitor else None)
        )
        _readme(
            bundle,
            f"ppml {'monitor' if is_monitor else 'client'} bundle for {name}: "
            f"ppml ... --config cluster.toml\n"
            f"secrets/{name}.token is its bearer token: keep it secret.",
        )
        client_bundles[name] = bundle
    return Bundles(ca, bundles, client_bundles)
