"""Network A through the service: the fast engine vs the CrypTen path vs raw CrypTen, one run.

Three measurements, in this order, on this machine:

* raw CrypTen (:mod:`raw_crypten`): 2 parties + TTP, gloo on loopback, no
  service: batch-1 latency and batch-64 throughput;
* the service with ``fast_inference = true`` (the default: two servers,
  a model the fast engine runs), a :class:`~ppml.proto.deploy.local.LocalCluster`
  with TLS, driven through the SDK: sequential single-image p50/p95,
  MPC rounds and bytes per single-image job (the servers' own counters,
  CrypTen's convention: an exchange is one round, bytes sent + received),
  and 64 concurrent single-image clients;
* the same service with ``fast_inference = false`` (the CrypTen path);
* optionally MP-SPDZ's dealer-ring protocol on the same model (``--mpspdz``:
  a checkout with ``dealer-ring-party.x`` built, ``--mpspdz-script``: the
  peer's ``run_network_a.sh``, which prints one JSON line); nothing of
  MP-SPDZ is part of this repository.

Run: ``.venv/bin/python bench/fast_service.py --json bench/results/fast_service_run1.json``
(``--n``, ``--clients``, ``--per-client``, ``--m`` trade time for precision).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from network_a import run_service
from raw_crypten import run_baseline


def run_mpspdz(checkout: Path, script: Path, reps1: int, reps64: int) -> dict[str, Any]:
    """MP-SPDZ dealer-ring figures for Network A from the peer's own script."""
    env = dict(os.environ, MPSPDZ=str(checkout), REPS1=str(reps1), REPS64=str(reps64))
    out = subprocess.run(
        ["bash", str(script)], env=env, check=True, capture_output=True, text=True, timeout=3600
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["bs64_throughput_ips"] = 64_000 / float(result["bs64_ms"])
    return result


def _row(name: str, r: dict[str, Any]) -> str:
    b1, c = r["batch1"], r["concurrent"]
    return (
        f"{name:<14} p50 {b1['p50_ms']:7.2f} ms  p95 {b1['p95_ms']:7.2f} ms  "
        f"{b1['rounds']:6.1f} rounds  {b1['bytes'] / 1e3:9.1f} kB/job  "
        f"{c['throughput_ips']:7.1f} img/s ({c['clients']} clients, mean batch "
        f"{c['mean_batch']:.1f})  max|diff| {r['max_abs_diff']:.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="sequential single-image requests")
    parser.add_argument("--m", type=int, default=20, help="raw CrypTen batch-64 forwards")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--skip-raw", action="store_true", help="no raw CrypTen baseline")
    parser.add_argument("--mpspdz", type=Path, help="MP-SPDZ checkout with dealer-ring built")
    parser.add_argument("--mpspdz-script", type=Path, help="the peer's run_network_a.sh")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    result: dict[str, Any] = {}
    if not args.skip_raw:
        result["raw_crypten"] = run_baseline(n=args.n, m=args.m)
    if args.mpspdz and args.mpspdz_script:
        result["mpspdz_dealer_ring"] = run_mpspdz(args.mpspdz, args.mpspdz_script, 20, 5)
    for name, fast in (("fast", True), ("crypten_path", False)):
        result[name] = run_service(
            args.n, args.clients, args.per_client, args.client_processes,
            {"fast_inference": fast},
        )  # fmt: skip
    print(json.dumps(result, indent=2))
    print(_row("fast", result["fast"]))
    print(_row("crypten path", result["crypten_path"]))
    if "raw_crypten" in result:
        raw = result["raw_crypten"]
        print(
            f"raw CrypTen    p50 {raw['batch1']['p50_ms']:7.2f} ms  {raw['batch1']['rounds']} "
            f"rounds  {raw['batch1']['bytes'] / 1e3:.1f} kB  batch-64 "
            f"{raw['batch64']['throughput_ips']:.1f} img/s"
        )
    if "mpspdz_dealer_ring" in result:
        mp = result["mpspdz_dealer_ring"]
        print(
            f"MP-SPDZ dealer-ring  batch 1 {mp['bs1_ms']} ms  {mp['rounds_bs1']} rounds  "
            f"{mp['mb_bs1']} MB  batch-64 {mp['bs64_throughput_ips']:.1f} img/s"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
