"""Three servers, no dealer: Network A through the SDK on the replicated engine, one run.

In this order, on this machine:

* the replicated engine alone (:func:`rep3_engine.run_rep3`: three party
  processes over plain loopback TCP, no TLS, no gRPC): batch-1 p50 and
  batch-64 throughput, rounds and bytes;
* the service on a ``LocalCluster(3, engine="replicated")`` (three servers,
  no dealer process, TLS, SDK): sequential single-image p50/p95, the
  servers' own rounds, bytes and MPC milliseconds per job (from their
  status), and ``--clients`` concurrent single-image clients in separate
  processes;
* the same on today's 3-server CrypTen path (``LocalCluster(3)``: three
  servers and a dealer), unless ``--skip-crypten``;
* training: Network A at batch 128 for ``--train-steps`` steps through the
  SDK on a replicated cluster (``bench/training.py``'s job, samples/s and
  the servers' rounds and bytes per step);
* optionally MP-SPDZ's ``ring`` protocol (``--mpspdz CHECKOUT --mpspdz-script
  run_network_a.sh``, with ``replicated-ring-party.x`` built).

The service overhead is itemised as: SDK p50 = the servers' MPC time per job
+ the rest (client share/reconstruct, gRPC and TLS, the hold and the
leader's dispatch), next to the engine alone's p50 over TCP.

Run::

    .venv/bin/python bench/replicated_service.py --json bench/results/replicated_service_run1.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_service import run_mpspdz
from network_a import run_service
from rep3_engine import run_rep3

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from training import run_service as run_training_service


def _service(n: int, clients: int, per_client: int, processes: int, engine: str) -> dict[str, Any]:
    result = run_service(n, clients, per_client, processes, parties=3, engine=engine)
    batch1 = result["batch1"]
    batch1["other_ms"] = batch1["p50_ms"] - batch1["mpc_ms_per_job"]
    return result


def _training(steps: int, batch: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(3, Path(tmp) / "c", engine="replicated") as local,
        Cluster.from_config(local.config_path) as cluster,
    ):
        return run_training_service(cluster, steps, batch)


def summary(result: dict[str, Any]) -> str:
    rows = []
    engine = result["engine_alone"]
    rows.append(
        f"engine alone (TCP): batch-1 p50 {engine['batch1']['p50_ms']:.2f} ms, "
        f"batch 64 {engine['batch64']['back_to_back_ips']:.0f} img/s"
    )
    for key in ("replicated", "crypten_path"):
        if key in result:
            b1, load = result[key]["batch1"], result[key]["concurrent"]
            rows.append(
                f"{key}: SDK p50 {b1['p50_ms']:.1f} ms (MPC {b1['mpc_ms_per_job']:.1f} ms/job, "
                f"rest {b1['other_ms']:.1f}), {b1['rounds']:.0f} rounds, "
                f"{b1['bytes'] / 1000:.1f} kB/job; {load['throughput_ips']:.0f} img/s concurrent"
            )
    if "training" in result:
        rows.append(f"training, batch 128: {json.dumps(result['training'])[:300]}")
    if "mpspdz_ring" in result:
        mp = result["mpspdz_ring"]
        rows.append(
            f"MP-SPDZ ring: batch 1 {mp['bs1_ms']} ms, {mp['bs64_throughput_ips']:.0f} img/s"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="sequential single-image requests")
    parser.add_argument("--engine-n", type=int, default=100, help="engine-alone batch-1 forwards")
    parser.add_argument("--engine-m", type=int, default=20, help="engine-alone batch-64 forwards")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--skip-crypten", action="store_true", help="no 3-server CrypTen path")
    parser.add_argument("--train-steps", type=int, default=16, help="batch-128 steps; 0 skips")
    parser.add_argument("--mpspdz", type=Path, help="MP-SPDZ checkout, replicated-ring built")
    parser.add_argument("--mpspdz-script", type=Path, help="the peer's run_network_a.sh")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    load = (args.clients, args.per_client, args.client_processes)
    result: dict[str, Any] = {"engine_alone": run_rep3(args.engine_n, args.engine_m)}
    result["replicated"] = _service(args.n, *load, engine="replicated")
    if not args.skip_crypten:
        result["crypten_path"] = _service(args.n, *load, engine="dealer")
    if args.train_steps:
        result["training"] = _training(args.train_steps, 128)
    if args.mpspdz and args.mpspdz_script:
        result["mpspdz_ring"] = run_mpspdz(args.mpspdz, args.mpspdz_script, 20, 5, "ring")
    print(json.dumps(result, indent=2))
    print(summary(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
