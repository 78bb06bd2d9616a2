"""A BERT-tiny-shaped transformer encoder served by ppml on 2 servers (fast engine) and 3 (CrypTen).

The model is ``training/transformer.py``'s :func:`bert_tiny_like` (sequence
128, hidden 128, 2 heads, FFN 512, 2 encoder layers, mean pooling, 2
classes) with public random weights (seed 0); inputs are standard normal
``(128, 128)`` token embeddings. Through the service
(:class:`~ppml.client.deploy.local.LocalCluster`, TLS, SDK) with 2 servers +
dealer and with 3 servers + dealer: the model is shared through the SDK,
then ``--n`` sequential single-sequence requests (p50, p95, the servers' own
rounds and bytes per job) and the largest logit error against plaintext. On
2 servers the fast engine serves it, one sequence's dealer material (about
2.2 M values) per dealer reply: the plain requests wait for that material to
be made and sent; the pool-warm ones (2 servers) are each sent once both
servers pooled one sequence's material and run no job (idle), alternating
with ones sent as soon as the pools hold material, while a refill may still
run (``resnet_serving.py``, ``_pool_warm_latency``). 3-server clusters
serve it on CrypTen. First, in the same run, the raw CrypTen baseline
of the same model (:mod:`transformer_layers`: 2 parties + TTP, plain CrypTen
SPMD, no service; ``--skip-raw`` leaves it out). The layers' own errors:
``bench/transformer_layers.py``.

Run: ``.venv/bin/python bench/transformer_serving.py --n 3 --json
bench/results/transformer_serving_run2.json``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from network_a import _latency
from resnet_serving import _pool_warm_latency
from transformer_layers import run as run_layers

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.training.transformer import bert_tiny_like

SEQ, HIDDEN = 128, 128


def run_service(parties: int, n: int) -> dict[str, Any]:
    """Share the model through the SDK on a local cluster; time single-sequence requests."""
    torch.manual_seed(0)  # public: benchmark weights, not secrets
    model = bert_tiny_like(seq=SEQ, hidden=HIDDEN).eval()
    x = torch.randn(max(n, 1), SEQ, HIDDEN, generator=torch.Generator().manual_seed(1))
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(parties, Path(tmp) / "c") as local,
        Cluster.from_config(local.config_path, timeout=3600.0) as cluster,
    ):
        started = time.perf_counter()
        model_id = cluster.share_model(model, x[:1], name="bert-tiny-like")
        share_s = time.perf_counter() - started
        layers = len(cluster.get_model(model_id).architecture.layers)
        warm = cluster.predict(model_id, x[:1])
        with torch.no_grad():
            error = float((warm - model(x[:1])).abs().max())
        single = _latency(cluster, model_id, x, n)
        warm_pool = _pool_warm_latency(local, cluster, model_id, x, n) if parties == 2 else None
    return {
        "parties": parties,
        "layers": layers,
        "share_model_s": share_s,
        "max_abs_error_vs_plaintext": error,
        "single": single,
        "single_pool_warm": warm_pool,
    }


def summary(result: dict[str, Any]) -> str:
    lines = []
    raw = result.get("raw_crypten")
    if raw is not None:
        lines.append(
            f"raw CrypTen (2 parties + TTP, no service), batch 1: {1e3 * raw['seconds']:,.0f} ms, "
            f"{raw['rounds']:,} rounds, {raw['bytes'] / 1e6:,.1f} MB sent by party 0"
        )
    for key in ("two_servers", "three_servers"):
        r = result.get(key)
        if r is None:
            continue
        s = r["single"]
        lines.append(
            f"{r['parties']} servers + dealer ({r['layers']} layers): single p50 "
            f"{s['p50_ms']:,.0f} ms (p95 {s['p95_ms']:,.0f}), {s['rounds']:,.0f} rounds and "
            f"{s['bytes'] / 1e6:,.1f} MB per job, share_model {r['share_model_s']:.1f} s, "
            f"max logit error {r['max_abs_error_vs_plaintext']:.1e}"
        )
        if r.get("single_pool_warm"):
            w = r["single_pool_warm"]
            lines.append(
                f"  pool warm (material made in idle time): single p50 {w['p50_ms']:,.0f} ms "
                f"(waited {w['refill_wait_s']:.1f} s for the refill); sent while a refill "
                f"still runs: {w['busy_p50_ms']:,.0f} ms"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=3, help="sequential single-sequence requests")
    ap.add_argument("--json", default=None, help="write the result JSON here")
    ap.add_argument("--skip-raw", action="store_true", help="no raw CrypTen baseline")
    ap.add_argument("--parties", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    args = ap.parse_args()
    if args.n < 1:
        ap.error("--n must be at least 1")
    torch.set_num_threads(1)
    result: dict[str, Any] = {
        "load_average_start": list(os.getloadavg()),
        "raw_crypten": None if args.skip_raw else run_layers(1)["bert"],
        "two_servers": run_service(2, args.n) if 2 in args.parties else None,
        "three_servers": run_service(3, args.n) if 3 in args.parties else None,
        "load_average_end": list(os.getloadavg()),
    }
    print(summary(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
