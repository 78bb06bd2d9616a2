"""Network A single-image latency over WAN-like MPC links, next to rounds x RTT.

A ``LocalCluster`` (2 servers + dealer) whose MPC links all pass through
user-space relays (``ppml.servers.mpc.network.relay``) that add a one-way delay of
RTT/2 in each direction (``tc netem`` is not available here): every process
listens at its ``mpc_bind`` and is dialed at the relay's ``mpc_address``.
The client's and the control links are not delayed: the figures isolate the
MPC rounds. For each path (the fast engine, the default on two servers, and
the CrypTen path) and each RTT the SDK sends sequential single images; the
estimate is party 0's rounds per prediction (from the servers' status) x RTT.

Run: ``.venv/bin/python bench/wan.py --json bench/results/wan_run1.json``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import network_a

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster, free_port, write_local_topology
from ppml.proto.deploy.topology import load_config
from ppml.servers.mpc.network.relay import Relay


def _delayed_topology(directory: Path, delay_s: float, fast: bool) -> list[Relay]:
    """Write a 2-server topology whose MPC listeners are reached through relays."""
    path = write_local_topology(directory, 2, {"heartbeat_s": 5, "fast_inference": fast})
    config = load_config(path)
    text = path.read_text()
    relays = []
    listeners = [config.party(1).mpc_address, config.dealer.mpc_address]
    for address in listeners:
        assert address is not None
        host, port = address.rsplit(":", 1)
        relay = Relay((host, int(port)), ("127.0.0.1", free_port()), delay_s=delay_s)
        relays.append(relay)
        dialed = f"{relay.address[0]}:{relay.address[1]}"
        text = text.replace(
            f'mpc_address = "{address}"', f'mpc_address = "{dialed}"\nmpc_bind = "{address}"'
        )
    path.write_text(text)
    return relays


def _predict_rounds(cluster: Cluster) -> tuple[int, int]:
    cost = next((c for c in cluster.status()[0].mpc_cost if c.kind == "predict"), None)
    return (cost.jobs, cost.rounds) if cost else (0, 0)


def measure(rtt_ms: float, n: int, fast: bool = True) -> dict[str, Any]:
    model = network_a()
    images = torch.rand(n, 784, generator=torch.Generator().manual_seed(0))  # public
    with tempfile.TemporaryDirectory(prefix="ppml-wan-") as tmp:
        relays = _delayed_topology(Path(tmp), rtt_ms / 2000.0, fast)
        try:
            with (
                LocalCluster(parties=2, directory=tmp) as local,
                Cluster.from_config(local.config_path) as cluster,
            ):
                model_id = cluster.share_model(model, images[:1])
                cluster.predict(model_id, images[:1])  # warm-up
                jobs0, rounds0 = _predict_rounds(cluster)
                times = []
                for i in range(n):
                    started = time.perf_counter()
                    out = cluster.predict(model_id, images[i : i + 1])
                    times.append((time.perf_counter() - started) * 1000)
                jobs1, rounds1 = _predict_rounds(cluster)
                with torch.no_grad():
                    error = (out - model(images[n - 1 : n])).abs().max().item()
        finally:
            for relay in relays:
                relay.close()
    rounds = (rounds1 - rounds0) / max(1, jobs1 - jobs0)
    return {
        "path": "fast" if fast else "crypten",
        "rtt_ms": rtt_ms,
        "n": n,
        "p50_ms": statistics.median(times),
        "min_ms": min(times),
        "rounds_per_prediction_party0": rounds,
        "rounds_x_rtt_ms": rounds * rtt_ms,
        "max_abs_error": error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt", type=float, nargs="+", default=[0.0, 10.0, 40.0])
    parser.add_argument("--n", type=int, default=10, help="sequential single images per RTT")
    parser.add_argument(
        "--paths", nargs="+", choices=["fast", "crypten"], default=["fast", "crypten"],
        help="fast: the fast engine (the default on 2 servers); crypten: fast_inference = false",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for path in args.paths:
        for rtt in args.rtt:
            result = measure(rtt, args.n, fast=path == "fast")
            print(json.dumps(result), flush=True)
            results.append(result)
    if args.json:
        args.json.write_text(json.dumps({"runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
