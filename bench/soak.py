"""Load/soak: many concurrent clients x many predictions of a small MLP; errors, latency, RSS.

64 clients x 1,000 single-row predictions (configurable) of a 64-32-10 MLP
against a :class:`~ppml.client.deploy.local.LocalCluster` (2 servers +
dealer, TLS). The clients are spread over several processes, one thread and
one SDK instance each, as ``bench/network_a.py`` does (one Python process
cannot drive 64 gRPC clients on two cores). Reported: errors by type (must
be 0), throughput, latency p50/p95/p99, and every server's and the dealer's
resident memory (VmRSS from ``/proc/<pid>/status``) sampled every few
seconds: first, last, max and the least-squares slope over the second half
of the run.

Flat: a process counts as flat when its second-half slope is at most
``--flat-mb-per-min`` (default 1 MB/min, i.e. under 60 MB an hour) *and* its
last sample is within ``--flat-growth`` (default 5 %) of the highest sample
of the first half. Warm-up (allocator arenas, gRPC buffers, CrypTen caches)
happens in the first half, so a leak shows as a second-half trend.

Run: ``.venv/bin/python bench/soak.py --json bench/results/soak_run1.json``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.client.errors import PpmlClientError


def small_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    ).eval()


def rss_mb(pid: int) -> float | None:
    """VmRSS of a live process in MB (None once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _client_process(
    config: str,
    model_id: str,
    clients: int,
    per_client: int,
    deadline: float,
    go: Any,
    done: Any,
) -> None:
    """One load-generator process: ``clients`` SDK instances, one thread each."""
    torch.set_num_threads(1)
    rows = torch.rand(256, 64, generator=torch.Generator().manual_seed(2)) - 0.5
    sdks = [Cluster.from_config(config) for _ in range(clients)]
    for sdk in sdks:  # warm each client's channels
        sdk.predict(model_id, rows[:1])
    latencies: list[list[float]] = [[] for _ in sdks]
    errors: list[Counter[str]] = [Counter() for _ in sdks]
    examples: dict[str, str] = {}

    def run(sdk: Cluster, k: int) -> None:
        for j in range(per_client):
            x = rows[(k * 31 + j) % len(rows)].unsqueeze(0)
            began = time.perf_counter()
            try:
                sdk.predict(model_id, x, timeout=deadline)
            except PpmlClientError as exc:
                errors[k][type(exc).__name__] += 1
                examples.setdefault(type(exc).__name__, str(exc)[:300])
                continue
            except Exception as exc:  # counted: an untyped error is a finding of its own
                errors[k][f"untyped:{type(exc).__name__}"] += 1
                examples.setdefault(type(exc).__name__, str(exc)[:300])
                continue
            latencies[k].append((time.perf_counter() - began) * 1000)

    threads = [threading.Thread(target=run, args=(s, k)) for k, s in enumerate(sdks)]
    done.put(("ready", None))
    go.wait()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total: Counter[str] = Counter()
    for c in errors:
        total.update(c)
    flat = np.array([v for lat in latencies for v in lat], dtype=np.float64)
    done.put(("finished", (flat.tobytes(), dict(total), examples)))
    for sdk in sdks:
        sdk.close()


def slope_mb_per_min(times_s: list[float], values: list[float]) -> float:
    if len(times_s) < 2:
        return 0.0
    t = np.asarray(times_s) / 60.0
    return float(np.polyfit(t, np.asarray(values), 1)[0])


def rss_report(
    samples: list[tuple[float, dict[str, float]]], flat_slope: float, flat_growth: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not samples:
        return out
    end = samples[-1][0]
    names = sorted({name for _, values in samples for name in values})
    for name in names:
        series = [(t, v[name]) for t, v in samples if name in v]
        times = [t for t, _ in series]
        values = [v for _, v in series]
        first_half = [v for t, v in series if t < end / 2] or values[:1]
        second = [(t, v) for t, v in series if t >= end / 2]
        slope = slope_mb_per_min([t for t, _ in second], [v for _, v in second])
        growth = values[-1] / max(first_half) - 1
        out[name] = {
            "first_mb": round(values[0], 1),
            "last_mb": round(values[-1], 1),
            "max_mb": round(max(values), 1),
            "second_half_slope_mb_per_min": round(slope, 3),
            "last_vs_first_half_max": round(growth, 4),
            "flat": slope <= flat_slope and growth <= flat_growth,
            "samples": len(values),
            "series": [[round(t, 1), round(v, 1)] for t, v in zip(times, values, strict=True)],
        }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = small_mlp()
    check = torch.rand(8, 64, generator=torch.Generator().manual_seed(3)) - 0.5
    with tempfile.TemporaryDirectory(prefix="ppml-soak-") as tmp:
        serving = {"max_batch_rows": 64}
        if args.id_window:
            serving["request_id_window_s"] = args.id_window
        with LocalCluster(2, Path(tmp) / "c", serving=serving, startup_timeout=300) as local:
            with Cluster.from_config(local.config_path) as cluster:
                model_id = cluster.share_model(model, check[:1], name="soak-mlp")
                with torch.no_grad():
                    diff = float((cluster.predict(model_id, check) - model(check)).abs().max())
            pids = {name: proc.pid for name, proc in local.processes.items()}
            ctx = multiprocessing.get_context("spawn")
            go, done = ctx.Event(), ctx.Queue()
            per_process = args.clients // args.client_processes
            procs = [
                ctx.Process(
                    target=_client_process,
                    args=(
                        str(local.config_path),
                        model_id,
                        per_process,
                        args.per_client,
                        args.deadline,
                        go,
                        done,
                    ),
                )
                for _ in range(args.client_processes)
            ]
            for proc in procs:
                proc.start()
            for _ in procs:
                kind, _payload = done.get(timeout=600)
                assert kind == "ready", kind
            samples: list[tuple[float, dict[str, float]]] = []
            results: list[tuple[bytes, dict[str, int], dict[str, str]]] = []
            go.set()
            began = time.perf_counter()
            next_sample = began
            while len(results) < len(procs):
                now = time.perf_counter()
                if now >= next_sample:
                    values = {n: r for n, p in pids.items() if (r := rss_mb(p)) is not None}
                    samples.append((now - began, values))
                    next_sample += args.rss_every
                try:
                    kind, payload = done.get(timeout=max(0.05, next_sample - time.perf_counter()))
                except queue.Empty:
                    continue
                assert kind == "finished", kind
                results.append(payload)
            elapsed = time.perf_counter() - began
            values = {n: r for n, p in pids.items() if (r := rss_mb(p)) is not None}
            samples.append((elapsed, values))
            for proc in procs:
                proc.join()
            exited = {n: p.returncode for n, p in local.processes.items() if p.poll() is not None}
            with Cluster.from_config(local.config_path) as cluster:
                with torch.no_grad():
                    diff_after = float(
                        (cluster.predict(model_id, check) - model(check)).abs().max()
                    )
                report = cluster.status()
    latencies = np.concatenate([np.frombuffer(r[0], dtype=np.float64) for r in results])
    errors: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for _, errs, ex in results:
        errors.update(errs)
        examples.update(ex)
    requests = per_process * args.client_processes * args.per_client
    return {
        "clients": per_process * args.client_processes,
        "client_processes": args.client_processes,
        "per_client": args.per_client,
        "requests": requests,
        "succeeded": len(latencies),
        "errors": sum(errors.values()),
        "errors_by_type": dict(errors),
        "error_examples": examples,
        "seconds": elapsed,
        "throughput_rps": requests / elapsed,
        "latency_ms": {
            "p50": float(np.percentile(latencies, 50)),
            "p95": float(np.percentile(latencies, 95)),
            "p99": float(np.percentile(latencies, 99)),
            "max": float(np.max(latencies)),
        },
        "max_abs_diff_before": diff,
        "max_abs_diff_after": diff_after,
        "server_processes_exited": exited,
        "batch_sizes_all_time": {
            r.name: {str(k): v for k, v in sorted(r.batch_sizes.items())} for r in report
        },
        "flat_criterion": (
            f"second-half slope <= {args.flat_mb_per_min} MB/min and last sample "
            f"<= (1 + {args.flat_growth}) x first-half max"
        ),
        "rss": rss_report(samples, args.flat_mb_per_min, args.flat_growth),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--per-client", type=int, default=1000)
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--deadline", type=float, default=120.0, help="each prediction's")
    parser.add_argument("--rss-every", type=float, default=3.0, help="seconds between samples")
    parser.add_argument("--flat-mb-per-min", type=float, default=1.0)
    parser.add_argument("--flat-growth", type=float, default=0.05)
    parser.add_argument(
        "--id-window",
        type=float,
        default=None,
        help="the servers' request-id window (s); RSS levels off after it",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = run(args)
    brief = {k: v for k, v in result.items() if k != "rss"}
    brief["rss"] = {
        name: {k: v for k, v in r.items() if k != "series"} for name, r in result["rss"].items()
    }
    print(json.dumps(brief, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
