"""Plain gloo vs the secured MPC engine, in one run, on SecureML "Network A".

Both sides run 2 compute parties + ppml's dealer as separate processes on
loopback, one torch thread each (launched by :func:`raw_crypten.launch_spmd`):

* gloo: today's path, :mod:`ppml.servers.mpc.session` (rank 0 hosts the
  TCPStore, gloo process groups, CrypTen's TTP via ppml's ``Dealer`` with
  CSPRNG-seeded torch generators);
* secured: :mod:`ppml.servers.mpc.session` (mutual-TLS transport, no store,
  no gloo) with keyed AES-256-CTR streams and ppml's ``Dealer``.

Party 0 measures Network A (784-128-128-10, ReLU): batch-1 forward latency
(p50 over ``--n``), batch-64 forward throughput (``--m`` forwards), training
samples/s at batch 128 (``--steps`` SGD steps with cross-entropy, as
:mod:`raw_crypten_training`), and CrypTen's rounds and bytes per forward and
per step. The configurations run in ABBA order (``--repeat`` times) so that
drift on a shared machine cancels; the summary takes the median per measure.

Run::

    .venv/bin/python bench/transport.py --json bench/results/transport.json
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from raw_crypten import WORLD_SIZE, _comm, _free_port, _percentile, launch_spmd
from raw_crypten_training import CLASSES, LR, MOMENTUM, ORDER_SEED, _network_a, synthetic_mnist

MODES = ("gloo", "secured")
TIMEOUT_S = 120.0


def _setup_files(directory: Path) -> dict:
    """CA, certificates and addresses for a secured session (written once per run)."""
    from ppml.proto.deploy.tls import issue_server_cert, make_ca
    from ppml.servers.mpc.network.mesh import new_epoch_tag

    ca = make_ca(directory / "tls")
    names = [*(f"server-{r}" for r in range(WORLD_SIZE)), "dealer"]
    certs = {n: issue_server_cert(ca, directory / "tls", n, ["127.0.0.1"]) for n in names}
    return {
        "ca": str(ca.cert),
        "names": names,
        "certs": {n: [str(f.cert), str(f.key)] for n, f in certs.items()},
        "ports": {str(r): _free_port() for r in range(1, WORLD_SIZE + 1)},
        "epoch": new_epoch_tag().hex(),
        "store_port": _free_port(),
        "store_prefix": f"bench-{time.time_ns()}",
    }


def _params(setup: dict, rank: int) -> Any:
    from ppml.servers.mpc.network.mesh import Peer, SessionParams
    from ppml.servers.mpc.network.tls_links import TlsIdentity

    peers = [
        Peer(name, "127.0.0.1", setup["ports"][str(r)]) if str(r) in setup["ports"] else Peer(name)
        for r, name in enumerate(setup["names"])
    ]
    cert, key = setup["certs"][setup["names"][rank]]
    return SessionParams(
        rank=rank,
        world_size=WORLD_SIZE,
        peers=tuple(peers),
        identity=TlsIdentity(Path(setup["ca"]), Path(cert), Path(key)),
        epoch=bytes.fromhex(setup["epoch"]),
        timeout_s=TIMEOUT_S,
    )


def _join(mode: str, rank: int, setup: dict) -> Any:
    """Join the session; returns the function that leaves it."""
    if mode == "secured":
        from ppml.servers.mpc import session

        session.join(_params(setup, rank))
        return session.leave
    import gloo_session as mpc_session

    store = ("127.0.0.1", setup["store_port"])
    if rank == 0:
        mpc_session.host_master_store(*store)
    mpc_session.join(rank, WORLD_SIZE, store, setup["store_prefix"], TIMEOUT_S)
    return mpc_session.leave


def _dealer_main(mode: str, setup: dict) -> None:
    import torch

    torch.set_num_threads(1)
    if mode == "secured":
        from ppml.servers.mpc.dealer import Dealer, serve_epoch

        print(serve_epoch(Dealer(), _params(setup, WORLD_SIZE)))
        return
    import gloo_session as mpc_session

    store = ("127.0.0.1", setup["store_port"])
    mpc_session.join_as_dealer(WORLD_SIZE, store, setup["store_prefix"], TIMEOUT_S)
    print(mpc_session.gloo_dealer().serve())  # type: ignore[attr-defined]


def _forward(crypten: Any, n: int, m: int) -> dict:
    """Inference figures of Network A (party 0's clock)."""
    import torch

    torch.manual_seed(1234)  # public: benchmark weights and inputs, not secrets
    model = _network_a(crypten)
    model.encrypt(src=0)
    model.eval()
    x1 = crypten.cryptensor(torch.rand(1, 784), src=0)
    x64 = crypten.cryptensor(torch.rand(64, 784), src=0)
    result: dict[str, Any] = {}
    with crypten.no_grad():
        for _ in range(3):
            model(x1)
            model(x64)
        for name, x in (("batch1", x1), ("batch64", x64)):
            crypten.reset_communication_stats()
            model(x)
            rounds, nbytes = _comm(crypten)
            result[name] = {"rounds": rounds, "bytes": nbytes}
        latencies = []
        for _ in range(n):
            t0 = time.perf_counter()
            model(x1)
            latencies.append(1e3 * (time.perf_counter() - t0))
        started = time.perf_counter()
        for _ in range(m):
            model(x64)
        wall = time.perf_counter() - started
    result["batch1"].update(p50_ms=statistics.median(latencies), p95_ms=_percentile(latencies, 95))
    result["batch64"]["throughput_ips"] = 64 * m / wall
    return result


def _training(crypten: Any, steps: int, batch: int) -> dict:
    """Training figures at ``batch`` rows per step (as raw_crypten_training.py)."""
    import torch

    from ppml.training.batches import BatchPlan

    torch.manual_seed(0)  # public: initial weights of the benchmark model
    model = _network_a(crypten)
    model.encrypt(src=0)
    model.train()
    features, labels = synthetic_mnist(steps * batch)
    x = crypten.cryptensor(features, src=0)
    y = crypten.cryptensor(torch.nn.functional.one_hot(labels, CLASSES).float(), src=0)
    optimizer = crypten.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = crypten.nn.CrossEntropyLoss(skip_forward=True)
    plan = BatchPlan(steps * batch, batch, ORDER_SEED)

    def step(i: int) -> None:
        index = torch.from_numpy(plan.indices(i))
        with crypten.cfg.temp_override({"functions.max_method": "pairwise"}):
            loss = loss_fn(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
        optimizer.step()

    step(0)
    crypten.reset_communication_stats()
    started = time.perf_counter()
    for i in range(steps):
        step(i)
    wall = time.perf_counter() - started
    rounds, nbytes = _comm(crypten)
    return {"samples_per_s": steps * batch / wall, "rounds_per_step": rounds / steps,
            "bytes_per_step": nbytes / steps}  # fmt: skip


def _micro(crypten: Any) -> dict:
    """The transport alone: all_reduce round trips of 8 and of 1M int64 elements."""
    import torch

    comm = crypten.communicator.get()
    result = {}
    for name, elements, repeats in (("small", 8, 500), ("large", 1 << 20, 10)):
        tensor = torch.arange(elements, dtype=torch.int64)
        comm.all_reduce(tensor)
        comm.barrier()
        started = time.perf_counter()
        for _ in range(repeats):
            comm.all_reduce(tensor)
        result[f"all_reduce_{name}_us"] = 1e6 * (time.perf_counter() - started) / repeats
    return result


def _party_main(mode: str, rank: int, setup: dict, args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    leave = _join(mode, rank, setup)
    try:
        from ppml.servers.mpc.core.crypten_compat import crypten

        result = {"mode": mode, "backend": crypten.communicator.get().get_distributed_backend()}
        result["micro"] = _micro(crypten)
        result.update(_forward(crypten, args.n, args.m))
        result["training"] = _training(crypten, args.steps, 128)
        Path(f"{args.out}.rank{rank}").write_text(json.dumps(result))
    finally:
        leave()


def run_once(mode: str, args: argparse.Namespace) -> dict:
    """One session of ``mode``; party 0's figures (party 1's comm counts added)."""
    with tempfile.TemporaryDirectory(prefix="bench_transport_") as tmp:
        setup_path = Path(tmp, "setup.json")
        setup_path.write_text(json.dumps(_setup_files(Path(tmp))))
        extra = ["--mode", mode, "--setup", str(setup_path), "--n", str(args.n),
                 "--m", str(args.m), "--steps", str(args.steps)]  # fmt: skip
        p0, p1 = launch_spmd(str(Path(__file__).resolve()), extra, 1800.0, "bench_transport_")
    for key in ("batch1", "batch64"):
        p0[key]["rounds_party1"], p0[key]["bytes_party1"] = p1[key]["rounds"], p1[key]["bytes"]
    return p0


def _comm_counts(run: dict) -> dict:
    counts = {
        key: {k: v for k, v in run[key].items() if k.startswith(("rounds", "bytes"))}
        for key in ("batch1", "batch64")
    }
    counts["training"] = {k: run["training"][k] for k in ("rounds_per_step", "bytes_per_step")}
    return counts


def summarise(runs: list[dict]) -> dict:
    """Median of each measure per mode, and secured/gloo ratios (time-like: > 1 is slower)."""

    def median(mode: str, *path: str) -> float:
        values = []
        for run in runs:
            if run["mode"] == mode:
                value: Any = run
                for key in path:
                    value = value[key]
                values.append(float(value))
        return statistics.median(values)

    measures = {
        "batch1_p50_ms": ("batch1", "p50_ms"),
        "batch1_p95_ms": ("batch1", "p95_ms"),
        "batch64_throughput_ips": ("batch64", "throughput_ips"),
        "training_samples_per_s": ("training", "samples_per_s"),
        "all_reduce_8_us": ("micro", "all_reduce_small_us"),
        "all_reduce_1M_us": ("micro", "all_reduce_large_us"),
    }
    table = {mode: {k: median(mode, *p) for k, p in measures.items()} for mode in MODES}
    g, s = table["gloo"], table["secured"]
    ratios = {
        "batch1_p50": s["batch1_p50_ms"] / g["batch1_p50_ms"],
        "batch64_time": g["batch64_throughput_ips"] / s["batch64_throughput_ips"],
        "training_time": g["training_samples_per_s"] / s["training_samples_per_s"],
    }
    comm = {mode: [_comm_counts(run) for run in runs if run["mode"] == mode] for mode in MODES}
    return {
        "medians": table,
        "secured_over_gloo": ratios,
        "target": "each ratio <= 1.10",
        "comm_identical": all(c == comm["gloo"][0] for mode in MODES for c in comm[mode]),
        "comm_party0": comm["gloo"][0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50, help="batch-1 forwards timed")
    ap.add_argument("--m", type=int, default=20, help="batch-64 forwards timed")
    ap.add_argument("--steps", type=int, default=10, help="training steps timed (batch 128)")
    ap.add_argument("--repeat", type=int, default=1, help="ABBA blocks of runs")
    ap.add_argument("--json", default=None, help="write all runs and the summary here")
    ap.add_argument("--mode", choices=MODES, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--setup", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--role", choices=["party", "ttp"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role is not None:
        setup = json.loads(Path(args.setup).read_text())
        if args.role == "ttp":
            _dealer_main(args.mode, setup)
        else:
            _party_main(args.mode, args.rank, setup, args)
        return
    runs = []
    for mode in ["gloo", "secured", "secured", "gloo"] * args.repeat:  # ABBA: drift cancels
        runs.append(run_once(mode, args))
        print(f"{mode}: {json.dumps(runs[-1])}", flush=True)
    result = {"setting": {"parties": WORLD_SIZE, "threads": 1, "n": args.n, "m": args.m,
                          "steps": args.steps, "batch_training": 128, "transport": "loopback"},
              "summary": summarise(runs), "runs": runs}  # fmt: skip
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
