"""A whole cluster on loopback: N compute servers + dealer (or 3 and none), TLS on, own CA.

``LocalCluster`` writes the same topology file a multi-host deployment uses
(``DIR/cluster.toml``), a private CA and per-server certificates, bearer
tokens (client, read-only monitor, peer) and per-server auth files; then it
starts every process and waits until all report SERVING. Used by the demo,
the CLI (``ppml cluster up``) and the integration tests.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ppml.proto.deploy.channels import client_channel
from ppml.proto.deploy.tls import issue_server_cert, make_ca
from ppml.proto.deploy.tokens import new_token, write_auth_file, write_secret
from ppml.proto.deploy.topology import ClusterConfig, load_config

# Run in the child *after* exec, as a tiny ``python -c`` program: ask for SIGTERM
# when the process that started it dies (so servers started for a driver never
# outlive it, even when it is killed with SIGKILL), give up at once if that
# process is already gone, then exec the real command in place (same pid). The
# parent-death signal survives exec. It is not set from ``preexec_fn``: that
# forces a plain fork() that runs Python in the child, and a driver with gRPC
# calls in flight (a restart under traffic) then runs gRPC's fork handlers
# there, which can abort the child before exec ("Check failed:
# next_worker->state == KICKED"), so the restarted server never starts.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def spawn_command(cmd: list[str], die_with_parent: bool) -> list[str]:
    """``cmd``, wrapped so that it gets SIGTERM when this process dies (Linux only).

    The child runs no Python between fork and exec, so spawning is safe from a
    process with gRPC threads busy.
    """
    if not die_with_parent or not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOW_PORT = 20000  # local clusters listen between here and the ephemeral range
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, for a process about to listen there.

    Chosen below the kernel's ephemeral range where it has one: a port the
    kernel picked (bind to 0) is one it may hand to some outgoing connection's
    local end before the new listener binds it ("Address already in use", a
    cluster that fails to start). Below that range only listeners compete, and
    the port is checked free; a port is not handed out twice by one process.
    The choice is public, so the random source is not a secret one.
    """
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    rng = random.SystemRandom()
    for _ in range(200 if low > _LOW_PORT else 0):
        port = rng.randrange(_LOW_PORT, low)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    with socket.socket() as sock:  # no such range (or all busy): let the kernel pick
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def write_local_topology(
    directory: Path,
    parties: int,
    serving: dict[str, float] | None = None,
    limits: dict[str, float] | None = None,
    clients: tuple[str, ...] = (),
    engine: str = "dealer",
) -> Path:
    """Create CA, certificates, tokens, auth files and ``cluster.toml`` in ``directory``.

    ``engine = "replicated"`` (three parties) writes no dealer at all.
    Every server and the dealer gets its own peer token (its identity on its
    link to the leader is its name); two client identities (``local-user``,
    the default, and ``analyst``) and a read-only ``monitor`` are written too,
    plus one client identity per name in ``clients`` (``secrets/<name>.token``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    secrets_dir = directory / "secrets"
    ca = make_ca(directory / "tls")
    client, monitor, analyst = new_token(), new_token(), new_token()
    # a second client identity, so sharing and owner-only rules can be exercised locally
    write_secret(secrets_dir / "analyst.token", analyst)
    write_secret(secrets_dir / "client.token", client)
    write_secret(secrets_dir / "monitor.token", monitor)
    names = [f"server-{rank}" for rank in range(parties)]
    dealer = engine == "dealer"
    peers = {name: new_token() for name in [*names, *(["dealer"] if dealer else [])]}
    for name, token in peers.items():
        write_secret(secrets_dir / f"{name}.peer.token", token)
    extra = {name: new_token() for name in clients}
    for name, token in extra.items():
        write_secret(secrets_dir / f"{name}.token", token)
    entries = [
        ("local-user", "client", client),
        ("analyst", "client", analyst),
        *((name, "client", token) for name, token in extra.items()),
        ("monitor", "monitor", monitor),
        *((name, "peer", token) for name, token in peers.items()),
    ]
    lines = [
        "# ppml topology: compute parties in rank order (rank 0 leads) and the dealer.",
        "# Paths are relative to this file. The same format works across hosts.",
        "[cluster]",
        'name = "local"',
        'ca_cert = "tls/ca.pem"',
        *([] if dealer else [f'engine = "{engine}"']),
        "",
    ]
    for name in names:
        issue_server_cert(ca, directory / "tls", name, ["127.0.0.1", "localhost"])
        write_auth_file(directory / "auth" / f"{name}.toml", entries)
        lines += [
            "[[parties]]",
            f'name = "{name}"',
            f'grpc_address = "127.0.0.1:{free_port()}"',
            f'mpc_address = "127.0.0.1:{free_port()}"',
            f"metrics_port = {free_port()}",
            f'tls_cert = "tls/{name}.pem"',
            f'tls_key = "tls/{name}.key"',
            f'data_dir = "data/{name}"',
            f'auth_file = "auth/{name}.toml"',
            f'peer_token_file = "secrets/{name}.peer.token"',
            "",
        ]
    if dealer:
        issue_server_cert(ca, directory / "tls", "dealer", ["127.0.0.1", "localhost"])
        lines += [
            "[dealer]",
            'name = "dealer"',
            'peer_token_file = "secrets/dealer.peer.token"',
            f'mpc_address = "127.0.0.1:{free_port()}"',
            'tls_cert = "tls/dealer.pem"',
            'tls_key = "tls/dealer.key"',
            "",
        ]
    lines += [
        "[client]",
        'token_file = "secrets/client.token"',
        'monitor_token_file = "secrets/monitor.token"',
        "",
        "[serving]",
    ]
    for key, value in (serving or {}).items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
    lines += ["", "[limits]"]
    for key, value in (limits or {}).items():
        lines.append(f"{key} = {value}")
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_serving(
    config: ClusterConfig,
    timeout: float = 120.0,
    insecure: bool = False,
    alive: Callable[[], None] = lambda: None,
) -> None:
    """Block until every compute server's health check says SERVING.

    ``alive`` is called while waiting and may raise to stop early (e.g. when a
    process being waited for has exited).
    """
    deadline = time.monotonic() + timeout
    for party in config.parties:
        channel = client_channel(party.grpc_address, None if insecure else config.ca_cert)
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            while True:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{party.name} did not become SERVING within {timeout}s")
                time.sleep(0.2)
        finally:
            channel.close()


class LocalCluster:
    """Start N compute servers and a dealer on loopback; stop them on exit."""

    def __init__(
        self,
        parties: int = 2,
        directory: str | Path | None = None,
        insecure: bool = False,
        serving: dict[str, float] | None = None,
        startup_timeout: float = 180.0,
        limits: dict[str, float] | None = None,
        detached: bool = False,
        clients: tuple[str, ...] = (),
        engine: str = "dealer",
    ) -> None:
        """``detached``: the processes outlive this one (``ppml cluster up``); by default
        they get SIGTERM when it dies, however it dies. ``clients``: more client
        identities (their tokens in ``secrets/<name>.token``, see :meth:`token`).
        ``engine = "replicated"``: three servers and no dealer process."""
        if parties < 2:
            raise ValueError("a cluster needs at least 2 non-colluding compute servers")
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="ppml-cluster-")
        self.directory = Path(directory or self._tmp.name)  # type: ignore[union-attr]
        self.parties = parties
        self.insecure = insecure
        self._serving = serving
        self._limits = limits
        self._detached = detached
        self._clients = clients
        self._engine = engine
        self._startup_timeout = startup_timeout
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.config_path = self.directory / "cluster.toml"

    @property
    def config(self) -> ClusterConfig:
        return load_config(self.config_path)

    def _spawn(self, name: str, args: list[str]) -> None:
        logs = self.directory / "logs"
        logs.mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", *args, "--config", str(self.config_path)]
        if self.insecure:
            cmd.append("--insecure")
        with open(logs / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                spawn_command(cmd, die_with_parent=not self._detached),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def token(self, identity: str) -> str:
        """The bearer token of a client identity of this cluster (``local-user``: default)."""
        name = "client" if identity == "local-user" else identity
        return (self.directory / "secrets" / f"{name}.token").read_text().strip()

    def start_server(self, rank: int, entry: str = "ppml.servers.main") -> None:
        """Start (or restart) rank ``rank``; ``entry``: the module to run (tests may start a
        test build from the tests folder; ``ppml-server`` itself has no such switch)."""
        self._spawn(f"server-{rank}", [entry, "--rank", str(rank)])

    def start_dealer(self) -> None:
        self._spawn("dealer", ["ppml.servers.mpc.dealer"])

    def start(self) -> LocalCluster:
        if not self.config_path.exists():
            write_local_topology(
                self.directory,
                self.parties,
                self._serving,
                self._limits,
                self._clients,
                self._engine,
            )
        for rank in range(self.parties):
            self.start_server(rank)
        if self.config.has_dealer:
            self.start_dealer()
        try:
            self.wait_serving(self._startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_serving(self, timeout: float = 120.0) -> None:
        wait_serving(self.config, timeout, self.insecure, self._check_alive)

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log(name)}")

    def log(self, name: str) -> Path:
        return self.directory / "logs" / f"{name}.log"

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill one process (e.g. ``"server-1"``) without any clean-up, as a crash would."""
        proc = self.processes.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
