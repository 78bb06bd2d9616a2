"""Network A under load: throughput, latency and CPU per image at 1 to 256 concurrent clients.

Issue 23's load benchmark. One :class:`~ppml.client.deploy.local.LocalCluster`
(2 servers + dealer, TLS, the service's defaults unless ``--serving`` says
otherwise) serves SecureML Network A (784-128-128-10, ReLU,
:func:`models.network_a`), shared through the SDK and warmed up. Then, for
each level of ``--levels``:

* ``level`` concurrent single-image clients, one SDK instance and one thread
  each, spread over separate client processes (spawned, at most
  ``--clients-per-process`` clients each), so the load generator does not
  share a GIL with the service or starve on one process's;
* every client first makes ``--warmup-per-client`` untimed calls at that
  concurrency, then ``--per-client`` timed sequential ``predict`` calls of
  one image, more where the level would make fewer than ``--min-images``
  timed calls in all (:func:`network_a.concurrent_load`);
* reported: throughput (images over the timed phase's wall time), p50 and
  p99 of each call's latency as its client saw it (``perf_counter`` around
  ``predict``), the leader's mean batch (images per predict job, from its
  status counters), and the CPU seconds per image of every process: server-0,
  server-1 and the dealer from ``/proc/<pid>/stat``, the client processes by
  their own CPU clocks, reported apart. "Servers + dealer" is the figure issue
  23 compares with MP-SPDZ's three processes. The servers' and the dealer's
  CPU is read once they idle before and after the timed phase, so the pool
  refills the phase causes count in it; the mean batch is read once the
  leader has counted every timed request.

CPU seconds come from each process's own clock, so they do not depend on how
busy the machine is; throughput and latency do (the JSON records the load
average before the run and the core count).

In the same run, unless ``--skip-raw``: raw CrypTen's batch-64 throughput
(:func:`raw_crypten.run_baseline`), and with ``--mpspdz`` and
``--mpspdz-script`` MP-SPDZ dealer-ring from the peer's script
(:func:`fast_service.run_mpspdz`; ``../shared/peers/mpspdz/``). Its CPU per
image is compared when the script prints ``bs64_cpu_ms_per_image``.

Run: ``.venv/bin/python bench/load.py --json bench/results/load_run1.json``
(``--levels 1,8,64,256 --per-client 10`` by default; ``--serving lanes=2``
and the like pass ``[serving]`` settings to the cluster).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_service import run_mpspdz
from models import network_a
from network_a import concurrent_load
from raw_crypten import run_baseline

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster

DEFAULT_RPC_LIMIT = 256  # [limits] max_concurrent_rpcs when not raised (topology.py)


def run_levels(
    levels: list[int],
    per_client: int,
    min_images: int,
    clients_per_process: int,
    warmup_per_client: int,
    serving: dict[str, Any],
) -> dict[str, Any]:
    """One cluster, Network A shared and warmed up, then each load level in turn."""
    model = network_a()
    images = torch.rand(64, 784, generator=torch.Generator().manual_seed(1))
    # every client holds one call open at a time, plus the probe and the parties' own links
    limits = {"max_concurrent_rpcs": max(DEFAULT_RPC_LIMIT, max(levels) + 64)}
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(2, Path(tmp) / "c", serving=serving, limits=limits) as local,
    ):
        with Cluster.from_config(local.config_path) as cluster:
            model_id = cluster.share_model(model, images[:1], name="network-a")
            for i in range(5):
                cluster.predict(model_id, images[i].unsqueeze(0))
            with torch.no_grad():
                diff = (cluster.predict(model_id, images[:8]) - model(images[:8])).abs().max()
        rows = {
            str(level): concurrent_load(
                local,
                model_id,
                level,
                max(per_client, math.ceil(min_images / level)),
                max(1, math.ceil(level / clients_per_process)),
                warmup_per_client,
            )
            for level in levels
        }
    return {"max_abs_diff": float(diff), "serving": serving, "limits": limits, "levels": rows}


def _mpspdz_cpu_ratio(result: dict[str, Any]) -> float | None:
    """ppml's servers + dealer CPU per image at 64 clients over MP-SPDZ's at batch 64."""
    mp, row = result.get("mpspdz_dealer_ring"), result["service"]["levels"].get("64")
    if not mp or not row or "bs64_cpu_ms_per_image" not in mp:
        return None
    return float(row["cpu_ms_per_image_servers_and_dealer"]) / float(mp["bs64_cpu_ms_per_image"])


def summary(result: dict[str, Any]) -> str:
    """The markdown table of the levels, then the baselines."""
    lines = [
        "| clients (processes) | img/s | p50 ms | p99 ms | mean batch "
        "| CPU ms/img servers+dealer (s0 / s1 / dealer) | CPU ms/img clients |",
        "|" + " --- |" * 7,
    ]
    for level, row in result["service"]["levels"].items():
        by = row["cpu_ms_per_image_by_process"]
        lines.append(
            f"| {level} ({row['processes']}) | {row['throughput_ips']:.0f} "
            f"| {row['latency_ms']['p50']:.1f} | {row['latency_ms']['p99']:.1f} "
            f"| {row['mean_batch']:.1f} | {row['cpu_ms_per_image_servers_and_dealer']:.2f} "
            f"({by['server-0']:.2f} / {by['server-1']:.2f} / {by['dealer']:.2f}) "
            f"| {by['clients']:.2f} |"
        )
    raw, mp = result.get("raw_crypten"), result.get("mpspdz_dealer_ring")
    if raw:
        lines.append(f"\nraw CrypTen, batch 64: {raw['batch64']['throughput_ips']:.0f} img/s")
    if mp:
        lines.append(f"MP-SPDZ dealer-ring, batch 64: {mp['bs64_throughput_ips']:.0f} img/s")
    ratio = result.get("cpu_vs_mpspdz_64")
    if ratio is not None:
        lines.append(f"servers + dealer CPU per image at 64 clients: {ratio:.2f}x MP-SPDZ's")
    lines.append(f"{result['cores']} cores, load average before {result['loadavg_before'][0]:.2f}")
    return "\n".join(lines)


def _serving(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` settings for ``[serving]``, values as TOML literals (numbers, booleans)."""
    return {key.strip(): json.loads(value) for key, _, value in (p.partition("=") for p in pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="1,8,64,256", help="concurrent clients, comma list")
    parser.add_argument("--per-client", type=int, default=10, help="timed calls per client")
    parser.add_argument("--min-images", type=int, default=200, help="timed calls per level")
    parser.add_argument("--warmup-per-client", type=int, default=2, help="untimed calls first")
    parser.add_argument("--clients-per-process", type=int, default=16)
    parser.add_argument("--serving", action="append", default=[], help="[serving] key=value")
    parser.add_argument("--m", type=int, default=20, help="raw CrypTen batch-64 forwards")
    parser.add_argument("--skip-raw", action="store_true", help="no raw CrypTen baseline")
    parser.add_argument("--mpspdz", type=Path, help="MP-SPDZ checkout with dealer-ring built")
    parser.add_argument("--mpspdz-script", type=Path, help="the peer's run_network_a.sh")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # as the servers and the raw baselines run

    result: dict[str, Any] = {"loadavg_before": os.getloadavg(), "cores": os.cpu_count()}
    if not args.skip_raw:
        result["raw_crypten"] = run_baseline(n=20, m=args.m)
    if args.mpspdz and args.mpspdz_script:
        result["mpspdz_dealer_ring"] = run_mpspdz(args.mpspdz, args.mpspdz_script, 20, 5)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    result["service"] = run_levels(
        levels,
        args.per_client,
        args.min_images,
        args.clients_per_process,
        args.warmup_per_client,
        _serving(args.serving),
    )
    result["loadavg_after"] = os.getloadavg()
    result["cpu_vs_mpspdz_64"] = _mpspdz_cpu_ratio(result)
    print(summary(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
