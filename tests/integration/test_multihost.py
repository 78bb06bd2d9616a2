"""A real multi-host cluster: every process in its own network namespace, with its own IP.

Four namespaces (two compute servers, the dealer, the client) hang off a
bridge that lives in a fifth namespace, so nothing touches the host's own
network or firewall. Every process gets only its own bundle from
``ppml deploy init`` for those IPs. The client shares a model, predicts and
compares with plaintext, trains briefly; then server 1 and the dealer are
restarted (SIGKILL, as a crash) and predictions must recover.

Needs root (``ip netns``); skipped with the reason when a namespace cannot be
created.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ppml.client.deploy.local import spawn_command

HERE = Path(__file__).resolve().parent
GRPC, MPC, METRICS, DEALER_MPC = 50051, 29500, 9100, 29600


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _netns_unavailable() -> str | None:
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"ppml-probe-{secrets.token_hex(4)}"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


_SKIP = _netns_unavailable()
pytestmark = pytest.mark.skipif(_SKIP is not None, reason=f"multi-host test: {_SKIP}")


@dataclass
class Net:
    """Namespaces ``<prefix>-s0``, ``-s1``, ``-d``, ``-c`` on a bridge in ``<prefix>-br``."""

    prefix: str
    subnet: str  # "10.77.X"
    hosts: dict[str, str] = field(default_factory=dict)  # role -> IP

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def exec(self, role: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(role)]


@pytest.fixture
def net() -> Iterator[Net]:
    tag = secrets.token_hex(3)
    net = Net(f"ppml-{tag}", f"10.77.{secrets.randbelow(254) + 1}")
    roles = ["s0", "s1", "d", "c"]
    created: list[str] = []
    try:
        for name in ["br", *roles]:
            _ip("netns", "add", net.ns(name))
            created.append(net.ns(name))
        br = net.ns("br")
        _ip("-n", br, "link", "add", "br0", "type", "bridge")
        _ip("-n", br, "link", "set", "br0", "up")
        for index, role in enumerate(roles):
            ip = f"{net.subnet}.{10 + index}"
            host_end, peer_end = f"v{tag}{index}", f"p{tag}{index}"  # <= 15 characters
            _ip("link", "add", host_end, "type", "veth", "peer", "name", peer_end)
            _ip("link", "set", host_end, "netns", br)
            _ip("link", "set", peer_end, "netns", net.ns(role))
            _ip("-n", br, "link", "set", host_end, "master", "br0")
            _ip("-n", br, "link", "set", host_end, "up")
            _ip("-n", net.ns(role), "link", "set", peer_end, "name", "eth0")
            _ip("-n", net.ns(role), "addr", "add", f"{ip}/24", "dev", "eth0")
            _ip("-n", net.ns(role), "link", "set", "eth0", "up")
            _ip("-n", net.ns(role), "link", "set", "lo", "up")
            net.hosts[role] = ip
        yield net
    finally:
        # deleting a namespace deletes its veth ends (and the pair with it)
        for name in reversed(created):
            _ip("netns", "del", name, check=False)


class Processes:
    def __init__(self, net: Net, logs: Path) -> None:
        self.net, self.logs = net, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, role: str, args: list[str]) -> None:
        self.logs.mkdir(exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [*self.net.exec(role), *spawn_command([sys.executable, "-m", *args], True)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
            )

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def _link_check(net: Net, role: str, config: Path, name: str) -> subprocess.Popen[str]:
    """``ppml deploy check`` in ``role``'s namespace, as ``name``, started."""
    return subprocess.Popen(
        [*net.exec(role), sys.executable, "-m", "ppml.client.cli", "deploy", "check",
         "--config", str(config), "--as", name, "--timeout", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


class Client:
    """``multihost_client.py`` in the client's namespace, one process for every phase."""

    def __init__(self, net: Net, config: Path, log: Path) -> None:
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [*net.exec("c"), sys.executable, str(HERE / "multihost_client.py"), str(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
            )

    def ask(self, phase: str, timeout: float = 150) -> dict[str, object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(phase + "\n")
        self.proc.stdin.flush()
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout)
        line = self.proc.stdout.readline() if ready else ""
        tail = self.log.read_text(errors="replace")[-4000:]
        assert line, f"client: no answer to {phase} within {timeout} s:\n{tail}"
        return dict(json.loads(line))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_cluster_across_network_namespaces(net: Net, tmp_path: Path) -> None:
    hosts = net.hosts
    out = tmp_path / "bundles"
    init = subprocess.run(
        [
            sys.executable, "-m", "ppml.client.cli", "deploy", "init", "--out", str(out),
            "--party", f"s0={hosts['s0']}:{GRPC}:{MPC}:{METRICS}",
            "--party", f"s1={hosts['s1']}:{GRPC}:{MPC}",
            "--dealer", f"dealer={hosts['d']}:{DEALER_MPC}",
            "--client", "alice",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    # each process sees only its own bundle: copy it to a folder of its own, as to a host
    hosts_dir = tmp_path / "hosts"
    bundle = {}
    for name in ("s0", "s1", "dealer"):
        bundle[name] = shutil.copytree(out / name, hosts_dir / name)
    bundle["alice"] = shutil.copytree(out / "clients" / "alice", hosts_dir / "alice")
    procs = Processes(net, tmp_path / "logs")
    client: Client | None = None
    try:
        procs.start(
            "s0",
            "s0",
            ["ppml.servers.main", "--config", str(bundle["s0"] / "cluster.toml"), "--rank", "0"],
        )
        procs.start(
            "s1",
            "s1",
            ["ppml.servers.main", "--config", str(bundle["s1"] / "cluster.toml"), "--rank", "1"],
        )
        procs.start(
            "dealer",
            "d",
            ["ppml.servers.mpc.dealer", "--config", str(bundle["dealer"] / "cluster.toml")],
        )
        client = Client(net, bundle["alice"] / "cluster.toml", tmp_path / "logs" / "client.log")

        # the link check from every host, as itself, once the listeners are up (all four
        # at once; each retried until it passes or 90 s have gone)
        checks = {"s0": "s0", "s1": "s1", "dealer": "d", "alice": "c"}
        deadline = time.monotonic() + 90
        while True:
            running = {
                name: _link_check(net, role, bundle[name] / "cluster.toml", name)
                for name, role in checks.items()
            }
            results = {name: (p, *p.communicate(timeout=60)) for name, p in running.items()}
            for name, (proc, said, _) in results.items():
                if proc.returncode == 0:
                    assert "links ok" in said and "NO" not in said, f"{name}:\n{said}"
                    del checks[name]
            if not checks or time.monotonic() > deadline:
                break
            procs.alive()
            time.sleep(1.0)
        failed = {name: said + err for name, (_, said, err) in results.items() if name in checks}
        assert not failed, failed
        first = client.ask("setup")
        assert float(first["error"]) < 0.05  # type: ignore[arg-type]
        assert first["model_id"]  # the later phases predict with it

        procs.kill("s1")
        procs.start(
            "s1",
            "s1",
            ["ppml.servers.main", "--config", str(bundle["s1"] / "cluster.toml"), "--rank", "1"],
        )
        after_server = client.ask("predict")
        assert float(after_server["error"]) < 0.05  # type: ignore[arg-type]

        procs.kill("dealer")
        procs.start(
            "dealer",
            "d",
            ["ppml.servers.mpc.dealer", "--config", str(bundle["dealer"] / "cluster.toml")],
        )
        after_dealer = client.ask("predict")
        assert float(after_dealer["error"]) < 0.05  # type: ignore[arg-type]
        procs.alive()
    except BaseException:
        for name in ("s0", "s1", "dealer"):
            with contextlib.suppress(Exception):
                print(f"--- {name} log tail ---\n{procs.tail(name)}", file=sys.stderr)
        raise
    finally:
        if client is not None:
            client.close()
        procs.stop()
