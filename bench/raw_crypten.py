"""Raw CrypTen SPMD baseline for SecureML "Network A" (no gRPC, no service).

Two compute parties plus CrypTen's trusted third party (the TTP "dealer") run
as separate OS processes on loopback. Party 0 times encrypted forward passes of
Linear(784, 128) -> ReLU -> Linear(128, 128) -> ReLU -> Linear(128, 10) on
inputs that are secret-shared *before* the timed region (the ppml service
receives inputs already shared), and counts MPC communication as CrypTen does.

Run it::

    .venv/bin/python bench/raw_crypten.py --n 200 --m 30 --json out.json

or call :func:`run_baseline` from another benchmark script.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORLD_SIZE = 2
WARMUP = 5
BATCH = 64


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``xs``."""
    ys = sorted(xs)
    k = max(0, min(len(ys) - 1, round(q / 100 * len(ys) + 0.5) - 1))
    return ys[k]


def _setup() -> Any:
    """Configure torch/CrypTen for this process and return the crypten module."""
    import torch

    torch.set_num_threads(1)
    from ppml.servers.mpc.core.crypten_compat import crypten

    crypten.cfg.mpc.provider = "TTP"
    crypten.cfg.communicator.verbose = True
    return crypten


def _ttp_main() -> None:
    """Dealer process: serve Beaver triples etc. until party 0 sends "terminate"."""
    import torch

    crypten = _setup()
    from ppml.servers.mpc.core.crypten_compat import csprng_seed

    # TTPServer draws the per-party PRSS seeds from torch's default generator.
    torch.manual_seed(csprng_seed())
    crypten.mpc.provider.ttp_provider.TTPServer()  # returns on "terminate"


def _comm(crypten: Any) -> tuple[int, int]:
    """(rounds, bytes) counted by this party's communicator since the last reset."""
    c = crypten.communicator.get()
    return int(c.comm_rounds), int(c.comm_bytes)


def _party_main(rank: int, n: int, m: int, out: str) -> None:
    """Compute party: run the benchmark in lockstep; party 0 times it."""
    import torch

    crypten = _setup()
    crypten.init()
    try:
        torch.manual_seed(1234 + rank)
        model = crypten.nn.Sequential(
            crypten.nn.Linear(784, 128),
            crypten.nn.ReLU(),
            crypten.nn.Linear(128, 128),
            crypten.nn.ReLU(),
            crypten.nn.Linear(128, 10),
        )
        model.encrypt(src=0)
        model.eval()
        x1 = crypten.cryptensor(torch.rand(1, 784), src=0)
        x64 = crypten.cryptensor(torch.rand(BATCH, 784), src=0)
        with crypten.no_grad():
            for _ in range(WARMUP):
                model(x1)
                model(x64)

            crypten.reset_communication_stats()
            model(x1)
            rounds1, bytes1 = _comm(crypten)
            crypten.reset_communication_stats()
            model(x64)
            rounds64, bytes64 = _comm(crypten)

            lat1: list[float] = []
            t_start = time.perf_counter()
            for _ in range(n):
                t0 = time.perf_counter()
                y1 = model(x1)
                lat1.append(time.perf_counter() - t0)
            wall1 = time.perf_counter() - t_start

            lat64: list[float] = []
            t_start = time.perf_counter()
            for _ in range(m):
                t0 = time.perf_counter()
                y64 = model(x64)
                lat64.append(time.perf_counter() - t0)
            wall64 = time.perf_counter() - t_start

            lat_share: list[float] = []
            for _ in range(n):
                raw = torch.rand(1, 784)
                t0 = time.perf_counter()
                model(crypten.cryptensor(raw, src=0))
                lat_share.append(time.perf_counter() - t0)

        out1, out64 = y1.get_plain_text(), y64.get_plain_text()
        assert out1.shape == (1, 10) and out64.shape == (BATCH, 10), (out1.shape, out64.shape)
        ms = [1e3 * t for t in lat1]
        res = {
            "setting": {
                "parties": WORLD_SIZE,
                "provider": "TTP",
                "threads": torch.get_num_threads(),
                "backend": "gloo",
                "transport": "loopback",
                "n": n,
                "m": m,
            },
            "batch1": {
                "p50_ms": statistics.median(ms),
                "p95_ms": _percentile(ms, 95),
                "mean_ms": statistics.fmean(ms),
                "throughput_ips": n / wall1,
                "rounds": rounds1,
                "bytes": bytes1,
            },
            "batch64": {
                "p50_ms": 1e3 * statistics.median(lat64),
                "throughput_ips": BATCH * m / wall64,
                "rounds": rounds64,
                "bytes": bytes64,
            },
            "with_input_sharing": {"p50_ms": 1e3 * statistics.median(lat_share)},
        }
        # Party 1 sees no dealer traffic; keep its view too, for comparison.
        Path(f"{out}.rank{rank}").write_text(json.dumps(res))
    finally:
        crypten.uninit()  # party 0 also sends "terminate" to the TTP here


def launch_spmd(
    script: str, args: list[str], timeout_s: float, prefix: str = "raw_crypten_"
) -> list[dict]:
    """Run ``script`` as CrypTen's TTP + :data:`WORLD_SIZE` parties on loopback.

    Every process runs ``script --role ttp|party --rank R --out OUT *args``
    with one OpenMP thread and gloo over a fresh loopback rendezvous; party
    ``R`` must write its result JSON to ``OUT.rankR``. Returns those results
    in rank order, or raises with the failed processes' log tails.
    """
    port = _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        out = os.path.join(tmp, "result.json")
        logs = []
        try:
            for rank in (*range(WORLD_SIZE), WORLD_SIZE):
                env = dict(os.environ)
                env.update(
                    RANK=str(rank),
                    WORLD_SIZE=str(WORLD_SIZE),
                    RENDEZVOUS=f"tcp://127.0.0.1:{port}",
                    DISTRIBUTED_BACKEND="gloo",
                    OMP_NUM_THREADS="1",
                )
                role = ["--role", "ttp"] if rank == WORLD_SIZE else ["--role", "party"]
                cmd = [sys.executable, script, *role, "--rank", str(rank), "--out", out, *args]
                log = open(os.path.join(tmp, f"log{rank}.txt"), "wb")  # noqa: SIM115
                logs.append(log)
                procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + timeout_s
            for p in procs:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            bad = [i for i, p in enumerate(procs) if p.returncode != 0]
            if bad:
                tails = {i: Path(tmp, f"log{i}.txt").read_text()[-2000:] for i in bad}
                raise RuntimeError(f"processes {bad} failed: {tails}")
            return [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(WORLD_SIZE)]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for log in logs:
                log.close()


def run_baseline(n: int = 200, m: int = 30, timeout_s: float = 1200.0) -> dict:
    """Launch TTP + 2 parties as subprocesses, run the benchmark, return party 0's figures."""
    script = str(Path(__file__).resolve())
    res, p1 = launch_spmd(script, ["--n", str(n), "--m", str(m)], timeout_s)
    for key in ("batch1", "batch64"):
        res[key]["rounds_party1"] = p1[key]["rounds"]
        res[key]["bytes_party1"] = p1[key]["bytes"]
    return res


def _summary(r: dict) -> str:
    """Human-readable summary of :func:`run_baseline`'s result."""
    b1, b64, s = r["batch1"], r["batch64"], r["setting"]
    return "\n".join(
        [
            f"raw CrypTen, Network A, {s['parties']} parties + {s['provider']}, "
            f"{s['threads']} thread(s)/process, {s['backend']} over {s['transport']}",
            f"batch 1  (n={s['n']}): p50 {b1['p50_ms']:.2f} ms, p95 {b1['p95_ms']:.2f} ms, "
            f"mean {b1['mean_ms']:.2f} ms, {b1['throughput_ips']:.1f} img/s",
            f"batch 64 (m={s['m']}): p50 {b64['p50_ms']:.2f} ms/batch, "
            f"{b64['throughput_ips']:.1f} img/s",
            f"comm/forward (party 0): batch 1 {b1['rounds']} rounds, {b1['bytes']} B; "
            f"batch 64 {b64['rounds']} rounds, {b64['bytes']} B",
            f"comm/forward (party 1): batch 1 {b1['rounds_party1']} rounds, "
            f"{b1['bytes_party1']} B; batch 64 {b64['rounds_party1']} rounds, "
            f"{b64['bytes_party1']} B",
            f"batch 1 incl. input sharing: p50 {r['with_input_sharing']['p50_ms']:.2f} ms",
        ]
    )


def spmd_main(
    doc: str,
    options: list[tuple[str, int, str]],
    party_main: Callable[..., None],
    run: Callable[..., dict],
    summary: Callable[[dict], str],
) -> None:
    """The CLI of an SPMD baseline: run it, or (internally) one of its processes.

    ``options`` are ``(name, default, help)`` of the integer settings, passed
    positionally to ``party_main(rank, *settings, out)`` and ``run(*settings)``.
    """
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, default, text in options:
        ap.add_argument(f"--{name}", type=int, default=default, help=text)
    ap.add_argument("--json", default=None, help="write the result JSON here")
    ap.add_argument("--role", choices=["party", "ttp"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    settings = [getattr(args, name) for name, _, _ in options]
    if args.role == "ttp":
        _ttp_main()
    elif args.role == "party":
        party_main(args.rank, *settings, args.out)
    else:
        res = run(*settings)
        print(summary(res))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
            print(f"wrote {args.json}")


def main() -> None:
    spmd_main(
        __doc__ or "",
        [("n", 200, "batch-1 forwards"), ("m", 30, "batch-64 forwards")],
        _party_main,
        run_baseline,
        _summary,
    )


if __name__ == "__main__":
    main()
