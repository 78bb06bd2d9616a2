"""Fault injection: kill -9 a random process of a live cluster, restart it, check what survived.

Against a :class:`~ppml.client.deploy.local.LocalCluster` (2 servers + dealer,
TLS), with a small MLP (64-32-10) and a small data set registered first, each
iteration

1. snapshots every server's listings (models, data sets, job records);
2. starts traffic: a few concurrent prediction clients, each with a deadline,
   and every few iterations a short training job;
3. after a random delay kills server-0, server-1 or the dealer with SIGKILL,
   restarts it at once and measures the recovery time: from the kill until
   every server reports SERVING and a prediction succeeds (and matches
   plaintext);
4. stops the traffic, lets the training job end, snapshots again.

Counted: clients still waiting past their deadline + a grace ("hung", must be
0), calls that failed with a typed SDK error vs other exceptions vs
succeeded, records present before an iteration and missing after it on any
server ("lost", must be 0; an acknowledged training job must be on every
server too), predictions after recovery that differ from plaintext, processes
that were not killed but exited anyway, and recovery min/p50/p95/max.

Run: ``.venv/bin/python bench/faults.py --json bench/results/faults_run1.json``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.client.errors import PpmlClientError
from ppml.v1 import datasets_pb2, registry_pb2, training_pb2

VICTIMS = ("server-0", "server-1", "dealer")
TOLERANCE = 1e-2  # fixed point with 16 fractional bits, through two layers


def small_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    ).eval()


def digits_rows(n: int) -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    x = (data.data[:n] / 16.0 - 0.5).astype(np.float32)
    return x, data.target[:n].astype(np.int64)


Listing = dict[str, dict[str, set[str]]]  # server -> kind -> ids


def listings(cluster: Cluster) -> Listing:
    """Every server's own listing (not the SDK's merged view): models, data sets, jobs."""
    out: Listing = {}
    meta = cluster._metadata
    for server in cluster._servers:
        models = server.registry.ListModels(
            registry_pb2.ListModelsRequest(), timeout=20, metadata=meta
        )
        datasets = server.datasets.ListDatasets(
            datasets_pb2.ListDatasetsRequest(), timeout=20, metadata=meta
        )
        jobs = server.training.ListJobs(training_pb2.ListJobsRequest(), timeout=20, metadata=meta)
        out[server.name] = {
            "models": {m.model_id for m in models.models},
            "datasets": {d.dataset_id for d in datasets.datasets},
            "jobs": {j.job_id for j in jobs.jobs},
        }
    return out


def job_states(cluster: Cluster, job_id: str) -> list[int]:
    request = training_pb2.GetJobRequest(job_id=job_id)
    return [
        s.training.GetJob(request, timeout=10, metadata=cluster._metadata).state
        for s in cluster._servers
    ]


@dataclass
class CallLog:
    """What every traffic call did; shared by the client threads of one iteration."""

    deadline: float
    grace: float
    outcomes: Counter[str] = field(default_factory=Counter)
    hung: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, outcome: str, elapsed: float, where: str) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            if elapsed > self.deadline + self.grace:
                self.hung.append({"where": where, "outcome": outcome, "elapsed_s": elapsed})


class Traffic:
    """``clients`` prediction loops, each its own SDK instance, until stopped."""

    def __init__(
        self, sdks: list[Cluster], model_id: str, x: torch.Tensor, log: CallLog, rng: random.Random
    ) -> None:
        self._stop = threading.Event()
        self._log = log
        self._threads = [
            threading.Thread(
                target=self._run, args=(sdk, model_id, x, rng.randrange(1 << 30)), daemon=True
            )
            for sdk in sdks
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _run(self, sdk: Cluster, model_id: str, x: torch.Tensor, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            rows = rng.randint(1, 4)
            start = rng.randrange(len(x) - rows)
            began = time.monotonic()
            try:
                sdk.predict(model_id, x[start : start + rows], timeout=self._log.deadline)
                outcome = "ok"
            except PpmlClientError as exc:
                outcome = type(exc).__name__
            except Exception as exc:  # anything untyped is itself a finding
                outcome = f"untyped:{type(exc).__name__}"
            self._log.record(outcome, time.monotonic() - began, "predict")
            # back off a little after a failure: a dead server answers instantly
            time.sleep(0.02 if outcome == "ok" else 0.2)

    def stop(self) -> int:
        """Stop and join; returns how many threads are still stuck in a call past deadline+grace."""
        self._stop.set()
        limit = time.monotonic() + self._log.deadline + self._log.grace
        for thread in self._threads:
            thread.join(max(0.0, limit - time.monotonic()))
        return sum(t.is_alive() for t in self._threads)


def wait_recovered(
    local: LocalCluster, probe: Cluster, model_id: str, x: torch.Tensor, timeout: float
) -> tuple[torch.Tensor, int]:
    """Until every server is SERVING and one prediction succeeds; returns it and failed tries."""
    deadline = time.monotonic() + timeout
    local.wait_serving(timeout)
    tries = 0
    while True:
        try:
            return probe.predict(model_id, x, timeout=10), tries
        except PpmlClientError:
            tries += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "min": float(np.min(values)),
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "max": float(np.max(values)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    model = small_mlp()
    x_rows, y_rows = digits_rows(args.rows)
    x = torch.from_numpy(x_rows)
    check_x = x[:4]
    with torch.no_grad():
        expected = model(check_x)
    iterations: list[dict[str, Any]] = []
    totals: Counter[str] = Counter()
    hung_total = 0
    lost_total = 0
    mismatches = 0
    collateral: list[dict[str, Any]] = []
    jobs_started = 0
    job_endings: Counter[str] = Counter()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ppml-faults-") as tmp:
        serving = {"default_timeout_s": args.deadline}
        local = LocalCluster(2, Path(tmp) / "c", serving=serving, startup_timeout=300)
        with local:
            probe = Cluster.from_config(local.config_path, timeout=30)
            sdks = [Cluster.from_config(local.config_path) for _ in range(args.clients)]
            model_id = probe.share_model(model, check_x[:1], name="faults-mlp")
            dataset_id = probe.share_dataset(x_rows, y_rows, name="faults-digits")
            probe.predict(model_id, check_x)
            for i in range(args.iterations):
                before = listings(probe)
                log = CallLog(args.deadline, args.grace)
                traffic = Traffic(sdks, model_id, x, log, rng)
                traffic.start()
                job_id = None
                if args.train_every and i % args.train_every == 0:
                    try:
                        job = probe.train(
                            small_mlp(), [dataset_id], epochs=1, batch_size=32, lr=0.05
                        )
                        job_id = job.job_id
                        jobs_started += 1
                        log.record("train_started", 0.0, "train")
                    except PpmlClientError as exc:
                        log.record(f"train:{type(exc).__name__}", 0.0, "train")
                delay = rng.uniform(args.min_delay, args.max_delay)
                time.sleep(delay)
                victim = rng.choice(VICTIMS)
                killed_at = time.monotonic()
                local.kill(victim)
                if victim == "dealer":
                    local.start_dealer()
                else:
                    local.start_server(int(victim.rsplit("-", 1)[1]))
                recovery_error = ""
                try:
                    got, tries = wait_recovered(
                        local, probe, model_id, check_x, args.recovery_timeout
                    )
                    recovery = time.monotonic() - killed_at
                    diff = float((got - expected).abs().max())
                except Exception as exc:  # recorded; the run cannot go on without a cluster
                    recovery, diff, tries = float("nan"), float("nan"), -1
                    recovery_error = f"{type(exc).__name__}: {exc}"
                stuck = traffic.stop()
                if diff > TOLERANCE or diff != diff:
                    mismatches += 1
                ending = ""
                if job_id is not None:  # let it end: failed by the kill, or finished
                    limit = time.monotonic() + args.job_timeout
                    terminal = {
                        training_pb2.JOB_STATE_SUCCEEDED,
                        training_pb2.JOB_STATE_FAILED,
                        training_pb2.JOB_STATE_CANCELLED,
                    }
                    states: list[int] = []
                    while time.monotonic() < limit:
                        try:
                            states = job_states(probe, job_id)
                        except Exception:
                            states = []
                        if states and all(s in terminal for s in states):
                            break
                        time.sleep(0.5)
                    ending = "/".join(training_pb2.JobState.Name(s) for s in states) or "unknown"
                    job_endings[ending] += 1
                after = listings(probe)
                lost: dict[str, dict[str, list[str]]] = {}
                for server, kinds in before.items():
                    for kind, ids in kinds.items():
                        missing = sorted(ids - after.get(server, {}).get(kind, set()))
                        if missing:
                            lost.setdefault(server, {})[kind] = missing
                if job_id is not None:  # acknowledged by every server: must be on every server
                    for server, kinds in after.items():
                        if job_id not in kinds["jobs"]:
                            lost.setdefault(server, {}).setdefault("jobs", []).append(job_id)
                n_lost = sum(len(v) for kinds in lost.values() for v in kinds.values())
                exited = {
                    name: proc.returncode
                    for name, proc in local.processes.items()
                    if proc.poll() is not None
                }
                if exited:
                    collateral.append({"iteration": i, "victim": victim, "exited": exited})
                hung = len(log.hung) + stuck
                hung_total += hung
                lost_total += n_lost
                totals.update(log.outcomes)
                record = {
                    "iteration": i,
                    "victim": victim,
                    "delay_s": round(delay, 3),
                    "recovery_s": recovery,
                    "recovery_failed_probes": tries,
                    "max_abs_diff": diff,
                    "calls": dict(log.outcomes),
                    "hung": log.hung + [{"stuck_threads": stuck}] * bool(stuck),
                    "lost": lost,
                    "job": ending,
                }
                if recovery_error:
                    record["recovery_error"] = recovery_error
                iterations.append(record)
                print(json.dumps(record), file=sys.stderr, flush=True)
                if recovery_error:
                    break
            for sdk in sdks:
                sdk.close()
            probe.close()
    recoveries = [r["recovery_s"] for r in iterations if r["recovery_s"] == r["recovery_s"]]
    predict_calls = {k: v for k, v in totals.items() if not k.startswith("train")}
    return {
        "iterations": len(iterations),
        "seed": args.seed,
        "clients": args.clients,
        "deadline_s": args.deadline,
        "grace_s": args.grace,
        "hung_clients": hung_total,
        "lost_records": lost_total,
        "plaintext_mismatches": mismatches,
        "collateral_exits": collateral,
        "recovery_s": summary(recoveries),
        "victims": dict(Counter(r["victim"] for r in iterations)),
        "predict_calls": {
            "total": sum(predict_calls.values()),
            "ok": predict_calls.get("ok", 0),
            "typed_errors": sum(
                v for k, v in predict_calls.items() if k != "ok" and not k.startswith("untyped")
            ),
            "untyped_errors": sum(v for k, v in predict_calls.items() if k.startswith("untyped")),
            "by_outcome": dict(sorted(predict_calls.items())),
        },
        "training_jobs": {
            "started": jobs_started,
            "refused": {k: v for k, v in totals.items() if k.startswith("train:")},
            "endings": dict(job_endings),
        },
        "wall_s": time.monotonic() - began,
        "per_iteration": iterations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--clients", type=int, default=3, help="concurrent prediction clients")
    parser.add_argument("--deadline", type=float, default=5.0, help="each prediction's deadline")
    parser.add_argument("--grace", type=float, default=5.0, help="past deadline+grace = hung")
    parser.add_argument("--train-every", type=int, default=5, help="0: no training jobs")
    parser.add_argument("--rows", type=int, default=256, help="rows of the digits data set")
    parser.add_argument("--min-delay", type=float, default=0.0)
    parser.add_argument("--max-delay", type=float, default=3.0)
    parser.add_argument("--recovery-timeout", type=float, default=180.0)
    parser.add_argument("--job-timeout", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = run(args)
    brief = {k: v for k, v in result.items() if k != "per_iteration"}
    print(json.dumps(brief, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
