"""A ResNet-20-shaped CIFAR network served by ppml, beside raw CrypTen, in one run.

Back to back on this machine:

* raw CrypTen (:mod:`raw_crypten_resnet`): 2 parties + TTP over gloo, no
  service, CrypTen's own ONNX import of the same model;
* the fast engine alone (:mod:`fast_resnet`: two party processes, the dealer
  in the parent, no TLS or service): online latency and throughput, rounds,
  bytes and the dealer's material per image;
* the service (:class:`~ppml.client.deploy.local.LocalCluster`, TLS, SDK) with
  2 servers + dealer and with 3 servers + dealer: the model is shared through
  the SDK (``share_model``: exported as a graph, BatchNorm folded), then
  sequential single-image requests (p50, the servers' own rounds and bytes
  per job), with the 2 servers' fast pool warm too (each request sent to an
  idle cluster, alternating with one sent while a refill may still run:
  :func:`_pool_warm_latency`), and batch-``B`` requests (throughput).

The model is ``training/resnet.py``'s :func:`resnet20` with public random
weights (seed 0), on 32x32x3 inputs. Images are uniform in [0, 1).

Run: ``.venv/bin/python bench/resnet_serving.py --json bench/results/resnet_serving_run1.json``
(``--n`` single-image requests, ``--m`` batch requests of ``--batch`` images).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_resnet import _summary as engine_summary
from fast_resnet import run as run_engine_alone
from network_a import _latency
from raw_crypten_resnet import IMAGE, run_resnet_baseline
from raw_crypten_resnet import summary as raw_summary

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.training.resnet import resnet20


def _model() -> torch.nn.Module:
    torch.manual_seed(0)  # public: benchmark weights, not secrets
    return resnet20().eval()


def run_service(parties: int, n: int, m: int, batch: int) -> dict[str, Any]:
    """Share ResNet-20 through the SDK on a local cluster; time single and batched requests."""
    model = _model()
    images = torch.rand(max(n, batch), *IMAGE, generator=torch.Generator().manual_seed(1))
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(parties, Path(tmp) / "c") as local,
        Cluster.from_config(local.config_path, timeout=3600.0) as cluster,
    ):
        started = time.perf_counter()
        model_id = cluster.share_model(model, images[:1], name="resnet20")
        share_s = time.perf_counter() - started
        warm = cluster.predict(model_id, images[:1])
        with torch.no_grad():
            error = float((warm - model(images[:1])).abs().max())
        single = _latency(cluster, model_id, images, n)
        warm_pool = (
            _pool_warm_latency(local, cluster, model_id, images, n) if parties == 2 else None
        )
        started = time.perf_counter()
        for _ in range(m):
            cluster.predict(model_id, images[:batch])
        wall = time.perf_counter() - started
    return {
        "parties": parties,
        "share_model_s": share_s,
        "max_abs_error_vs_plaintext": error,
        "single": single,
        "single_pool_warm": warm_pool,
        "batch": {"size": batch, "p50_ms": 1e3 * wall / m, "throughput_ips": batch * m / wall},
    }


def _pool_warm_latency(
    local: LocalCluster, cluster: Cluster, model_id: str, images: torch.Tensor, n: int
) -> dict[str, Any]:
    """Single-image requests each sent to an idle cluster whose servers pooled material.

    A service with idle time between requests works like this: the fast
    engine's pool refills while no job runs, so a request finds its dealer
    material made and transferred already. "Idle" is every server reporting
    pooled material and no running job (``running_job``), and then no process
    of the cluster (servers and dealer) using CPU over :data:`QUIET_S`
    (:func:`_quiet`): no refill job between two status polls, and the dealer
    not making material ahead for its stock, which it does in a thread of its
    own after a refill took its stocked bundles (run 6 and earlier counted a
    cluster idle on the status alone, so a request could share the cores with
    the dealer's stock maker). ``busy_p50_ms``: requests sent as soon as the
    pools hold one image, while a refill may still run.
    """
    times, waits, busy = [], [], []
    for i in range(2 * n):
        idle = i % 2 == 0
        started = time.perf_counter()
        while not _ready(cluster, idle) or (idle and not _quiet(local)):
            if time.perf_counter() - started > 600:
                raise RuntimeError("the fast pools did not refill within 600 s")
            time.sleep(0.2)
        waits.append(time.perf_counter() - started)
        started = time.perf_counter()
        cluster.predict(model_id, images[i // 2 % len(images)].unsqueeze(0))
        (times if idle else busy).append(1e3 * (time.perf_counter() - started))
    return {
        "p50_ms": statistics.median(times),
        "busy_p50_ms": statistics.median(busy),
        "refill_wait_s": statistics.median(waits),
    }


def _ready(cluster: Cluster, idle: bool) -> bool:
    """Every server holds pooled material (and, if ``idle``, runs no job)."""
    reports = cluster.status()
    return all(r.fast_pool.images >= 1 and not (idle and r.running_job) for r in reports)


QUIET_S = 0.5  # a cluster is quiet when its processes used at most QUIET_CPU_S over this long
QUIET_CPU_S = 0.02


def _quiet(local: LocalCluster) -> bool:
    """The cluster's processes (servers and dealer) used almost no CPU over :data:`QUIET_S`."""
    before = _cpu_seconds(local)
    time.sleep(QUIET_S)
    return _cpu_seconds(local) - before <= QUIET_CPU_S


def _cpu_seconds(local: LocalCluster) -> float:
    """User and system CPU time of the cluster's processes so far (Linux ``/proc``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for process in local.processes.values():
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def summary(result: dict[str, Any]) -> str:
    lines = [raw_summary(result["raw_crypten"])]
    if "engine_alone" in result:
        lines.append(engine_summary(result["engine_alone"]))
    raw1 = result["raw_crypten"]["batch1"]
    raw_ips = result["raw_crypten"]["batch"]["throughput_ips"]
    for key in ("two_servers", "three_servers"):
        r = result.get(key)
        if r is None:
            continue
        s, b = r["single"], r["batch"]
        lines.append(
            f"ppml, {r['parties']} servers + dealer: single p50 {s['p50_ms']:.0f} ms "
            f"({raw1['p50_ms'] / s['p50_ms']:.2f}x faster than raw), {s['rounds']:.0f} rounds "
            f"(raw {raw1['rounds']}), {s['bytes'] / 1e6:.1f} MB/job; batch {b['size']} "
            f"{b['throughput_ips']:.2f} img/s ({b['throughput_ips'] / raw_ips:.2f}x raw); "
            f"max |error| {r['max_abs_error_vs_plaintext']:.2e}"
        )
        if r.get("single_pool_warm"):
            w = r["single_pool_warm"]
            lines.append(
                f"  pool warm (material made in idle time): single p50 {w['p50_ms']:.0f} ms "
                f"({raw1['p50_ms'] / w['p50_ms']:.2f}x faster than raw); refill took "
                f"{w['refill_wait_s']:.1f} s; sent while a refill still runs: "
                f"{w['busy_p50_ms']:.0f} ms"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=3, help="sequential single-image requests")
    parser.add_argument("--m", type=int, default=1, help="batch requests")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--parties", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--skip-engine", action="store_true", help="no fast-engine-alone run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # as the servers and the raw baseline run
    torch.set_num_threads(1)
    result: dict[str, Any] = {"loadavg_before": os.getloadavg()}
    result["raw_crypten"] = run_resnet_baseline(args.n, args.m, args.batch)
    if not args.skip_engine:
        result["engine_alone"] = run_engine_alone(args.n, args.m)
    names = {2: "two_servers", 3: "three_servers"}
    for parties in args.parties:
        result[names[parties]] = run_service(parties, args.n, args.m, args.batch)
    result["loadavg_after"] = os.getloadavg()
    print(summary(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
