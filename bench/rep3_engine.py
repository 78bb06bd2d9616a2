"""The replicated engine (ppml.servers.mpc.rep3) alone on Network A vs raw 3-party CrypTen, one run.

Network A is Linear(784, 128) -> ReLU -> Linear(128, 128) -> ReLU ->
Linear(128, 10), weights from :func:`models.network_a` (``torch.manual_seed(0)``,
public benchmark weights), inputs uniform in [0, 1).

Setting: the three parties are three OS processes, one numpy/torch thread
each, connected by plain loopback TCP (:mod:`ppml.servers.mpc.rep3.sockets`:
one connection per pair, length-prefixed frames, TCP_NODELAY). No TLS, no
gRPC, no dealer. The parent splits weights and inputs into three additive
shares (the SDK's wire form) and binds the three listeners before the
processes start. Each party:

* agrees pairwise keys (1 round) and reshares the model (1 round), timed;
* batch 1: ``WARMUP + n`` forwards, each after a barrier; latency (p50, p99)
  and the process's own CPU time (``time.process_time``) per forward;
* batch 64: ``WARMUP + m`` forwards after barriers (latency), then ``m``
  back to back: throughput ``64 m / wall`` and CPU seconds per image;
* rounds and payload bytes sent, per forward (the socket layer's counters).

Party 0's wall times are reported (the three finish within a round of each
other); CPU and communication for every party. Raw CrypTen runs afterwards in
the same invocation with ``world_size`` 3 plus its TTP dealer (4 processes,
gloo on loopback; :func:`raw_crypten.launch_spmd`), unless ``--crypten-n 0``.

Run::

    .venv/bin/python bench/rep3_engine.py --json bench/results/rep3_engine_run1.json

``--profile-party R --profile-out prof.txt`` records party ``R`` with py-spy
(raw format, for flame graphs) over the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread per process, before numpy/torch load BLAS

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import raw_crypten  # noqa: E402
from models import network_a  # noqa: E402

SCALE = 1 << 16
BATCH = 64
WARMUP = 5
PARTIES = 3


def _spec() -> Any:
    from ppml.servers.mpc.fast.engine import ModelSpec, ReLU
    from ppml.servers.mpc.fast.linear import Linear

    layers = (Linear(784, 128), ReLU(), Linear(128, 128), ReLU(), Linear(128, 10))
    return ModelSpec(layers, (784,))


# --------------------------------------------------------------------------- party process


def _party_main(rank: int, fd: int, ports: list[int], workdir: Path, n: int, m: int) -> None:
    import torch

    torch.set_num_threads(1)
    from ppml.servers.mpc.rep3 import engine, keys
    from ppml.servers.mpc.rep3.rounds import Expect, run
    from ppml.servers.mpc.rep3.sockets import connect

    spec = _spec()
    data = np.load(workdir / f"party{rank}.npz")
    listener = socket.socket(fileno=fd)
    net = connect(rank, listener, [("127.0.0.1", p) for p in ports], timeout_s=120.0)
    listener.close()
    peers = [p for p in range(PARTIES) if p != rank]
    token = np.zeros(1, dtype=np.int64)

    def barrier() -> None:
        net.exchange({p: [token] for p in peers}, {p: [Expect.like(token)] for p in peers})

    t0 = time.perf_counter()
    corr = run(net, keys.agree(rank))
    t1 = time.perf_counter()
    weights = [data[f"w{i}"] for i in range(3)]
    biases = [data[f"b{i}"] for i in range(3)]
    model = run(net, engine.share_model(corr, spec, weights, biases))
    t2 = time.perf_counter()
    res: dict[str, Any] = {"keys_ms": 1e3 * (t1 - t0), "share_model_ms": 1e3 * (t2 - t1)}
    outputs: dict[str, np.ndarray] = {}

    def forward(x: np.ndarray) -> np.ndarray:
        y: np.ndarray = run(net, engine.forward(corr, spec, model, x))
        return y

    for batch, count in ((1, n), (BATCH, m)):
        x = data[f"x{batch}"]
        wall_ms, cpu_ms = [], []
        rounds = sent = 0
        for i in range(WARMUP + count):
            barrier()
            r0, b0 = net.rounds, net.bytes_sent
            w0, c0 = time.perf_counter(), time.process_time()
            y = forward(x)
            w1, c1 = time.perf_counter(), time.process_time()
            rounds, sent = net.rounds - r0, net.bytes_sent - b0
            if i >= WARMUP:
                wall_ms.append(1e3 * (w1 - w0))
                cpu_ms.append(1e3 * (c1 - c0))
            if i == 0:
                outputs[f"y{batch}"] = y
        entry: dict[str, Any] = {
            "p50_ms": statistics.median(wall_ms),
            "p99_ms": raw_crypten._percentile(wall_ms, 99),
            "mean_ms": statistics.fmean(wall_ms),
            "min_ms": min(wall_ms),
            "cpu_p50_ms": statistics.median(cpu_ms),
            "cpu_s_per_image": sum(cpu_ms) / 1e3 / (batch * count),
            "rounds": rounds,
            "bytes_sent": sent,
            "bytes_sent_per_image": sent / batch,
        }
        barrier()
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(count):
            forward(x)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        entry["back_to_back_ips"] = batch * count / wall
        entry["back_to_back_cpu_s_per_image"] = cpu / (batch * count)
        res[f"batch{batch}"] = entry
    usage = resource.getrusage(resource.RUSAGE_SELF)
    res["process_cpu_s_total"] = usage.ru_utime + usage.ru_stime
    res["max_rss_mib"] = usage.ru_maxrss / 1024
    np.savez(workdir / f"out{rank}.npz", **outputs)
    (workdir / f"result{rank}.json").write_text(json.dumps(res))
    barrier()  # nobody closes its links while a peer still reads
    net.close()


# --------------------------------------------------------------------------- launcher


def _encode(t: Any) -> np.ndarray:
    return np.rint(t.detach().double().numpy() * SCALE).astype(np.int64)


def run_rep3(
    n: int, m: int, profile: tuple[int, str] | None = None, timeout_s: float = 1800.0
) -> dict[str, Any]:
    """Three party processes over loopback TCP; returns party 0's timings and everyone's costs."""
    import torch

    from ppml.servers.mpc.fast.prg import KeyedPRG
    from ppml.servers.mpc.rep3.sockets import listen

    net, rng = network_a(), KeyedPRG()
    x1, x64 = torch.rand(1, 784), torch.rand(BATCH, 784)
    linears = [mod for mod in net if isinstance(mod, torch.nn.Linear)]
    plain = {f"w{i}": _encode(lin.weight) for i, lin in enumerate(linears)}
    plain |= {f"b{i}": _encode(lin.bias) for i, lin in enumerate(linears)}
    plain |= {"x1": _encode(x1), "x64": _encode(x64)}
    shares: list[dict[str, np.ndarray]] = [{}, {}, {}]
    for name, v in plain.items():
        s1, s2 = rng.ring(v.shape), rng.ring(v.shape)
        for rank, s in enumerate((v - s1 - s2, s1, s2)):
            shares[rank][name] = s

    listeners = [listen() for _ in range(PARTIES)]
    ports = ",".join(str(s.getsockname()[1]) for s in listeners)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="rep3_engine_") as tmp:
        work = Path(tmp)
        for rank in range(PARTIES):
            np.savez(work / f"party{rank}.npz", **shares[rank])
        try:
            for rank, lst in enumerate(listeners):
                cmd = [sys.executable, __file__, "--role", "rep3", "--rank", str(rank)]
                cmd += ["--fd", str(lst.fileno()), "--ports", ports, "--dir", tmp]
                cmd += ["--n", str(n), "--m", str(m)]
                if profile and profile[0] == rank:
                    spy = Path(sys.executable).with_name("py-spy")
                    cmd = [
                        str(spy),
                        "record",
                        "-r",
                        "500",
                        "-f",
                        "raw",
                        "-o",
                        profile[1],
                        "--",
                        *cmd,
                    ]
                procs.append(subprocess.Popen(cmd, pass_fds=(lst.fileno(),)))
            for lst in listeners:
                lst.close()
            deadline = time.monotonic() + timeout_s
            for p in procs:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        if any(p.returncode for p in procs):
            raise RuntimeError(f"party exit codes {[p.returncode for p in procs]}")
        results = [json.loads((work / f"result{r}.json").read_text()) for r in range(PARTIES)]
        outs = [np.load(work / f"out{r}.npz") for r in range(PARTIES)]
        err = 0.0
        with torch.no_grad():
            for batch, x in ((1, x1), (BATCH, x64)):
                y = sum(o[f"y{batch}"] for o in outs).astype(np.float64) / SCALE
                err = max(err, float(np.abs(y - net(x).double().numpy()).max()))
    summary: dict[str, Any] = {}
    for batch in (1, BATCH):
        key = f"batch{batch}"
        p0 = results[0][key]
        summary[key] = {
            "p50_ms": p0["p50_ms"],
            "p99_ms": p0["p99_ms"],
            "mean_ms": p0["mean_ms"],
            "min_ms": p0["min_ms"],
            "back_to_back_ips": p0["back_to_back_ips"],
            "rounds_per_party": [r[key]["rounds"] for r in results],
            "bytes_sent_per_party": [r[key]["bytes_sent"] for r in results],
            "cpu_s_per_image_per_party": [r[key]["cpu_s_per_image"] for r in results],
            "back_to_back_cpu_s_per_image_per_party": [
                r[key]["back_to_back_cpu_s_per_image"] for r in results
            ],
        }
    summary[f"batch{BATCH}"]["p50_ips"] = BATCH / (summary[f"batch{BATCH}"]["p50_ms"] / 1e3)
    return {
        "setting": {
            "engine": "ppml.servers.mpc.rep3",
            "parties": PARTIES,
            "dealer": None,
            "transport": "loopback TCP, one connection per pair, no TLS",
            "threads_per_process": 1,
            "n": n,
            "m": m,
            "warmup": WARMUP,
        },
        "setup": {
            "keys_ms": results[0]["keys_ms"],
            "share_model_ms": results[0]["share_model_ms"],
        },
        **summary,
        "parties": results,
        "max_abs_err": err,
    }


def run_crypten3(n: int, m: int, timeout_s: float = 1800.0) -> dict[str, Any]:
    """Raw CrypTen, 3 parties + TTP: :mod:`raw_crypten`'s party program at ``world_size`` 3."""
    raw_crypten.WORLD_SIZE = PARTIES  # launch_spmd reads it: ranks 0..2 parties, 3 the TTP
    args = ["--n", str(n), "--m", str(m)]
    results = raw_crypten.launch_spmd(__file__, args, timeout_s, prefix="rep3_crypten_")
    res: dict[str, Any] = results[0]
    for key in ("batch1", "batch64"):
        res[key]["rounds_per_party"] = [r[key]["rounds"] for r in results]
        res[key]["bytes_per_party"] = [r[key]["bytes"] for r in results]
    return res


def _summary(rep3: dict[str, Any], raw: dict[str, Any] | None) -> str:
    b1, b64 = rep3["batch1"], rep3[f"batch{BATCH}"]
    cpu1 = ", ".join(f"{1e3 * c:.2f}" for c in b1["cpu_s_per_image_per_party"])
    cpu64 = ", ".join(f"{1e3 * c:.3f}" for c in b64["back_to_back_cpu_s_per_image_per_party"])
    lines = [
        "rep3 engine, Network A, 3 party processes, loopback TCP (no TLS), 1 thread each, "
        f"load {rep3['setting']['loadavg_1min_before_after']}",
        f"batch 1 : p50 {b1['p50_ms']:.2f} ms, p99 {b1['p99_ms']:.2f} ms, "
        f"min {b1['min_ms']:.2f} ms; CPU ms/image per party [{cpu1}]",
        f"batch 64: p50 {b64['p50_ms']:.2f} ms ({b64['p50_ips']:.0f} img/s), back-to-back "
        f"{b64['back_to_back_ips']:.0f} img/s; CPU ms/image per party [{cpu64}]",
        f"rounds per party: batch 1 {b1['rounds_per_party']}, batch 64 {b64['rounds_per_party']}",
        f"bytes sent per party: batch 1 {b1['bytes_sent_per_party']}, "
        f"batch 64 {b64['bytes_sent_per_party']}",
        f"max |encrypted - plaintext|: {rep3['max_abs_err']:.2e}",
    ]
    if raw:
        r1, r64 = raw["batch1"], raw["batch64"]
        lines.append(
            f"raw CrypTen 3 parties + TTP: batch 1 p50 {r1['p50_ms']:.2f} ms, "
            f"{r1['rounds']} rounds, {r1['bytes']} B (party 0); batch 64 "
            f"{r64['throughput_ips']:.0f} img/s"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="batch-1 forwards")
    ap.add_argument("--m", type=int, default=30, help="batch-64 forwards")
    ap.add_argument(
        "--crypten-n", type=int, default=30, help="raw CrypTen batch-1 forwards (0: skip)"
    )
    ap.add_argument("--crypten-m", type=int, default=5, help="raw CrypTen batch-64 forwards")
    ap.add_argument("--json", default=None, help="write the result JSON here")
    ap.add_argument("--profile-party", type=int, default=None, help="py-spy this party (0-2)")
    ap.add_argument("--profile-out", default="rep3_profile.txt", help="py-spy raw output")
    ap.add_argument(
        "--role", choices=["rep3", "party", "ttp"], default=None, help=argparse.SUPPRESS
    )
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--fd", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--ports", default="", help=argparse.SUPPRESS)
    ap.add_argument("--dir", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.n < 1 or args.m < 1:
        ap.error("--n and --m must be at least 1")
    if args.role == "rep3":
        ports = [int(p) for p in args.ports.split(",")]
        _party_main(args.rank, args.fd, ports, Path(args.dir), args.n, args.m)
        return
    if args.role == "party":  # a raw CrypTen party (launch_spmd's command line)
        raw_crypten.WORLD_SIZE = PARTIES
        raw_crypten._party_main(args.rank, args.n, args.m, args.out)
        return
    if args.role == "ttp":
        raw_crypten._ttp_main()
        return
    profile = (args.profile_party, args.profile_out) if args.profile_party is not None else None
    load_before = os.getloadavg()
    rep3 = run_rep3(args.n, args.m, profile)
    rep3["setting"]["loadavg_1min_before_after"] = [load_before[0], os.getloadavg()[0]]
    rep3["setting"]["loadavg_before"] = list(load_before)
    raw = None
    if args.crypten_n > 0:
        raw = run_crypten3(args.crypten_n, args.crypten_m)
        raw["setting"]["loadavg_1min_after"] = os.getloadavg()[0]
    result = {"rep3": rep3, "raw_crypten_3party": raw}
    print(json.dumps(result, indent=2))
    print(_summary(rep3, raw))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
