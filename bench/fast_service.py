"""Network A, issue 13's figures from one command: each step before/after, MP-SPDZ, targets.

Everything below runs back to back on this machine, in this order:

* raw CrypTen (:mod:`raw_crypten`): 2 parties + TTP, gloo on loopback, no
  service: batch-1 latency and batch-64 throughput;
* optionally MP-SPDZ's dealer-ring protocol on the same model (``--mpspdz``:
  a checkout with ``dealer-ring-party.x`` built, ``--mpspdz-script``: the
  peer's ``run_network_a.sh``, which prints one JSON line); nothing of
  MP-SPDZ is part of this repository;
* the fast engine alone (:mod:`fast_engine`: two party processes, the dealer
  in the parent, no TLS or service): batch-64 online time and the dealer's
  preprocessing, the like-for-like of MP-SPDZ's batch-64 figure;
* the service (a :class:`~ppml.client.deploy.local.LocalCluster`, 2 servers +
  dealer, TLS, SDK clients) in three configurations, one per step:
  ``crypten_path`` (``fast_inference = false``: before), ``fast_on_demand``
  (the fast engine, weights masked once and FSS comparisons, but no pools:
  ``fast_pool_bundles = 0``, so every forward fetches its material from the
  dealer inside the job) and ``fast`` (the default: pools filled ahead, the
  refill riding on predictions, the sequential-client dispatch). Each one:
  sequential single-image p50/p95, the servers' own rounds and bytes per
  single-image job, and 64 concurrent single-image clients (with the CPU
  seconds of every process, to show where a 2-core machine's time goes);
* training: Network A at batch 128 through raw CrypTen, and through the
  service as before this work (torch's default of one thread per core, one
  dealer request at a time), with one torch thread per process
  (``torch_threads = 1``), and with planned dealer requests too
  (``plan_dealer_requests``, :mod:`ppml.servers.mpc.core.ttp_plan`)
  (``--train-steps``; 0 skips it).

The WAN view adds, per configuration, ``rounds x RTT`` (plus one RTT for the
client's own request) to the measured p50, for RTTs of 10 and 40 ms.

Run: ``.venv/bin/python bench/fast_service.py --json bench/results/fast_service_run4.json``
(``--mpspdz``/``--mpspdz-script`` add the C++ framework; ``--n``, ``--clients``,
``--per-client``, ``--m``, ``--train-steps`` trade time for precision).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_engine import run_fast
from network_a import run_service
from raw_crypten import run_baseline
from raw_crypten_training import run_training_baseline

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from training import run_service as run_training_service

CONFIGS = {
    "crypten_path": {"fast_inference": False},
    "fast_on_demand": {"fast_inference": True, "fast_pool_bundles": 0},
    "fast": {"fast_inference": True},
}
RTTS_MS = (10.0, 40.0)


def run_mpspdz(
    checkout: Path, script: Path, reps1: int, reps64: int, protocol: str = "dealer-ring"
) -> dict[str, Any]:
    """MP-SPDZ figures for Network A from the peer's own script (``PROTOCOL=protocol``)."""
    env = dict(
        os.environ, MPSPDZ=str(checkout), REPS1=str(reps1), REPS64=str(reps64), PROTOCOL=protocol
    )
    out = subprocess.run(
        ["bash", str(script)], env=env, check=True, capture_output=True, text=True, timeout=3600
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["bs64_throughput_ips"] = 64_000 / float(result["bs64_ms"])
    return result


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if value and reference else "n/a"


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13's targets against the ``fast`` configuration, met or the distance."""
    fast, mp = result["fast"], result.get("mpspdz_dealer_ring")
    b1 = fast["batch1"]
    rows = [
        {"figure": "online rounds per single image", "ours": b1["rounds"], "target": 25,
         "met": b1["rounds"] <= 25},
        {"figure": "bytes per single image (sent + received)", "ours": b1["bytes"],
         "target": 500_000, "met": b1["bytes"] <= 500_000},
    ]  # fmt: skip
    if mp:
        ips = fast["concurrent"]["throughput_ips"]
        rows += [
            {"figure": "single-image p50 end to end (ms)", "ours": b1["p50_ms"],
             "target": 1.5 * mp["bs1_ms"], "met": b1["p50_ms"] <= 1.5 * mp["bs1_ms"],
             "vs_mpspdz": b1["p50_ms"] / mp["bs1_ms"]},
            {"figure": "64 concurrent clients (img/s)", "ours": ips,
             "target": mp["bs64_throughput_ips"], "met": ips >= mp["bs64_throughput_ips"],
             "vs_mpspdz": ips / mp["bs64_throughput_ips"]},
        ]  # fmt: skip
        if "training" in result:
            sps = result["training"]["service"]["samples_per_s"]
            rows.append(
                {"figure": "training, batch 128 (samples/s)", "ours": sps,
                 "target": mp["train_samples_per_s"], "met": sps >= mp["train_samples_per_s"],
                 "vs_mpspdz": sps / mp["train_samples_per_s"]}
            )  # fmt: skip
    return rows


def wan(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Measured p50 plus (rounds + 1) x RTT per configuration (MP-SPDZ: rounds x RTT)."""
    out = {}
    for name in CONFIGS:
        b1 = result[name]["batch1"]
        out[name] = {f"{rtt:g}ms": b1["p50_ms"] + (b1["rounds"] + 1) * rtt for rtt in RTTS_MS}
    mp = result.get("mpspdz_dealer_ring")
    if mp:
        out["mpspdz"] = {f"{rtt:g}ms": mp["bs1_ms"] + mp["rounds_bs1"] * rtt for rtt in RTTS_MS}
    return out


def summary(result: dict[str, Any]) -> str:
    raw, mp = result.get("raw_crypten"), result.get("mpspdz_dealer_ring")
    lines = ["| | " + " | ".join(CONFIGS) + " | raw CrypTen | MP-SPDZ |", "|" + " --- |" * 6]

    def row(label: str, get: Any, raw_v: str = "", mp_v: str = "") -> None:
        lines.append(f"| {label} | " + " | ".join(get(result[n]) for n in CONFIGS)
                     + f" | {raw_v} | {mp_v} |")  # fmt: skip

    row("single-image p50 / p95 (ms)",
        lambda r: f"{r['batch1']['p50_ms']:.1f} / {r['batch1']['p95_ms']:.1f}",
        f"{raw['batch1']['p50_ms']:.1f}" if raw else "", f"{mp['bs1_ms']:.1f}" if mp else "")
    row("rounds per single-image job", lambda r: f"{r['batch1']['rounds']:.2f}",
        f"{raw['batch1']['rounds']}" if raw else "", f"{mp['rounds_bs1']:.0f}" if mp else "")
    row("bytes per single-image job", lambda r: f"{r['batch1']['bytes']:,.0f}",
        f"{raw['batch1']['bytes']:,}" if raw else "",
        f"{mp['mb_bs1'] * 1e6:,.0f}" if mp else "")
    row("MPC time per single-image job (ms)", lambda r: f"{r['batch1']['mpc_ms_per_job']:.1f}")
    row("64 concurrent clients (img/s)", lambda r: f"{r['concurrent']['throughput_ips']:.0f}",
        f"{raw['batch64']['throughput_ips']:.0f} (batch 64)" if raw else "",
        f"{mp['bs64_throughput_ips']:.0f} (batch 64)" if mp else "")
    row("CPU ms per image: clients / servers / dealer",
        lambda r: " / ".join(f"{v:.1f}" for v in r["concurrent"]["cpu_ms_per_image"].values()))
    views = result["wan"]
    for rtt in RTTS_MS:
        key = f"{rtt:g}ms"
        cells = " | ".join(f"{views[n][key]:.0f}" for n in CONFIGS)
        mp_cell = f"{views['mpspdz'][key]:.0f}" if "mpspdz" in views else ""
        lines.append(f"| WAN estimate, RTT {rtt:g} ms (ms) | {cells} | | {mp_cell} |")
    engine = result.get("engine")
    if engine:
        lines.append(
            f"\nFast engine alone, batch 64: online {engine['online_ms']:.1f} ms, dealer "
            f"{engine['dealer_ms']:.1f} ms -> {engine['ips_incl_preprocessing']:.0f} img/s with "
            "preprocessing" + (f" (MP-SPDZ: {mp['bs64_throughput_ips']:.0f})" if mp else "")
        )
    if "training" in result:
        t = result["training"]
        lines.append(
            f"Training, batch 128: service {t['service']['samples_per_s']:.1f} samples/s "
            f"({t['service']['party0']['rounds_per_step']:.0f} rounds/step on party 0), "
            f"without planned dealer requests {t['service_unplanned']['samples_per_s']:.1f} "
            f"({t['service_unplanned']['party0']['rounds_per_step']:.0f}), and with torch's "
            f"default threads too {t['service_before']['samples_per_s']:.1f}, raw CrypTen "
            f"{t['raw']['samples_per_s']:.1f}"
            + (f", MP-SPDZ {mp['train_samples_per_s']:.1f}" if mp else "")
        )
    for t in result["targets"]:
        state = "met" if t["met"] else "missed"
        extra = f" ({t['vs_mpspdz']:.2f}x MP-SPDZ)" if "vs_mpspdz" in t else ""
        ours, target = f"{t['ours']:,.1f}", f"{t['target']:,.1f}"
        lines.append(f"target {t['figure']}: {ours} vs {target}: {state}{extra}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="sequential single-image requests")
    parser.add_argument("--m", type=int, default=20, help="raw CrypTen batch-64 forwards")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--engine-m", type=int, default=20, help="engine-alone batch-64 forwards")
    parser.add_argument("--train-steps", type=int, default=16, help="batch-128 steps; 0 skips")
    parser.add_argument("--skip-raw", action="store_true", help="no raw CrypTen baseline")
    parser.add_argument("--mpspdz", type=Path, help="MP-SPDZ checkout with dealer-ring built")
    parser.add_argument("--mpspdz-script", type=Path, help="the peer's run_network_a.sh")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # as the servers and the raw baselines run

    result: dict[str, Any] = {"loadavg_before": os.getloadavg()}
    if not args.skip_raw:
        result["raw_crypten"] = run_baseline(n=args.n, m=args.m)
    if args.mpspdz and args.mpspdz_script:
        result["mpspdz_dealer_ring"] = run_mpspdz(args.mpspdz, args.mpspdz_script, 20, 5)
    if args.engine_m:
        alone = run_fast(n=20, m=args.engine_m, profile=None)
        online = alone["party0"]["batch64"]["online_p50_ms"]
        prepare = alone["party0"]["batch64"]["party_prepare_p50_ms"]
        dealer = alone["offline"]["batch64"]["dealer_preprocess_p50_ms"]
        result["engine"] = {
            "online_ms": online,
            "prepare_ms": prepare,
            "dealer_ms": dealer,
            "ips_incl_preprocessing": 64_000 / (online + prepare + dealer),
            "raw": alone,
        }
    for name, overrides in CONFIGS.items():
        result[name] = run_service(
            args.n, args.clients, args.per_client, args.client_processes, overrides
        )
    if args.train_steps:
        result["training"] = {"raw": run_training_baseline(args.train_steps, 128)}
        cores = os.cpu_count() or 1
        for name, serving in (
            ("service_before", {"plan_dealer_requests": False, "torch_threads": cores}),
            ("service_unplanned", {"plan_dealer_requests": False, "torch_threads": 1}),
            ("service", {"plan_dealer_requests": True, "torch_threads": 1}),
        ):
            with (
                tempfile.TemporaryDirectory() as tmp,
                LocalCluster(2, Path(tmp) / "c", serving=serving) as local,
                Cluster.from_config(local.config_path) as cluster,
            ):
                result["training"][name] = run_training_service(cluster, args.train_steps, 128)
    result["loadavg_after"] = os.getloadavg()
    result["wan"] = wan(result)
    result["targets"] = targets(result)
    print(summary(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
