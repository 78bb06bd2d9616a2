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
    config: str,
    model_id: str,
    clients: int,
    phases: list[int],
    starts: list[Any],
    done: Any,
) -> None:
    """One load-generator process: ``clients`` SDK instances, one thread each.

    After one warm-up call per client it reports ``("ready", [], [], 0.0)``; then,
    for each phase, it waits for that phase's start event, has every client make
    ``phases[i]`` sequential single-image calls, and reports ``("done",
    latencies_ms, errors, cpu_s)``: each call's latency (``perf_counter`` around
    ``predict``), the calls that failed, and the CPU seconds this process spent
    in the phase by its own clock, all threads included.
    """
    torch.set_num_threads(1)
    images = torch.rand(256, 784, generator=torch.Generator().manual_seed(2))
    sdks = [Cluster.from_config(config) for _ in range(clients)]
    for sdk in sdks:  # warm each client's channels
        sdk.predict(model_id, images[0].unsqueeze(0))
    done.put(("ready", [], [], 0.0))

    def run(sdk: Cluster, k: int, n: int, latencies: list[float], errors: list[str]) -> None:
        try:
            for j in range(n):
                started = time.perf_counter()
                sdk.predict(model_id, images[(k + j) % len(images)].unsqueeze(0), timeout=120)
                latencies.append((time.perf_counter() - started) * 1000)
        except Exception as exc:  # reported to the driver, which fails the run
            errors.append(repr(exc))

    for n, start in zip(phases, starts, strict=True):
        start.wait()
        cpu_before = time.process_time()
        latencies: list[float] = []
        errors: list[str] = []
        threads = [
            threading.Thread(target=run, args=(s, k, n, latencies, errors))
            for k, s in enumerate(sdks)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done.put(("done", latencies, errors, time.process_time() - cpu_before))
    for sdk in sdks:
        sdk.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux ``/proc``), children excluded."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _quiet(pids: dict[str, int], timeout: float = 20.0) -> dict[str, float]:
    """The CPU seconds of ``pids`` once they idle: under 2 clock ticks in all over 0.25 s.

    Work a phase leaves behind (pools refilled after the last answer, the
    dealer making their material) then counts in the phase; on a machine that
    never quiets, the reading after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    while True:
        time.sleep(0.25)
        now = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        ticks = sum(now.values()) - sum(last.values())
        if ticks * os.sysconf("SC_CLK_TCK") < 2 or time.monotonic() > deadline:
            return now
        last = now


def _leader_counts(
    probe: Cluster, at_least: int = 0, timeout: float = 10.0
) -> tuple[tuple[int, int, int, float], dict[int, int]]:
    """The leader's predict cost and batch sizes once its accounting caught up.

    A job is counted just after its answers go out; this reads until two
    reads 0.1 s apart agree and ``at_least`` requests are counted in batches
    (on a machine too busy for that, the reading after ``timeout`` seconds).
    """
    deadline = time.monotonic() + timeout
    last = None
    while True:
        report = probe.status()[0]
        cost = next((c for c in report.mpc_cost if c.kind == "predict"), None)
        now = (
            (cost.jobs, cost.rounds, cost.bytes, cost.seconds) if cost else (0, 0, 0, 0.0),
            dict(report.batch_sizes),
        )
        counted = sum(k * v for k, v in now[1].items())
        if (now == last and counted >= at_least) or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(0.1)


def _collect(done: Any, processes: int, timeout: float) -> tuple[list[float], float]:
    """One report from each client process: all latencies (ms) and their CPU seconds."""
    latencies: list[float] = []
    cpu = 0.0
    for _ in range(processes):
        _, lat, errors, seconds = done.get(timeout=timeout)
        if errors:
            raise RuntimeError(f"{len(errors)} client(s) failed, first: {errors[0]}")
        latencies += lat
        cpu += seconds
    return latencies, cpu


def concurrent_load(
    local: LocalCluster,
    model_id: str,
    clients: int,
    per_client: int,
    processes: int,
    warmup_per_client: int = 0,
) -> dict[str, Any]:
    """``clients`` concurrent single-image clients spread over ``processes`` processes.

    One Python process cannot play 64 gRPC clients fast enough on two cores
    (each call costs it milliseconds of GIL-bound work), so the load comes
    from several processes, as it would from many machines. With
    ``warmup_per_client``, every client first makes that many untimed calls
    at the same concurrency (the servers' pools fill for the batch sizes this
    load makes); then each makes ``per_client`` timed ones. The figures cover
    the timed phase only: wall time from its start to the last client's end,
    each call's latency as its client saw it, the servers' and the dealer's
    CPU seconds (``/proc``) and the client processes' own (their CPU clocks).
    """
    processes = max(1, min(processes, clients))
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    phases = [n for n in (warmup_per_client, per_client) if n]
    ctx = multiprocessing.get_context("spawn")
    starts, done = [ctx.Event() for _ in phases], ctx.Queue()
    procs = [
        ctx.Process(
            target=_client_process,
            args=(str(local.config_path), model_id, share, phases, starts, done),
            daemon=True,
        )
        for share in shares
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        assert done.get(timeout=300)[0] == "ready"
    pids = {name: p.pid for name, p in local.processes.items()}
    with Cluster.from_config(local.config_path) as probe:
        if len(phases) > 1:
            starts[0].set()
            _collect(done, processes, 600)
        before, sizes_before = _leader_counts(probe)
        cpu_before = _quiet(pids)
        starts[-1].set()
        began = time.perf_counter()
        latencies, client_cpu = _collect(done, processes, 600)
        elapsed = time.perf_counter() - began
        images = clients * per_client
        counted_before = sum(k * v for k, v in sizes_before.items())
        after, sizes = _leader_counts(probe, counted_before + images)
        cpu_after = _quiet(pids)
        cpu = {name: cpu_after[name] - cpu_before[name] for name in pids}
    for proc in procs:
        proc.join(timeout=60)
    jobs = max(1, after[0] - before[0])
    cpu["clients"] = client_cpu
    parties = sum(v for k, v in cpu.items() if k.startswith("server-") or k == "dealer")
    return {
        "clients": clients,
        "processes": processes,
        "per_client": per_client,
        "images": images,
        "requests_in_batches": sum(k * v for k, v in sizes.items()) - counted_before,
        "seconds": elapsed,
        "throughput_ips": images / elapsed,
        "latency_ms": {
            "p50": float(np.percentile(latencies, 50)),
            "p99": float(np.percentile(latencies, 99)),
            "mean": float(np.mean(latencies)),
            "max": float(np.max(latencies)),
        },
        "jobs": after[0] - before[0],
        "mean_batch": images / jobs,
        "rounds_per_job": (after[1] - before[1]) / jobs,
        "bytes_per_job": (after[2] - before[2]) / jobs,
        "mpc_seconds": after[3] - before[3],
        "batch_sizes": {
            str(k): v - sizes_before.get(k, 0)
            for k, v in sorted(sizes.items())
            if v > sizes_before.get(k, 0)
        },
        "batch_sizes_all_time": {str(k): v for k, v in sorted(sizes.items())},
        # CPU seconds each process spent in the timed phase (the VM has os.cpu_count() cores)
        "cpu_seconds": cpu,
        "cpu_ms_per_image": {
            "clients": 1000 * client_cpu / images,
            "servers": 1000 * sum(v for k, v in cpu.items() if k.startswith("server-")) / images,
            "dealer": 1000 * cpu.get("dealer", 0.0) / images,
        },
        "cpu_ms_per_image_by_process": {k: 1000 * v / images for k, v in cpu.items()},
        "cpu_ms_per_image_servers_and_dealer": 1000 * parties / images,
        "cores": os.cpu_count(),
    }


def run_service(
    n: int,
    clients: int,
    per_client: int,
    processes: int = 4,
    serving_overrides: dict[str, float] | None = None,
    parties: int = 2,
    engine: str = "dealer",
) -> dict[str, Any]:
    """Network A through the SDK on a LocalCluster of ``parties`` servers and ``engine``."""
    model = network_a()
    images = torch.rand(256, 784, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        serving = {"max_batch_rows": 64, **(serving_overrides or {})}
        with LocalCluster(parties, Path(tmp) / "c", serving=serving, engine=engine) as local:
            with Cluster.from_config(local.config_path) as cluster:
                model_id = cluster.share_model(model, images[:1], name="network-a")
                for i in range(5):  # warm up
                    cluster.predict(model_id, images[i].unsqueeze(0))
                with torch.no_grad():
                    diff = (cluster.predict(model_id, images[:8]) - model(images[:8])).abs().max()
                latency = _latency(cluster, model_id, images, n)
            throughput = concurrent_load(local, model_id, clients, per_client, processes)
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
