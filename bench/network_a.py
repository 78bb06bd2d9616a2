"""SecureML "Network A" through the ppml service vs raw CrypTen, in one run.

Network A is Linear(784, 128) -> ReLU -> Linear(128, 128) -> ReLU ->
Linear(128, 10). Both sides use 2 compute parties + CrypTen's TTP dealer on
loopback, one torch thread per process.

* raw: :mod:`raw_crypten` (processes launched by hand, no gRPC): batch-1
  forward latency, batch-1 back-to-back throughput, batch-64 throughput;
* service: a :class:`~ppml.servers.local.LocalCluster` driven through the SDK:
  single-image latency (p50/p95, sequential), throughput with 64 concurrent
  single-image clients, and MPC rounds/bytes per job from the servers' status.

Run: ``.venv/bin/python bench/network_a.py --json bench/results/network_a.json``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from raw_crypten import run_baseline

from ppml.client import Cluster
from ppml.servers.local import LocalCluster


def network_a() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(784, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    ).eval()


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


def _throughput(
    local: LocalCluster, model_id: str, images: torch.Tensor, clients: int, per_client: int
) -> dict[str, Any]:
    sdks = [Cluster.from_config(local.config_path) for _ in range(clients)]
    for sdk in sdks:  # warm each client's channels
        sdk.predict(model_id, images[0].unsqueeze(0))
    start = threading.Barrier(clients + 1)

    def run(sdk: Cluster, k: int) -> None:
        start.wait()
        for j in range(per_client):
            sdk.predict(model_id, images[(k + j) % len(images)].unsqueeze(0), timeout=120)

    threads = [threading.Thread(target=run, args=(s, k)) for k, s in enumerate(sdks)]
    for thread in threads:
        thread.start()
    before = _predict_cost(sdks[0])
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    after = _predict_cost(sdks[0])
    sizes = sdks[0].status()[0].batch_sizes
    for sdk in sdks:
        sdk.close()
    jobs = max(1, after[0] - before[0])
    return {
        "clients": clients,
        "images": clients * per_client,
        "seconds": elapsed,
        "throughput_ips": clients * per_client / elapsed,
        "jobs": after[0] - before[0],
        "mean_batch": clients * per_client / jobs,
        "rounds_per_job": (after[1] - before[1]) / jobs,
        "bytes_per_job": (after[2] - before[2]) / jobs,
        "mpc_seconds": after[3] - before[3],
        "batch_sizes": {str(k): v for k, v in sorted(sizes.items())},
    }


def run_service(
    n: int, clients: int, per_client: int, serving_overrides: dict[str, float] | None = None
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
            throughput = _throughput(local, model_id, images, clients, per_client)
    return {"max_abs_diff": float(diff), "batch1": latency, "concurrent": throughput}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="sequential single-image requests")
    parser.add_argument("--m", type=int, default=20, help="raw batch-64 forwards")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--per-client", type=int, default=4)
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
    service = run_service(args.n, args.clients, args.per_client, overrides)
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
