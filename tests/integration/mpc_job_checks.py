"""One compute party of ``test_mpc_job_checks.py`` (run by ``mpc_programs.py checks``).

The party runs ppml's own :class:`~ppml.servers.mpc.worker.MpcWorker` in a
secured session with a 120 s timeout (the default ``mpc_timeout_s``), and
through it four jobs of a test kind, in order:

1. ``range``: :func:`~ppml.servers.mpc.aggregation.update_checks.weights_in_range` on
   the weight shares in :func:`weight_cases` (both bounds of the non-DP and
   the DP range);
2. ``both``: every party fails the job alike (after a collective);
3. ``rank0``: only rank 0 fails, after the job's last collective: rank 1
   completes it and goes idle, as when rank 0 alone could not sum CKKS
   updates;
4. ``after`` (rank 1 only, once rank 0 reported job 3): a collective.

Each job's outcome, as the worker reported it, is written with its times.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppml.proto.domain import commands as cmd
from ppml.proto.domain import federations as fed
from ppml.servers.mpc.aggregation import update_checks
from ppml.servers.mpc.core.crypten_compat import crypten
from ppml.servers.mpc.network.mesh import SessionParams
from ppml.servers.mpc.worker import MpcWorker
from ppml.servers.store.metrics import ServerMetrics

RING_MIN, RING_MAX = -(2**63), 2**63 - 1


def weight_cases() -> np.ndarray:
    """Reconstructed weights (ring values) to test: edges, garbage, random ring elements."""
    one = 2**16
    edges = [10 * one, one, fed.MAX_UPDATE_WEIGHT * one, 0, -5 * one]
    edges += [(fed.MAX_UPDATE_WEIGHT + 1) * one, one - 1, one + 1, 2 * one]
    edges += [RING_MIN, RING_MAX, RING_MIN + one, RING_MIN + fed.MAX_UPDATE_WEIGHT * one]
    rng = np.random.default_rng(5)  # public: test fixtures (garbage weights)
    garbage = rng.integers(RING_MIN, RING_MAX, 8, dtype=np.int64, endpoint=True)
    return np.concatenate([np.array(edges, dtype=np.int64), garbage])


def expected_valid(values: np.ndarray, low: int, high: int) -> list[bool]:
    scale = 2**16
    return [bool(low * scale <= int(v) <= high * scale) for v in values]


def _my_shares(values: np.ndarray, rank: int, world: int) -> list[np.ndarray]:
    """This party's additive ring share of each value (public masks: test only)."""
    rng = np.random.default_rng(77)  # public: test fixture shares
    masks = [
        rng.integers(RING_MIN, RING_MAX, values.shape, dtype=np.int64, endpoint=True)
        for _ in range(world - 1)
    ]
    with np.errstate(over="ignore"):
        mine = masks[rank] if rank < world - 1 else values - np.sum(np.stack(masks), axis=0)
    return [np.array([v], dtype=np.int64) for v in mine]


@dataclass
class _Stats:
    model_id: str = ""
    requests: int = 0


class CheckKind:
    """The test kind: what each job does is in the module docstring."""

    needs_session = True

    def __init__(self, rank: int, world: int) -> None:
        self.rank = rank
        self.world = world
        self.events: dict[str, Any] = {}

    def take(self, job: Any) -> None:
        return None

    def run(self, seq: int, job: str, taken: None) -> _Stats:
        if job == "range":
            mine = _my_shares(weight_cases(), self.rank, self.world)
            self.events["plain"] = update_checks.weights_in_range(mine, 1, fed.MAX_UPDATE_WEIGHT)
            self.events["dp"] = update_checks.weights_in_range(mine, 1, 1)
            return _Stats()
        crypten.communicator.get().all_reduce(torch.ones(1, dtype=torch.long))
        if job == "both" or (job == "rank0" and self.rank == 0):
            self.events[f"{job}-raised"] = time.time()
            raise ValueError(f"job {job} fails on rank {self.rank}")
        return _Stats()

    def abort(self, job: Any, taken: Any, reason: str) -> None:
        self.events[f"{job}-abort"] = reason

    def session_lost(self, reason: str) -> None:
        pass


def run(rank: int, world: int, params: SessionParams, out: Path) -> dict[str, Any]:
    kind = CheckKind(rank, world)
    outcomes: dict[str, Any] = {}
    current: list[str] = [""]

    def done(command: cmd.RunJob, ok: bool, sound: bool) -> None:
        outcomes[current[0]] = {"ok": ok, "sound": sound, "at": time.time()}

    worker = MpcWorker(
        rank, lambda tag: params, ServerMetrics(), {"check": kind}, lambda *a: None, done
    )
    worker._join(cmd.JoinEpoch(0, "tag"))  # no thread: the jobs run here, in order
    jobs = ["range", "both", "rank0"] + (["after"] if rank == 1 else [])
    try:
        for seq, job in enumerate(jobs, 1):
            if job == "after":
                deadline = time.monotonic() + 200
                while not (out / "rank0-done").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
            current[0] = job
            outcomes[f"{job}-started"] = time.time()
            worker._execute(cmd.RunJob(seq, 0, "check", job))
            if job == "rank0" and rank == 0:
                (out / "rank0-done").touch()
    finally:
        worker._leave()
    return {"outcomes": outcomes, "events": kind.events}
