"""Start a secured MPC session as real processes: N parties + the dealer, own CA.

Used by the ``test_mpc_*`` integration tests. Each process runs
``mpc_programs.py``; this module writes their shared JSON config (CA and
certificates in ``tmp``, free loopback ports, epoch tags), starts them, waits
for marker files and collects each process's result file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ppml.client.deploy.local import free_port
from ppml.proto.deploy.tls import issue_server_cert, make_ca
from ppml.servers.mpc.network.mesh import new_epoch_tag

PROGRAM = Path(__file__).with_name("mpc_programs.py")


class MpcCluster:
    """Config, processes and results of one test session (always call :meth:`stop`)."""

    def __init__(
        self,
        directory: Path,
        parties: int,
        epochs: int = 1,
        timeouts: list[tuple[float, float]] | None = None,
        **extra: object,
    ) -> None:
        self.directory = directory
        self.world_size = parties
        self.out = directory / "out"
        self.out.mkdir(parents=True)
        ca = make_ca(directory / "tls")
        self.ca = ca
        self.names = [*(f"server-{r}" for r in range(parties)), "dealer"]
        certs = {}
        for name in self.names:
            files = issue_server_cert(ca, directory / "tls", name, ["127.0.0.1"])
            certs[name] = [str(files.cert), str(files.key)]
        self.listen = {str(rank): ["127.0.0.1", free_port()] for rank in range(1, parties + 1)}
        self.epochs = [new_epoch_tag().hex() for _ in range(epochs)]
        self.config: dict = {
            "world_size": parties,
            "names": self.names,
            "ca": str(ca.cert),
            "certs": certs,
            "listen": self.listen,
            "dial": {},
            "epochs": self.epochs,
            "timeouts": timeouts or [(60.0, 120.0)] * epochs,
            "out": str(self.out),
            **extra,
        }
        self.procs: dict[tuple[int, int], subprocess.Popen[bytes]] = {}

    @property
    def dealer_rank(self) -> int:
        return self.world_size

    def address(self, rank: int) -> tuple[str, int]:
        host, port = self.listen[str(rank)]
        return str(host), int(port)

    def dial_via(self, rank: int, peer: int, address: tuple[str, int]) -> None:
        """Make ``rank`` dial ``peer`` at ``address`` (a relay) instead."""
        self.config["dial"].setdefault(str(rank), {})[str(peer)] = list(address)

    def start(self, scenario: str, ranks: list[int] | None = None, first_epoch: int = 0) -> None:
        path = self.directory / "config.json"
        path.write_text(json.dumps(self.config))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for rank in ranks if ranks is not None else range(self.world_size + 1):
            log = open(self.directory / f"log-{rank}-{first_epoch}.txt", "wb")  # noqa: SIM115
            command = [sys.executable, str(PROGRAM), str(path), str(rank), scenario]
            self.procs[(rank, first_epoch)] = subprocess.Popen(
                [*command, str(first_epoch)], stdout=log, stderr=subprocess.STDOUT, env=env
            )
            log.close()

    def pid(self, rank: int, first_epoch: int = 0) -> int:
        return self.procs[(rank, first_epoch)].pid

    def wait_for(self, name: str, timeout: float = 240.0) -> None:
        """Wait until marker file ``out/name`` exists (fails early if a process died)."""
        deadline = time.monotonic() + timeout
        while not (self.out / name).exists():
            dead = {k: p.returncode for k, p in self.procs.items() if p.poll() not in (None, 0)}
            if dead or time.monotonic() > deadline:
                raise AssertionError(f"no {name} (dead: {dead})\n{self.logs()}")
            time.sleep(0.05)

    def kill(self, rank: int, first_epoch: int = 0) -> float:
        """SIGKILL one process; returns the wall-clock time just before."""
        moment = time.time()
        os.kill(self.pid(rank, first_epoch), signal.SIGKILL)
        self.procs[(rank, first_epoch)].wait()
        return moment

    def results(self, timeout: float = 300.0) -> dict[int, dict]:
        """Wait for every live process to end; each one's result by rank (latest start)."""
        deadline = time.monotonic() + timeout
        for key, proc in self.procs.items():
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired as exc:
                raise AssertionError(f"process {key} did not end\n{self.logs()}") from exc
        failed = {k: p.returncode for k, p in self.procs.items() if p.returncode not in (0, -9)}
        if failed:
            raise AssertionError(f"processes failed: {failed}\n{self.logs()}")
        results: dict[int, dict] = {}
        for rank, first in sorted(self.procs):
            path = self.out / f"rank{rank}-{first}.json"
            if path.exists():
                results[rank] = json.loads(path.read_text())
        return results

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.directory.glob("log-*.txt"))
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
