"""Wrap-safe clipping vs the clipping it replaced: one DP aggregation and one DP-SGD step.

Both run on CrypTen between 2 parties + TTP (:func:`raw_crypten.launch_spmd`:
gloo on loopback, one thread each), on the same shares:

* *unchecked*: the code before issue 18 finding 2 (squares of unchecked
  coordinates, the staged inverse square root, no range checks), copied
  below as the baseline;
* *ppml*: :func:`ppml.servers.mpc.core.clipping.clipped_rows` (DP-FedAvg) and
  :func:`ppml.servers.mpc.training.dpsgd.clipped_gradient_sums` (DP-SGD): coordinates
  and squared norms range-checked, out-of-range rows dropped.

Sizes: ``--updates`` participants' updates of a 784-128-10 MLP (101,770
parameters) clipped and summed; one DP-SGD step's clipped gradient sums of
the same MLP on a batch of ``--batch`` rows. Per method: party 0's median
time over ``--runs`` runs, rounds and bytes it sent.

Run: ``.venv/bin/python bench/clipping.py --runs 3 --json bench/results/clipping_run1.json``
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from raw_crypten import _comm, _setup, launch_spmd, spmd_main

SIZES = (784, 128, 10)


def _unchecked(crypten: Any) -> tuple[Any, Any]:
    """The clipping before the range checks: (rows clipper, DP-SGD gradient sums)."""
    import torch

    from ppml.servers.mpc.core.clipping import CLIP_MARGIN, STAGE_SCALES
    from ppml.servers.mpc.training import dpsgd

    def weights(s: Any, clip_norm: float) -> Any:
        bound2 = (clip_norm * (1 - CLIP_MARGIN)) ** 2
        stages = crypten.stack([s.div(64**j) if j else s for j in range(6)])
        roots = stages.mul(1.0 / bound2).inv_sqrt()
        thresholds = torch.tensor([bound2 * 64.0**j for j in range(6)]).unsqueeze(1)
        above = crypten.stack([s] * 6).gt(thresholds)
        chosen = above - crypten.cat([above[1:], above[:1] * 0])
        selectors = crypten.cat([1 - above[:1], chosen])
        return selectors * crypten.cat([roots[:1] * 0 + 1, roots])

    def clip(delta: Any, w: Any) -> Any:
        products = w.unsqueeze(2) * delta.unsqueeze(0)
        return products.mul(torch.tensor(STAGE_SCALES).reshape(-1, 1, 1)).sum(0)

    def rows(x: Any, clip_norm: float) -> Any:
        return clip(x, weights(x.square().sum(1), clip_norm))

    def sums(kinds: Any, modules: Any, x: Any, target: Any, loss: str, clip_norm: float) -> Any:
        with crypten.no_grad():
            output, tape = dpsgd._forward(kinds, modules, x)
            dense = dpsgd._backward(tape, dpsgd.OUTPUT_GRADIENT[loss](output, target))
            squared = None
            for _, a, delta in dense:
                term = delta.square().sum(1) * (a.square().sum(1) + 1)
                squared = term if squared is None else squared + term
            w = weights(squared, clip_norm)
            out = []
            for _, a, delta in dense:
                clipped = clip(delta, w)
                out += [clipped.t().matmul(a), clipped.sum(0)]
        return out

    return rows, sums


def _timed(crypten: Any, runs: int, call: Any) -> dict[str, Any]:
    seconds = []
    for _ in range(runs):
        crypten.communicator.get().reset_communication_stats()
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    rounds, nbytes = _comm(crypten)
    return {"median_s": float(np.median(seconds)), "rounds": rounds, "bytes": nbytes}


def _party_main(rank: int, runs: int, updates: int, batch: int, out: str) -> None:
    crypten = _setup()
    import json

    import torch

    from ppml.servers.mpc.core.clipping import clipped_rows
    from ppml.servers.mpc.training.dpsgd import clipped_gradient_sums

    crypten.init()
    rows_before, sums_before = _unchecked(crypten)
    rng = np.random.default_rng(0)  # public benchmark values
    width = SIZES[0] * SIZES[1] + SIZES[1] + SIZES[1] * SIZES[2] + SIZES[2]
    flat = rng.normal(0.0, 0.003, size=(updates, width)).astype(np.float32)
    x = crypten.cryptensor(torch.from_numpy(flat), src=0)
    layers = [crypten.nn.Linear(SIZES[0], SIZES[1]), crypten.nn.ReLU()]
    layers.append(crypten.nn.Linear(SIZES[1], SIZES[2]))
    for layer in layers:
        layer.encrypt(src=0)
    kinds = ("linear", "relu", "linear")
    loss = "cross_entropy"
    features = crypten.cryptensor(torch.from_numpy(rng.normal(0, 1, (batch, SIZES[0]))), src=0)
    labels = torch.nn.functional.one_hot(torch.arange(batch) % SIZES[2], SIZES[2]).float()
    target = crypten.cryptensor(labels, src=0)
    result = {
        "aggregation": {
            "unchecked": _timed(crypten, runs, lambda: rows_before(x, 1.0).sum(0)),
            "ppml": _timed(crypten, runs, lambda: clipped_rows(x, 1.0).sum(0)),
            "shape": [updates, width],
        },
        "dpsgd_step": {
            "unchecked": _timed(
                crypten,
                runs,
                lambda: sums_before(kinds, layers, features, target, loss, 1.0),
            ),
            "ppml": _timed(
                crypten,
                runs,
                lambda: clipped_gradient_sums(
                    kinds, layers, features, target, "cross_entropy", 1.0
                ),
            ),
            "shape": [batch, *SIZES],
        },
    }
    Path(f"{out}.rank{rank}").write_text(json.dumps(result))
    crypten.uninit()


def run(runs: int, updates: int, batch: int) -> dict[str, Any]:
    args = ["--runs", str(runs), "--updates", str(updates), "--batch", str(batch)]
    result: dict[str, Any] = launch_spmd(__file__, args, 3600.0)[0]
    return result


def summary(result: dict[str, Any]) -> str:
    lines = [
        "| computation | method | time | rounds | MB sent |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in result.items():
        for label in ("unchecked", "ppml"):
            m = r[label]
            lines.append(
                f"| {name} {tuple(r['shape'])} | {label} | {m['median_s'] * 1000:,.0f} ms "
                f"| {m['rounds']} | {m['bytes'] / 1e6:,.1f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    spmd_main(
        __doc__ or "",
        [
            ("runs", 3, "runs of each, on the same shares"),
            ("updates", 8, "participants' updates in the aggregation"),
            ("batch", 64, "rows in the DP-SGD step"),
        ],
        _party_main,
        run,
        summary,
    )
