"""The fast engine (ppml.servers.mpc.fast) alone on the BERT-tiny-like encoder.

Model: training/transformer.py's :func:`bert_tiny_like` (sequence 128,
hidden 128, 2 heads, FFN 512, 2 layers, 2 classes; inputs already embedded
tokens), random public weights (``torch.manual_seed(0)``), inputs N(0, 1)
(seed 1), exported with the SDK's ``export_model`` and mapped by
``fast_model`` exactly as a 2-server cluster serves it.

Setting as bench/fast_resnet.py: two party processes over an AF_UNIX socket
pair, one torch thread each; the dealer is the parent process, its bundles
handed over through files (not timed). Figures: batch-1 online latency (p50
of ``--n`` forwards after one warm-up) and each party's CPU time over it (p50 of
process time: less sensitive to a shared machine), rounds, online bytes per party,
dealer material (bundle bytes per party per request) and the dealer's time,
and the largest logit error against the float64 torch model.

Run::

    .venv/bin/python bench/fast_transformer.py --json bench/results/fast_transformer_run1.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread per process, before numpy/torch load BLAS

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_engine import SocketExchange, run_party_pair  # noqa: E402

SCALE = 1 << 16


def model_and_input() -> tuple[Any, Any, Any, dict[str, np.ndarray]]:
    """The torch model, one input, the fast model and the float64 weights (module doc)."""
    import torch

    from ppml.client.model_export import export_model
    from ppml.servers.mpc.fast.service.spec import fast_model
    from ppml.training.transformer import bert_tiny_like

    torch.manual_seed(0)  # public: benchmark weights, not secrets
    model = bert_tiny_like().eval()
    x = torch.randn(1, 128, 128, generator=torch.Generator().manual_seed(1))
    architecture, weights = export_model(model, x)
    fm = fast_model(architecture)
    if fm is None:
        raise RuntimeError("the fast engine does not map the model")
    return model, x, fm, weights


def _encode(a: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(a, dtype=np.float64) * SCALE).astype(np.int64)


def _party_main(rank: int, fd: int, workdir: Path, n: int) -> None:
    import torch

    torch.set_num_threads(1)
    from ppml.servers.mpc.fast.engine import Bundle, ModelSetup, PartyModel, forward, prepare

    _, _, fm, _ = model_and_input()
    ex = SocketExchange(socket.socket(fileno=fd))
    data = np.load(workdir / f"party{rank}.npz")
    setup = ModelSetup.from_bytes((workdir / f"setup{rank}.bin").read_bytes())
    ex.barrier()
    model = PartyModel.open(
        fm.spec,
        setup,
        [data[f"{i}.weight"] for i in fm.layer_index],
        [data.get(f"{i}.bias") for i in fm.layer_index],
        ex,
        [data[f"{i}.{name}"] for i, name in fm.params],
    )
    online, cpu, prep_ms, stats, y = [], [], [], None, None
    for i in range(n + 1):
        bundle = Bundle.from_bytes((workdir / f"bundle{rank}_{i}.bin").read_bytes())
        t0 = time.perf_counter()
        prep = prepare(model, bundle)
        prep_ms.append(1e3 * (time.perf_counter() - t0))
        ex.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        y, stats = forward(model, prep, data["x"], ex)
        online.append(1e3 * (time.perf_counter() - t0))
        cpu.append(1e3 * (time.process_time() - c0))
        del bundle, prep
    assert stats is not None and y is not None
    np.save(workdir / f"out{rank}.npy", y)
    res = {
        "online_ms": online[1:],
        "online_p50_ms": statistics.median(online[1:]),
        "online_cpu_p50_ms": statistics.median(cpu[1:]),
        "party_prepare_p50_ms": statistics.median(prep_ms),
        "rounds": stats.rounds,
        "bytes_sent": stats.bytes_sent,
    }
    (workdir / f"result{rank}.json").write_text(json.dumps(res))


def run(n: int, timeout_s: float = 1800.0) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from ppml.servers.mpc.fast.engine import Dealer
    from ppml.servers.mpc.fast.gates import split
    from ppml.servers.mpc.fast.graph import plan_of
    from ppml.servers.mpc.fast.prg import KeyedPRG, new_key

    model, x, fm, weights = model_and_input()
    rng = KeyedPRG()
    with tempfile.TemporaryDirectory(prefix="fast_transformer_") as tmp:
        work = Path(tmp)
        shares: list[dict[str, np.ndarray]] = [{}, {}]
        for name, value in [*weights.items(), ("x", x.numpy())]:
            for party, s in enumerate(split(_encode(value), rng)):
                shares[party][name] = s
        for party in (0, 1):
            np.savez(work / f"party{party}.npz", **shares[party])
        dealer, key = Dealer(), new_key()
        setups = dealer.model_setup(fm.spec, key)
        for party in (0, 1):
            (work / f"setup{party}.bin").write_bytes(setups[party].to_bytes())
        times, nbytes = [], 0
        for i in range(n + 1):
            t0 = time.perf_counter()
            pair = dealer.preprocess(fm.spec, key, 1)
            times.append(time.perf_counter() - t0)
            nbytes = pair[0].nbytes
            for party in (0, 1):
                (work / f"bundle{party}_{i}.bin").write_bytes(pair[party].to_bytes())
            del pair
        run_party_pair(__file__, ["--dir", tmp, "--n", str(n)], timeout_s)
        r0 = json.loads((work / "result0.json").read_text())
        r1 = json.loads((work / "result1.json").read_text())
        r0["online_cpu_p50_ms_party1"] = r1["online_cpu_p50_ms"]
        with np.errstate(over="ignore"):
            y = (np.load(work / "out0.npy") + np.load(work / "out1.npy")) / SCALE
    with torch.no_grad():
        ref = model.double()(x.double()).numpy()
    plan = plan_of(fm.spec)
    return {
        "setting": {
            "engine": "ppml.servers.mpc.fast (DAG plan)",
            "model": "bert_tiny_like: seq 128, hidden 128, 2 heads, FFN 512, 2 layers",
            "transport": "AF_UNIX socketpair, two party processes, 1 thread each",
            "n": n,
            "loadavg_1min": os.getloadavg()[0],
        },
        "plan_rounds": plan.rounds,
        "gate_instances": _gate_instances(plan),
        "dealer_preprocess_p50_s": statistics.median(times),
        "bundle_bytes_per_party": nbytes,
        "batch1": r0,
        "max_abs_logit_err": float(np.abs(y - ref).max()),
        "logits": y.tolist(),
        "reference": ref.tolist(),
    }


def _gate_instances(plan: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for g in plan.gates:
        out[g.kind] = out.get(g.kind, 0) + g.per_sample
    return out


def _summary(r: dict[str, Any]) -> str:
    b1 = r["batch1"]
    return "\n".join(
        [
            "fast engine, BERT-tiny-like (128 x 128, 2 heads, FFN 512, 2 layers), 2 parties",
            f"batch 1: online p50 {b1['online_p50_ms']:.0f} ms, {b1['rounds']} rounds, "
            f"{b1['bytes_sent'] / 1e6:.2f} MB sent per party; party prepare "
            f"{b1['party_prepare_p50_ms']:.0f} ms",
            f"online CPU per party (p50, process time): {b1['online_cpu_p50_ms']:.0f} ms, "
            f"{b1['online_cpu_p50_ms_party1']:.0f} ms",
            f"dealer material per party per request: {r['bundle_bytes_per_party'] / 1e6:.1f} MB;"
            f" dealer time {r['dealer_preprocess_p50_s']:.2f} s",
            f"max |encrypted - float64| logit: {r['max_abs_logit_err']:.2e}",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3, help="timed batch-1 forwards (after 1 warm-up)")
    ap.add_argument("--json", default=None, help="write the result JSON here")
    ap.add_argument("--role", choices=["party"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--fd", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "party":
        _party_main(args.rank, args.fd, Path(args.dir), args.n)
        return
    result = run(args.n)
    shown = {k: v for k, v in result.items() if k not in ("logits", "reference")}
    print(json.dumps(shown, indent=2))
    print(_summary(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
