"""Raw CrypTen SPMD baseline for a ResNet-20-shaped CIFAR network (no gRPC, no service).

Two compute parties plus CrypTen's trusted third party (the TTP dealer), as
separate OS processes on loopback (:func:`raw_crypten.launch_spmd`). The
model is ``training/resnet.py``'s :func:`resnet20` with public random
weights (seed 0; BatchNorm at its initial statistics), exported to ONNX
(``dynamo=False``) and imported with ``crypten.nn.from_onnx``: CrypTen's own
path, with none of ppml's code between. Inputs are secret-shared before the
timed region. Party 0 times batch-1 forwards (p50) and batch-``B`` forwards
(throughput) and counts rounds and bytes as CrypTen does.

Run it::

    .venv/bin/python bench/raw_crypten_resnet.py --n 3 --m 1 --batch 16 --json out.json

or call :func:`run_resnet_baseline` from another benchmark script.
"""

from __future__ import annotations

import io
import statistics
import time
from pathlib import Path
from typing import Any

from raw_crypten import WORLD_SIZE, _comm, _setup, launch_spmd, spmd_main

WARMUP = 1
IMAGE = (3, 32, 32)


def resnet20_onnx() -> bytes:
    """ResNet-20 with public random weights (seed 0), as ONNX bytes (eval mode)."""
    import torch

    from ppml.training.resnet import resnet20

    torch.manual_seed(0)  # public: benchmark weights, not secrets
    model = resnet20().eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (torch.zeros(1, *IMAGE),), buffer, dynamo=False, opset_version=17,
        input_names=["input"], output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )  # fmt: skip
    return _without_identities(buffer.getvalue())


def _without_identities(data: bytes) -> bytes:
    """The same graph with its ``Identity`` nodes bypassed (CrypTen's importer lacks the op)."""
    import onnx

    model = onnx.load_from_string(data)
    graph = model.graph
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    outputs = {o.name for o in graph.output}
    if alias.keys() & outputs:
        raise ValueError("an Identity computes the graph output")
    keep = [n for n in graph.node if n.op_type != "Identity"]
    for node in keep:
        for i, name in enumerate(node.input):
            while name in alias:
                name = alias[name]
            node.input[i] = name
    del graph.node[:]
    graph.node.extend(keep)
    return model.SerializeToString()


def _party_main(rank: int, n: int, m: int, batch: int, out: str) -> None:
    """Compute party: run the benchmark in lockstep; party 0 times it."""
    import json

    import torch

    crypten = _setup()
    crypten.init()
    try:
        model = crypten.nn.from_onnx(io.BytesIO(resnet20_onnx()))
        model.encrypt(src=0)
        model.eval()
        torch.manual_seed(1234 + rank)
        x1 = crypten.cryptensor(torch.rand(1, *IMAGE), src=0)
        xb = crypten.cryptensor(torch.rand(batch, *IMAGE), src=0)
        with crypten.no_grad():
            for _ in range(WARMUP):
                model(x1)
            crypten.reset_communication_stats()
            model(x1)
            rounds1, bytes1 = _comm(crypten)
            lat1 = []
            for _ in range(n):
                t0 = time.perf_counter()
                y1 = model(x1)
                lat1.append(time.perf_counter() - t0)
            crypten.reset_communication_stats()
            t0 = time.perf_counter()
            for _ in range(m):
                yb = model(xb)
            wall = time.perf_counter() - t0
            roundsb, bytesb = _comm(crypten)
        assert tuple(y1.get_plain_text().shape) == (1, 10)
        assert tuple(yb.get_plain_text().shape) == (batch, 10)
        res = {
            "setting": {"parties": WORLD_SIZE, "provider": "TTP", "n": n, "m": m, "batch": batch,
                        "threads": torch.get_num_threads(), "model": "resnet20 (3x32x32)"},
            "batch1": {"p50_ms": 1e3 * statistics.median(lat1), "rounds": rounds1,
                       "bytes": bytes1},
            "batch": {"p50_ms": 1e3 * wall / m, "throughput_ips": batch * m / wall,
                      "rounds": roundsb // m, "bytes": bytesb // m},
        }  # fmt: skip
        Path(f"{out}.rank{rank}").write_text(json.dumps(res))
    finally:
        crypten.uninit()


def run_resnet_baseline(n: int = 3, m: int = 1, batch: int = 16, timeout_s: float = 3600.0) -> dict:
    """Launch TTP + 2 parties, run the benchmark, return party 0's figures."""
    script = str(Path(__file__).resolve())
    args = ["--n", str(n), "--m", str(m), "--batch", str(batch)]
    res, _ = launch_spmd(script, args, timeout_s, prefix="raw_crypten_resnet_")
    return res


def summary(r: dict[str, Any]) -> str:
    b1, bb, s = r["batch1"], r["batch"], r["setting"]
    return "\n".join(
        [
            f"raw CrypTen, {s['model']}, {s['parties']} parties + {s['provider']}, "
            f"{s['threads']} thread(s)/process",
            f"batch 1 (n={s['n']}): p50 {b1['p50_ms']:.0f} ms, {b1['rounds']} rounds, "
            f"{b1['bytes'] / 1e6:.1f} MB (party 0)",
            f"batch {s['batch']} (m={s['m']}): {bb['p50_ms']:.0f} ms/batch, "
            f"{bb['throughput_ips']:.2f} img/s, {bb['rounds']} rounds, {bb['bytes'] / 1e6:.1f} MB",
        ]
    )


def main() -> None:
    spmd_main(
        __doc__ or "",
        [
            ("n", 3, "batch-1 forwards"),
            ("m", 1, "batch forwards"),
            ("batch", 16, "images per batch forward"),
        ],
        _party_main,
        run_resnet_baseline,
        summary,
    )


if __name__ == "__main__":
    main()
