"""The fast engine (ppml.servers.mpc.fast) alone on a ResNet-20-shaped CIFAR network.

Network: 3x32x32 input, stem Conv2d(3, 16, 3) + ReLU, three stages of three
basic blocks (16, 32, 64 channels; the first block of stages 2 and 3 has
stride 2 and a 1x1 stride-2 shortcut conv), global AvgPool 8x8, Flatten,
Linear(64, 10): 52 nodes, 19 + 2 weighted layers. BatchNorm is taken as
folded into the convolutions. Random public weights (``torch.Generator``
seed 0, N(0, 1/fan_in), a block's second conv halved) so activations stay
O(1); inputs uniform in [-1, 1).

Setting as bench/fast_engine.py: two party processes over an AF_UNIX socket
pair, one torch thread each; the dealer is the parent process, its bundles
handed over through files (not timed). Figures: batch-1 online latency
(p50 of ``--n`` forwards after one warm-up), batch-16 online throughput
(``--m`` forwards), rounds, online bytes per party per image, dealer
material (bundle bytes per party per image) and the dealer's time, and the
largest error against a float64 forward of the same fixed-point weights.

Run::

    .venv/bin/python bench/fast_resnet.py --json bench/results/fast_resnet_run1.json
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
from typing import Any, cast

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread per process, before numpy/torch load BLAS

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_engine import SocketExchange, run_party_pair  # noqa: E402

SCALE = 1 << 16
BATCH = 16


def resnet20() -> Any:
    """The ResNet-20-shaped spec (module doc)."""
    from ppml.servers.mpc.fast.linear import Conv2d, Linear
    from ppml.servers.mpc.fast.nodes import Add, AvgPool, Flatten, ModelSpec, ReLU

    layers: list[Any] = [Conv2d(3, 16, 3, (32, 32), padding=1), ReLU()]
    inputs: list[tuple[int, ...]] = [(-1,), (0,)]
    x, c, hw = 1, 16, 32
    for width, first_stride in ((16, 1), (32, 2), (64, 2)):
        for block in range(3):
            s = first_stride if block == 0 else 1
            b = len(layers)
            layers += [Conv2d(c, width, 3, (hw, hw), s, 1), ReLU()]
            layers.append(Conv2d(width, width, 3, (hw // s, hw // s), 1, 1))
            inputs += [(x,), (b,), (b + 1,)]
            shortcut = x
            if s != 1 or c != width:
                layers.append(Conv2d(c, width, 1, (hw, hw), s, 0))
                inputs.append((x,))
                shortcut = len(layers) - 1
            layers += [Add(), ReLU()]
            inputs += [(b + 2, shortcut), (len(layers) - 2,)]
            x, c, hw = len(layers) - 1, width, hw // s
    layers += [AvgPool(8, 8), Flatten(), Linear(64, 10)]
    inputs += [(x,), (x + 1,), (x + 2,)]
    return ModelSpec(tuple(layers), (3, 32, 32), inputs=tuple(inputs))


def _params(spec: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Public weights on the fixed-point grid (module doc), float64, per weighted layer."""
    import torch

    from ppml.servers.mpc.fast.linear import Conv2d

    g = torch.Generator().manual_seed(0)
    out = []
    for i, op in enumerate(spec.weighted):
        fan_in = int(np.prod(op.weight_shape[1:]))
        w = torch.randn(op.weight_shape, generator=g, dtype=torch.float64) / np.sqrt(fan_in)
        second = isinstance(op, Conv2d) and i > 0 and isinstance(spec.weighted[i - 1], Conv2d)
        if second and op.in_channels == op.out_channels and op.kernel_size == 3:
            w = w * 0.5
        b = torch.randn(op.weight_shape[0], generator=g, dtype=torch.float64) * 0.01
        out.append((np.rint(w.numpy() * SCALE) / SCALE, np.rint(b.numpy() * SCALE) / SCALE))
    return out


def plain_forward(spec: Any, params: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> Any:
    """float64 forward of ``spec`` with torch (the reference)."""
    import torch
    import torch.nn.functional as tf

    from ppml.servers.mpc.fast.linear import Conv2d, Linear
    from ppml.servers.mpc.fast.nodes import Add, AvgPool, Flatten, ReLU

    values: dict[int, Any] = {-1: torch.from_numpy(x)}
    weights = iter(params)
    peak = 0.0
    for i, node in enumerate(spec.layers):
        a = values[spec.sources(i)[0]]
        if isinstance(node, Linear | Conv2d):
            w, b = (torch.from_numpy(t) for t in next(weights))
            y = (
                tf.linear(a.reshape(a.shape[0], -1), w, b)
                if isinstance(node, Linear)
                else tf.conv2d(a, w, b, stride=node.stride, padding=node.padding)
            )
        elif isinstance(node, ReLU):
            y = torch.relu(a)
        elif isinstance(node, Flatten):
            y = a.reshape(a.shape[0], -1)
        elif isinstance(node, Add):
            y = a + values[spec.sources(i)[1]]
        elif isinstance(node, AvgPool):
            y = tf.avg_pool2d(a, node.kernel, node.stride)
        else:
            y = tf.max_pool2d(a, node.kernel, node.stride)
        values[i] = y
        peak = max(peak, float(y.abs().max()))
    return values[len(spec.layers) - 1].numpy(), peak


def _party_main(rank: int, fd: int, workdir: Path, n: int, m: int) -> None:
    import torch

    torch.set_num_threads(1)
    from ppml.servers.mpc.fast.engine import Bundle, ModelSetup, PartyModel, forward, prepare

    spec = resnet20()
    ex = SocketExchange(socket.socket(fileno=fd))
    data = np.load(workdir / f"party{rank}.npz")
    count = len(spec.weighted)
    setup = ModelSetup.from_bytes((workdir / f"setup{rank}.bin").read_bytes())
    ex.barrier()
    model = PartyModel.open(
        spec,
        setup,
        [data[f"w{i}"] for i in range(count)],
        [data[f"b{i}"] for i in range(count)],
        ex,
    )
    res: dict[str, Any] = {}
    outputs: dict[str, np.ndarray] = {}
    for batch, runs in ((1, n + 1), (BATCH, m)):
        online, prep_ms, stats = [], [], None
        for i in range(runs):
            bundle = Bundle.from_bytes((workdir / f"bundle{rank}_{batch}_{i}.bin").read_bytes())
            t0 = time.perf_counter()
            prep = prepare(model, bundle)
            prep_ms.append(1e3 * (time.perf_counter() - t0))
            ex.barrier()
            t0 = time.perf_counter()
            y, stats = forward(model, prep, data[f"x{batch}"], ex)
            online.append(1e3 * (time.perf_counter() - t0))
            outputs[f"y{batch}"] = y
            del bundle, prep
        assert stats is not None
        timed = online[1:] if batch == 1 else online
        res[f"batch{batch}"] = {
            "online_ms": timed,
            "online_p50_ms": statistics.median(timed),
            "party_prepare_p50_ms": statistics.median(prep_ms),
            "rounds": stats.rounds,
            "bytes_sent": stats.bytes_sent,
        }
    np.savez(workdir / f"out{rank}.npz", **cast(dict[str, Any], outputs))
    (workdir / f"result{rank}.json").write_text(json.dumps(res))


def run(n: int, m: int, timeout_s: float = 1800.0) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from ppml.servers.mpc.fast.engine import Dealer
    from ppml.servers.mpc.fast.gates import split
    from ppml.servers.mpc.fast.graph import plan_of
    from ppml.servers.mpc.fast.prg import KeyedPRG, new_key

    spec, rng = resnet20(), KeyedPRG()
    params = _params(spec)
    inputs = np.random.default_rng(0).uniform(-1, 1, size=(BATCH, 3, 32, 32))  # public data
    xs = {1: np.rint(inputs[:1] * SCALE) / SCALE, BATCH: np.rint(inputs * SCALE) / SCALE}
    with tempfile.TemporaryDirectory(prefix="fast_resnet_") as tmp:
        work = Path(tmp)
        shares: list[dict[str, np.ndarray]] = [{}, {}]
        named = [(f"w{i}", p[0]) for i, p in enumerate(params)]
        named += [(f"b{i}", p[1]) for i, p in enumerate(params)]
        named += [(f"x{b}", x) for b, x in xs.items()]
        for name, value in named:
            for party, s in enumerate(split(np.rint(value * SCALE).astype(np.int64), rng)):
                shares[party][name] = s
        for party in (0, 1):
            np.savez(work / f"party{party}.npz", **cast(dict[str, Any], shares[party]))
        dealer, key = Dealer(), new_key()
        setups = dealer.model_setup(spec, key)
        for party in (0, 1):
            (work / f"setup{party}.bin").write_bytes(setups[party].to_bytes())
        offline: dict[str, Any] = {}
        for batch, runs in ((1, n + 1), (BATCH, m)):
            times, nbytes = [], 0
            for i in range(runs):
                t0 = time.perf_counter()
                pair = dealer.preprocess(spec, key, batch)
                times.append(time.perf_counter() - t0)
                nbytes = pair[0].nbytes
                for party in (0, 1):
                    (work / f"bundle{party}_{batch}_{i}.bin").write_bytes(pair[party].to_bytes())
                del pair
            offline[f"batch{batch}"] = {
                "dealer_preprocess_p50_s": statistics.median(times),
                "bundle_bytes_per_party_per_image": nbytes / batch,
            }
        run_party_pair(__file__, ["--dir", tmp, "--n", str(n), "--m", str(m)], timeout_s)
        r0 = json.loads((work / "result0.json").read_text())
        o0, o1 = (np.load(work / f"out{b}.npz") for b in (0, 1))
        err, peak = 0.0, 0.0
        for batch, x in xs.items():
            with np.errstate(over="ignore"):
                y = (o0[f"y{batch}"] + o1[f"y{batch}"]).astype(np.float64) / SCALE
            ref, top = plain_forward(spec, params, x)
            err, peak = max(err, float(np.abs(y - ref).max())), max(peak, top)
    b1, b16 = r0["batch1"], r0[f"batch{BATCH}"]
    return {
        "setting": {
            "engine": "ppml.servers.mpc.fast (DAG plan)",
            "model": "ResNet-20 shape, CIFAR 3x32x32, 52 nodes",
            "transport": "AF_UNIX socketpair, two party processes, 1 thread each",
            "n": n,
            "m": m,
            "depth": spec.params.depth,
            "frac_bits": spec.params.frac_bits,
            "loadavg_1min": os.getloadavg()[0],
        },
        "plan_rounds": plan_of(spec).rounds,
        "offline": offline,
        "batch1": {**b1, "bytes_sent_per_image": b1["bytes_sent"]},
        f"batch{BATCH}": {
            **b16,
            "bytes_sent_per_image": b16["bytes_sent"] / BATCH,
            "online_p50_ips": BATCH / (b16["online_p50_ms"] / 1e3),
        },
        "max_abs_err": err,
        "max_abs_activation": peak,
    }


def _summary(r: dict[str, Any]) -> str:
    b1, b16, off = r["batch1"], r[f"batch{BATCH}"], r["offline"]
    return "\n".join(
        [
            "fast engine, ResNet-20 shape (CIFAR), 2 party processes + dealer, 1 thread each",
            f"batch 1 : online p50 {b1['online_p50_ms']:.0f} ms, {b1['rounds']} rounds, "
            f"{b1['bytes_sent_per_image'] / 1e6:.2f} MB sent per party",
            f"batch {BATCH}: online p50 {b16['online_p50_ms']:.0f} ms = "
            f"{b16['online_p50_ips']:.2f} img/s, {b16['bytes_sent_per_image'] / 1e6:.2f} MB "
            "sent per party per image",
            f"dealer material per party per image: "
            f"{off['batch1']['bundle_bytes_per_party_per_image'] / 1e6:.1f} MB; dealer time "
            f"{off['batch1']['dealer_preprocess_p50_s']:.2f} s per image at batch 1, "
            f"{off[f'batch{BATCH}']['dealer_preprocess_p50_s']:.1f} s at batch {BATCH}",
            f"max |encrypted - float64|: {r['max_abs_err']:.2e} "
            f"(largest activation {r['max_abs_activation']:.2f})",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3, help="timed batch-1 forwards (after 1 warm-up)")
    ap.add_argument("--m", type=int, default=1, help=f"timed batch-{BATCH} forwards")
    ap.add_argument("--json", default=None, help="write the result JSON here")
    ap.add_argument("--role", choices=["party"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--fd", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "party":
        _party_main(args.rank, args.fd, Path(args.dir), args.n, args.m)
        return
    result = run(args.n, args.m)
    print(json.dumps(result, indent=2))
    print(_summary(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
