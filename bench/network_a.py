"""SecureML "Network A" through the ppml service vs raw CrypTen, in one run.

Network A is Linear(784, 128) -> ReLU -> Linear(128, 128) -> ReLU ->
Linear(128, 10). Both sides use 2 compute parties + CrypTen's TTP dealer on
loopback, one torch thread per process.

* raw: :mod:`raw_crypten` (processes launched by hand, no gRPC): batch-1
  forward latency, batch-1 back-to-back throughput, batch-64 throughput;
* service: a :class:`~ppml.client.deploy.local.LocalCluster` driven through the SDK:
  single-image latency (p50/p95, sequential), throughput with 64 concurrent
  single-image clients, and MPC rounds/bytes per job from the servers' status.

Run: ``.venv/bin/python bench/network_a.py --json bench/results/network_a.json``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import network_a
from raw_crypten import run_baseline

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster


def _predict_cost(cluster: Cluster) -> tuple[int, int, int, float]:
    cost = next((c for c in cluster.status()[0].mpc_cost if c.kind == "predict"), None)
    return (cost.jobs, cost.rounds, cost.bytes, cost.seconds) if cost else (0, 0, 0, 0.0)


def _latency(cluster: Cluster, model_id: str, images: torch.Tensor, n: int) -> dict[str, Any]:
    before = _predict_cost(cluster)
    times = []
    for i in range(n):
        started = time.perf_counter()
        cluster.predict(model_id, images[i % len(images)].unsqueeze(0))
        times.append((time.perf_counter() - started) * 1000)
    after = _predict_cost(cluster)
    jobs = max(1, after[0] - before[0])
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "mean_ms": float(np.mean(times)),
        "rounds": (after[1] - before[1]) / jobs,
        "bytes": (after[2] - before[2]) / jobs,
        "mpc_ms_per_job": 1000 * (after[3] - before[3]) / jobs,
    }


def _client_process(
    config: str, model_id: str, clients: int, per_client: int, go: Any, done: Any
) -> None:
    """One load-generator process: ``clients`` SDK instances, one thread each."""
    torch.set_num_threads(1)
    images = torch.rand(256, 784, generator=torch.Generator().manual_seed(2))
    sdks = [Cluster.from_config(config) for _ in range(clients)]
    for sdk in sdks:  # warm each client's channels
        sdk.predict(model_id, images[0].unsqueeze(0))

    def run(sdk: Cluster, k: int) -> None:
        for j in range(per_client):
            sdk.predict(model_id, images[(k + j) % len(images)].unsqueeze(0), timeout=120)

    threads = [threading.Thread(target=run, args=(s, k)) for k, s in enumerate(sdks)]
    done.put("ready")
    go.wait()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.put("finished")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux ``/proc``), children excluded."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _throughput(
    local: LocalCluster, model_id: str, clients: int, per_client: int, processes: int
) -> dict[str, Any]:
    """``clients`` concurrent single-image clients spread over ``processes`` processes.

    One Python process cannot play 64 gRPC clients fast enough on two cores
    (each call costs it milliseconds of GIL-bound work), so the load comes
    from several processes, as it would from many machines.
    """
    ctx = multiprocessing.get_context("spawn")
    go, done = ctx.Event(), ctx.Queue()
    share = clients // processes
    procs = [
        ctx.Process(
            target=_client_process,
            args=(str(local.config_path), model_id, share, per_client, go, done),
        )
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        assert done.get(timeout=300) == "ready"
    pids = {name: p.pid for name, p in local.processes.items()}
    pids.update({f"client-{i}": p.pid for i, p in enumerate(procs) if p.pid is not None})
    with Cluster.from_config(local.config_path) as probe:
        before = _predict_cost(probe)
        cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        go.set()
        began = time.perf_counter()
        for _ in procs:
            assert done.get(timeout=600) == "finished"
        elapsed = time.perf_counter() - began
        cpu = {name: _cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        after = _predict_cost(probe)
        sizes = probe.status()[0].batch_sizes
    for proc in procs:
        proc.join()
    images = share * processes * per_client
    jobs = max(1, after[0] - before[0])
    return {
        "clients": share * processes,
        "processes": processes,
        "images": images,
        "seconds": elapsed,
        "throughput_ips": images / elapsed,
        "jobs": after[0] - before[0],
        "mean_batch": images / jobs,
        "rounds_per_job": (after[1] - before[1]) / jobs,
        "bytes_per_job": (after[2] - before[2]) / jobs,
        "mpc_seconds": after[3] - before[3],
        "batch_sizes_all_time": {str(k): v for k, v in sorted(sizes.items())},
        # CPU seconds each process spent in the timed phase (the VM has os.cpu_count() cores)
        "cpu_seconds": cpu,
        "cpu_ms_per_image": {
            "clients": 1000 * sum(v for k, v in cpu.items() if k.startswith("client-")) / images,
            "servers": 1000 * sum(v for k, v in cpu.items() if k.startswith("server-")) / images,
            "dealer": 1000 * sum(v for k, v in cpu.items() if k == "dealer") / images,
        },
        "cores": os.cpu_count(),
    }


def run_service(
    n: int,
    clients: int,
    per_client: int,
    processes: int = 4,
    serving_overrides: dict[str, float] | None = None,
) -> dict[str, Any]:
    model = network_a()
    images = torch.rand(256, 784, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        serving = {"max_batch_rows": 64, **(serving_overrides or {})}
        with LocalCluster(2, Path(tmp) / "c", serving=serving) as local:
            with Cluster.from_config(local.config_path) as cluster:
                model_id = cluster.share_model(model, images[:1], name="network-a")
                for i in range(5):  # warm up
                    cluster.predict(model_id, images[i].unsqueeze(0))
                with torch.no_grad():
                    diff = (cluster.predict(model_id, images[:8]) - model(images[:8])).abs().max()
                latency = _latency(cluster, model_id, images, n)
            throughput = _throughput(local, model_id, clients, per_client, processes)
            with Cluster.from_config(local.config_path) as cluster:
                pool = dataclasses.asdict(cluster.status()[0].fast_pool)
    return {
        "max_abs_diff": float(diff),
        "batch1": latency,
        "concurrent": throughput,
        "fast_pool_rank0": pool,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="sequential single-image requests")
    parser.add_argument("--m", type=int, default=20, help="raw batch-64 forwards")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--max-wait-ms", type=float, help="override [serving] max_wait_ms")
    parser.add_argument("--max-delay-ms", type=float, help="override [serving] max_delay_ms")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    overrides = {
        k: v
        for k, v in (("max_wait_ms", args.max_wait_ms), ("max_delay_ms", args.max_delay_ms))
        if v is not None
    }
    raw = run_baseline(n=args.n, m=args.m)
    service = run_service(args.n, args.clients, args.per_client, args.client_processes, overrides)
    ratio = {
        "latency_overhead_p50": service["batch1"]["p50_ms"] / raw["batch1"]["p50_ms"] - 1,
        "latency_overhead_p95": service["batch1"]["p95_ms"] / raw["batch1"]["p95_ms"] - 1,
        "throughput_vs_raw_batch1": service["concurrent"]["throughput_ips"]
        / raw["batch1"]["throughput_ips"],
        "throughput_vs_raw_batch64": service["concurrent"]["throughput_ips"]
        / raw["batch64"]["throughput_ips"],
    }
    result = {"raw": raw, "service": service, "ratios": ratio}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
