"""The fast engine (ppml.servers.mpc.fast) on SecureML Network A vs raw CrypTen, in one run.

Network A is Linear(784, 128) -> ReLU -> Linear(128, 128) -> ReLU ->
Linear(128, 10), weights from ``torch.manual_seed(0)`` (public benchmark
weights), inputs uniform in [0, 1).

Setting: the two compute parties are two OS processes connected by a plain
AF_UNIX socket pair (no TLS, no gRPC), one torch thread each; the dealer is
the parent process. Phases, timed separately:

* one-time: the dealer shares the weight masks, the parties open ``W - B``;
* offline, dealer: :meth:`Dealer.preprocess` per forward (timed in the
  parent), bundles handed to the parties through files (not timed);
* offline, party: :func:`prepare` (input-independent, needs ``W - B``);
* online: :func:`forward` from input shares to output shares. Latency is
  timed on party 0 after a barrier, per forward; batch-64 throughput is
  ``64 * m / wall`` for ``m`` back-to-back forwards with prepared bundles.

Raw CrypTen (bench/raw_crypten.py: 2 parties + TTP dealer, gloo on loopback)
runs afterwards in the same invocation unless ``--crypten-n 0``.

Run::

    .venv/bin/python bench/fast_engine.py --json bench/results/fast_engine_run1.json

Add ``--profile-party0 prof.txt`` to record party 0 with py-spy (raw format).
"""

from __future__ import annotations

import argparse
import json
import os
import select
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
from models import network_a  # noqa: E402

SCALE = 1 << 16
BATCH = 64
WARMUP = 3


def _percentile(xs: list[float], q: float) -> float:
    ys = sorted(xs)
    k = max(0, min(len(ys) - 1, round(q / 100 * len(ys) + 0.5) - 1))
    return ys[k]


def _spec() -> Any:
    from ppml.servers.mpc.fast.engine import ModelSpec, ReLU
    from ppml.servers.mpc.fast.linear import Linear

    layers = (Linear(784, 128), ReLU(), Linear(128, 128), ReLU(), Linear(128, 10))
    return ModelSpec(layers, (784,))


class SocketExchange:
    """``exchange`` over a stream socket: send all of mine while receiving all of the peer's."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)

    def __call__(self, mine: np.ndarray) -> np.ndarray:
        mine = np.ascontiguousarray(mine)
        out = np.empty_like(mine)
        send = memoryview(mine.reshape(-1).view(np.uint8))
        recv = memoryview(out.reshape(-1).view(np.uint8))
        sent = got = 0
        while sent < len(send) or got < len(recv):
            progress = False
            if sent < len(send):
                try:
                    sent += self.sock.send(send[sent:])
                    progress = True
                except BlockingIOError:
                    pass
            if got < len(recv):
                try:
                    k = self.sock.recv_into(recv[got:])
                except BlockingIOError:
                    k = -1
                if k == 0:
                    raise ConnectionError("peer closed the socket")
                if k > 0:
                    got += k
                    progress = True
            if not progress:
                rd = [self.sock] if got < len(recv) else []
                wr = [self.sock] if sent < len(send) else []
                select.select(rd, wr, [])
        return out

    def barrier(self) -> None:
        self(np.zeros(1, dtype=np.int64))


# --------------------------------------------------------------------------- party process


def _party_main(rank: int, fd: int, workdir: Path, n: int, m: int) -> None:
    import torch

    torch.set_num_threads(1)
    from ppml.servers.mpc.fast.engine import Bundle, ModelSetup, PartyModel, forward, prepare

    spec = _spec()
    sock = socket.socket(fileno=fd)
    ex = SocketExchange(sock)
    data = np.load(workdir / f"party{rank}.npz")
    weights = [data[f"w{i}"] for i in range(3)]
    biases = [data[f"b{i}"] for i in range(3)]
    setup = ModelSetup.from_bytes((workdir / f"setup{rank}.bin").read_bytes())
    ex.barrier()
    t0 = time.perf_counter()
    model = PartyModel.open(spec, setup, weights, biases, ex)
    open_ms = 1e3 * (time.perf_counter() - t0)

    def load(batch: int, i: int) -> Bundle:
        return Bundle.from_bytes((workdir / f"bundle{rank}_{batch}_{i}.bin").read_bytes())

    res: dict[str, Any] = {"open_ms": open_ms}
    outputs: dict[str, np.ndarray] = {}
    for batch, count in ((1, n), (BATCH, m)):
        x = data[f"x{batch}"]
        prep_ms, online_ms, cpu_ms = [], [], []
        stats = None
        for i in range(WARMUP + count):
            bundle = load(batch, i)
            t0 = time.perf_counter()
            prep = prepare(model, bundle)
            t1 = time.perf_counter()
            ex.barrier()
            t2, c2 = time.perf_counter(), time.process_time()
            y, stats = forward(model, prep, x, ex)
            t3, c3 = time.perf_counter(), time.process_time()
            if i >= WARMUP:
                prep_ms.append(1e3 * (t1 - t0))
                online_ms.append(1e3 * (t3 - t2))
                cpu_ms.append(1e3 * (c3 - c2))
            if i == 0:
                outputs[f"y{batch}"] = y
        assert stats is not None
        entry: dict[str, Any] = {
            "online_p50_ms": statistics.median(online_ms),
            "online_p95_ms": _percentile(online_ms, 95),
            "online_mean_ms": statistics.fmean(online_ms),
            "online_min_ms": min(online_ms),
            "online_cpu_p50_ms": statistics.median(cpu_ms),
            "party_prepare_p50_ms": statistics.median(prep_ms),
            "rounds": stats.rounds,
            "bytes_sent": stats.bytes_sent,
        }
        if batch == BATCH:
            preps = [prepare(model, load(batch, i)) for i in range(WARMUP, WARMUP + count)]
            ex.barrier()
            t0 = time.perf_counter()
            for p in preps:
                forward(model, p, x, ex)
            wall = time.perf_counter() - t0
            entry["back_to_back_online_ips"] = batch * count / wall
        res[f"batch{batch}"] = entry
    np.savez(workdir / f"out{rank}.npz", **outputs)
    (workdir / f"result{rank}.json").write_text(json.dumps(res))
    sock.close()


# --------------------------------------------------------------------------- dealer / launcher


def _encode(t: Any) -> np.ndarray:
    return np.rint(t.detach().double().numpy() * SCALE).astype(np.int64)


def run_party_pair(
    script: str,
    args: list[str],
    timeout_s: float,
    env: dict[str, str] | None = None,
    wrap0: list[str] | None = None,
) -> None:
    """Run ``script --role party --rank R --fd FD *args`` for R = 0, 1 over one socketpair.

    Party 0's command may be wrapped (``wrap0``, e.g. a profiler). Waits for
    both; kills what is left at ``timeout_s``; raises unless both exit 0.
    """
    s0, s1 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    procs = []
    for rank, sock in enumerate((s0, s1)):
        cmd = [sys.executable, script, "--role", "party", "--rank", str(rank)]
        cmd += ["--fd", str(sock.fileno()), *args]
        if rank == 0 and wrap0:
            cmd = [*wrap0, *cmd]
        procs.append(subprocess.Popen(cmd, pass_fds=(sock.fileno(),), env=env))
    s0.close()
    s1.close()
    try:
        for p in procs:
            p.wait(timeout=timeout_s)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(p.returncode for p in procs):
        raise RuntimeError(f"party exit codes {[p.returncode for p in procs]}")


def run_fast(n: int, m: int, profile: str | None, timeout_s: float = 1800.0) -> dict[str, Any]:
    """Dealer here, two party processes over a socket pair; returns the figures."""
    import torch

    torch.set_num_threads(1)
    from ppml.servers.mpc.fast.engine import Dealer
    from ppml.servers.mpc.fast.gates import split
    from ppml.servers.mpc.fast.prg import KeyedPRG, new_key

    spec, net, rng = _spec(), network_a(), KeyedPRG()
    x1, x64 = torch.rand(1, 784), torch.rand(BATCH, 784)
    with tempfile.TemporaryDirectory(prefix="fast_engine_") as tmp:
        work = Path(tmp)
        shares: list[dict[str, np.ndarray]] = [{}, {}]
        linears = [mod for mod in net if isinstance(mod, torch.nn.Linear)]
        for i, lin in enumerate(linears):
            for name, t in ((f"w{i}", lin.weight), (f"b{i}", lin.bias)):
                for b, s in enumerate(split(_encode(t), rng)):
                    shares[b][name] = s
        for name, x in (("x1", x1), ("x64", x64)):
            for b, s in enumerate(split(_encode(x), rng)):
                shares[b][name] = s
        for b in (0, 1):
            np.savez(work / f"party{b}.npz", **shares[b])

        dealer, key = Dealer(), new_key()
        t0 = time.perf_counter()
        setups = dealer.model_setup(spec, key)
        setup_ms = 1e3 * (time.perf_counter() - t0)
        for b in (0, 1):
            (work / f"setup{b}.bin").write_bytes(setups[b].to_bytes())
        offline: dict[str, Any] = {"model_setup_ms": setup_ms}
        for batch, count in ((1, n), (BATCH, m)):
            times, nbytes = [], 0
            for i in range(WARMUP + count):
                t0 = time.perf_counter()
                bundles = dealer.preprocess(spec, key, batch)
                times.append(1e3 * (time.perf_counter() - t0))
                nbytes = bundles[0].nbytes
                for b in (0, 1):
                    (work / f"bundle{b}_{batch}_{i}.bin").write_bytes(bundles[b].to_bytes())
            offline[f"batch{batch}"] = {
                "dealer_preprocess_p50_ms": statistics.median(times[WARMUP:]),
                "bundle_bytes_per_party": nbytes,
                "bundle_bytes_per_party_per_image": nbytes / batch,
                "setup_bytes_per_party": sum(a.nbytes for a in setups[0].mask_shares),
            }

        wrap0: list[str] = []
        if profile:
            spy = Path(sys.executable).with_name("py-spy")
            spy_cmd = str(spy) if spy.exists() else "py-spy"
            wrap0 = [spy_cmd, "record", "-r", "250", "-f", "raw", "-o", profile, "--"]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        args = ["--dir", tmp, "--n", str(n), "--m", str(m)]
        run_party_pair(__file__, args, timeout_s, env, wrap0)
        r0, r1 = (json.loads((work / f"result{b}.json").read_text()) for b in (0, 1))
        o0, o1 = (np.load(work / f"out{b}.npz") for b in (0, 1))
        err = 0.0
        with torch.no_grad():
            for batch, x in ((1, x1), (BATCH, x64)):
                y = (o0[f"y{batch}"] + o1[f"y{batch}"]).astype(np.float64) / SCALE
                err = max(err, float(np.abs(y - net(x).double().numpy()).max()))
    for batch in (1, BATCH):
        r0[f"batch{batch}"]["rounds_party1"] = r1[f"batch{batch}"]["rounds"]
        r0[f"batch{batch}"]["bytes_sent_party1"] = r1[f"batch{batch}"]["bytes_sent"]
        r0[f"batch{batch}"]["bytes_sent_per_image"] = r0[f"batch{batch}"]["bytes_sent"] / batch
    b64 = r0[f"batch{BATCH}"]
    b64["online_p50_ips"] = BATCH / (b64["online_p50_ms"] / 1e3)
    return {
        "setting": {
            "engine": "ppml.servers.mpc.fast",
            "parties": 2,
            "dealer": "parent process (offline)",
            "transport": "AF_UNIX socketpair, two party processes",
            "threads": 1,
            "n": n,
            "m": m,
            "depth": spec.params.depth,
            "frac_bits": spec.params.frac_bits,
        },
        "offline": offline,
        "party0": r0,
        "max_abs_err": err,
    }


def _limbs(a: np.ndarray, axis: int) -> np.ndarray:
    """int64 as four 16-bit limbs in float64 (exact), stacked along ``axis``."""
    u = a.view(np.uint64)
    parts = [((u >> np.uint64(16 * i)) & np.uint64(0xFFFF)).astype(np.float64) for i in range(4)]
    return np.concatenate(parts, axis=axis)


def limb_matmul(x: np.ndarray, w_limbs: np.ndarray) -> np.ndarray:
    """``x @ w`` mod 2^64 by one float64 GEMM over 16-bit limbs (exact for inner dim < 2^21).

    ``w_limbs = _limbs(w, 1)``, made once per model.
    """
    b, n = x.shape[0], w_limbs.shape[1] // 4
    prod = (_limbs(x, 0) @ w_limbs).astype(np.uint64)  # (4b, 4n)
    acc = np.zeros((b, n), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(4):
            for j in range(4 - i):
                acc += prod[i * b : (i + 1) * b, j * n : (j + 1) * n] << np.uint64(16 * (i + j))
    return acc.view(np.int64)


def _best_ms(f: Any, reps: int) -> float:
    f()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def micro_benchmarks(reps: int = 20) -> dict[str, Any]:
    """Ring matmul (784x128 weight) three ways, and DCF evaluation, best of ``reps``, 1 thread."""
    import torch

    torch.set_num_threads(1)
    from ppml.servers.mpc.fast import dcf
    from ppml.servers.mpc.fast.gates import GateParams
    from ppml.servers.mpc.fast.linear import ring_matmul
    from ppml.servers.mpc.fast.prg import FixedKeyPRG, KeyedPRG

    rng = KeyedPRG()
    w = rng.ring((784, 128))
    wl = _limbs(w, 1)
    out: dict[str, Any] = {}
    for batch in (1, BATCH):
        x = rng.ring((batch, 784))

        with np.errstate(over="ignore"):
            assert np.array_equal(limb_matmul(x, wl), x @ w) and np.array_equal(
                ring_matmul(x, w), x @ w
            )
            out[f"matmul_batch{batch}_ms"] = {
                "numpy_int64": _best_ms(lambda x=x: x @ w, reps),
                "torch_int64": _best_ms(lambda x=x: ring_matmul(x, w), reps),
                "float64_limbs": _best_ms(lambda x=x: limb_matmul(x, wl), reps),
            }
    depth = GateParams().depth
    prg = FixedKeyPRG()
    for n in (128, 8192):
        alpha = rng.uint64(n) & np.uint64((1 << depth) - 1)
        keys = dcf.gen(alpha, rng.ring((3, n)), depth, rng, prg)
        x = rng.uint64(n) & np.uint64((1 << depth) - 1)
        out[f"dcf_depth{depth}_width3_n{n}_ms"] = {
            "gen_both_keys": _best_ms(
                lambda a=alpha, n=n: dcf.gen(a, rng.ring((3, n)), depth, rng, prg), 3
            ),
            "eval_one_party": _best_ms(lambda k=keys[0], x=x: dcf.evaluate(k, x, prg), reps),
        }
    return out


def _summary(fast: dict[str, Any], raw: dict[str, Any] | None) -> str:
    b1, b64, off = fast["party0"]["batch1"], fast["party0"]["batch64"], fast["offline"]
    lines = [
        "fast engine, Network A, 2 party processes + dealer, AF_UNIX socket pair, 1 thread each",
        f"batch 1 : online p50 {b1['online_p50_ms']:.2f} ms, p95 {b1['online_p95_ms']:.2f} ms, "
        f"min {b1['online_min_ms']:.2f} ms, CPU p50 {b1['online_cpu_p50_ms']:.2f} ms; "
        f"party prepare p50 {b1['party_prepare_p50_ms']:.2f} ms; "
        f"dealer {off['batch1']['dealer_preprocess_p50_ms']:.2f} ms",
        f"batch 64: online p50 {b64['online_p50_ms']:.2f} ms ({b64['online_p50_ips']:.0f} img/s), "
        f"CPU p50 {b64['online_cpu_p50_ms']:.2f} ms, "
        f"back-to-back {b64['back_to_back_online_ips']:.0f} img/s; party prepare p50 "
        f"{b64['party_prepare_p50_ms']:.2f} ms; dealer "
        f"{off['batch64']['dealer_preprocess_p50_ms']:.1f} ms",
        f"online comm per party: batch 1 {b1['rounds']} rounds, {b1['bytes_sent']} B; "
        f"batch 64 {b64['rounds']} rounds, {b64['bytes_sent']} B",
        f"offline dealer->party bytes per image: batch 1 "
        f"{off['batch1']['bundle_bytes_per_party_per_image']:.0f} B, batch 64 "
        f"{off['batch64']['bundle_bytes_per_party_per_image']:.0f} B",
        f"max |encrypted - plaintext|: {fast['max_abs_err']:.2e}",
    ]
    if raw:
        r1, r64 = raw["batch1"], raw["batch64"]
        lines.append(
            f"raw CrypTen: batch 1 p50 {r1['p50_ms']:.2f} ms, {r1['rounds']} rounds, "
            f"{r1['bytes']} B; batch 64 {r64['throughput_ips']:.0f} img/s"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="batch-1 forwards")
    ap.add_argument("--m", type=int, default=20, help="batch-64 forwards")
    ap.add_argument(
        "--crypten-n", type=int, default=30, help="raw CrypTen batch-1 forwards (0: skip)"
    )
    ap.add_argument("--crypten-m", type=int, default=5, help="raw CrypTen batch-64 forwards")
    ap.add_argument("--json", default=None, help="write the result JSON here")
    ap.add_argument("--profile-party0", default=None, help="py-spy raw profile of party 0")
    ap.add_argument("--role", choices=["party"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--fd", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "party":
        _party_main(args.rank, args.fd, Path(args.dir), args.n, args.m)
        return
    load_before = os.getloadavg()[0]
    fast = run_fast(args.n, args.m, args.profile_party0)
    fast["micro"] = micro_benchmarks()
    fast["setting"]["loadavg_1min_before_after"] = [load_before, os.getloadavg()[0]]
    raw = None
    if args.crypten_n > 0:
        from raw_crypten import run_baseline

        raw = run_baseline(args.crypten_n, args.crypten_m)
    result = {"fast": fast, "raw_crypten": raw}
    print(json.dumps(result, indent=2))
    print(_summary(fast, raw))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
