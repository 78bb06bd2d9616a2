"""Training on the replicated engine (ppml.servers.mpc.rep3.train), in one process: cost per step.

Network A shape, Linear(784, 128) -> ReLU -> Linear(128, 128) -> ReLU ->
Linear(128, 10), He-uniform weights and random data (features uniform in
[0, 1), random one-hot labels; only the cost is measured here, accuracy is
tests/unit/test_rep3_training.py's). The three parties are three threads of
this process over counting queues (:mod:`ppml.servers.mpc.rep3.local`): no
sockets, no TLS, so the wall time is the engine's computation plus thread
hand-offs, with the three parties sharing this machine's cores. Each party
agrees keys, reshares the model and the data (untimed), then runs ``WARMUP +
steps`` SGD steps on batches of ``--batch`` rows in a public order; party 0's
wall time per step after the warm-up gives samples/s, the queues give rounds
and bytes sent per step per party, and each party thread's own CPU time
(``time.thread_time``; BLAS and torch run single-threaded in the calling
thread) gives ``samples_per_s_one_core_per_party``: the rate if each party
had a core of its own and the links cost nothing, a bound for a LAN.

Run (``--loss`` times :func:`~ppml.servers.mpc.rep3.train.sgd_step_with_loss`
instead, the step that also hands out a share of the batch's loss)::

    .venv/bin/python bench/rep3_train.py --steps 8 --json bench/results/rep3_train_run1.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread per party thread, before numpy/torch load

import numpy as np  # noqa: E402

SCALE = 1 << 16
WARMUP = 1
SIZES = (784, 128, 128, 10)


def _spec() -> Any:
    from ppml.servers.mpc.fast.engine import ModelSpec, ReLU
    from ppml.servers.mpc.fast.linear import Linear

    layers = (Linear(784, 128), ReLU(), Linear(128, 128), ReLU(), Linear(128, 10))
    return ModelSpec(layers, (784,))


def _split3(x: np.ndarray) -> list[np.ndarray]:
    from ppml.servers.mpc.fast.prg import KeyedPRG

    rng = KeyedPRG()
    s1, s2 = rng.ring(x.shape), rng.ring(x.shape)
    return [x - s1 - s2, s1, s2]


def bench(batch: int, steps: int, lr: float, loss: bool) -> dict[str, Any]:
    import torch

    from ppml.servers.mpc.rep3 import engine, keys, train
    from ppml.servers.mpc.rep3.local import mesh, run_three
    from ppml.servers.mpc.rep3.rounds import run
    from ppml.training.batches import BatchPlan

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)  # public benchmark data
    rows = batch * (WARMUP + steps)
    x = rng.uniform(0, 1, (rows, SIZES[0]))
    y = np.eye(SIZES[-1])[rng.integers(0, SIZES[-1], rows)]
    w_sh, b_sh = [], []
    for fan_in, fan_out in itertools.pairwise(SIZES):
        bound = np.sqrt(6 / fan_in)
        w = rng.uniform(-bound, bound, (fan_out, fan_in))
        w_sh.append(_split3(np.rint(w * SCALE).astype(np.int64)))
        b_sh.append(_split3(np.zeros(fan_out, dtype=np.int64)))
    x_sh = _split3(np.rint(x * SCALE).astype(np.int64))
    y_sh = _split3(np.rint(y * SCALE).astype(np.int64))
    spec, plan = _spec(), BatchPlan(rows, batch, seed=1)
    nets = mesh(timeout_s=600.0)

    def party(rank: int) -> dict[str, Any]:
        net = nets[rank]
        corr = run(net, keys.agree(rank))
        weights, biases = [w[rank] for w in w_sh], [b[rank] for b in b_sh]
        model = run(net, engine.share_model(corr, spec, weights, biases))
        xs, ys = run(net, train.share_data(corr, x_sh[rank], y_sh[rank]))
        wall, cpu, rounds, sent = [], [], [], []
        for step in range(WARMUP + steps):
            idx = plan.indices(step)
            bx, by = type(xs)(xs.a[idx], xs.b[idx]), type(ys)(ys.a[idx], ys.b[idx])
            r0, s0, t0, c0 = net.rounds, net.bytes_sent, time.perf_counter(), time.thread_time()
            if loss:
                step_loss = train.sgd_step_with_loss(corr, spec, model, bx, by, train.Sgd(lr))
                model, _, _ = run(net, step_loss)
            else:
                model, _ = run(net, train.sgd_step(corr, spec, model, bx, by, train.Sgd(lr)))
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            rounds.append(net.rounds - r0)
            sent.append(net.bytes_sent - s0)
        timed = wall[WARMUP:]
        return {
            "step_ms_p50": 1e3 * statistics.median(timed),
            "step_ms_mean": 1e3 * statistics.fmean(timed),
            "cpu_ms_per_step": 1e3 * statistics.fmean(cpu[WARMUP:]),
            "rounds_per_step": rounds[-1],
            "bytes_sent_per_step": sent[-1],
        }

    load = os.getloadavg()[0]  # the machine may be shared: wall times depend on it
    t0 = time.perf_counter()
    results = run_three([lambda r=r: party(r) for r in range(3)], timeout_s=3600.0)
    total = time.perf_counter() - t0
    p0 = results[0]
    return {
        "network": "784-128-128-10 (Network A shape), ReLU, softmax cross-entropy",
        "setting": "three parties as threads of one process, queue links (no sockets)",
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": load,
        "batch": batch,
        "steps_timed": steps,
        "lr": lr,
        "with_loss": loss,
        "step_ms_p50": p0["step_ms_p50"],
        "samples_per_s": batch / (p0["step_ms_p50"] / 1e3),
        "cpu_ms_per_step_per_party": [r["cpu_ms_per_step"] for r in results],
        "samples_per_s_one_core_per_party": batch
        / (max(r["cpu_ms_per_step"] for r in results) / 1e3),
        "rounds_per_step": max(r["rounds_per_step"] for r in results),
        "bytes_sent_per_step_per_party": [r["bytes_sent_per_step"] for r in results],
        "bytes_sent_per_sample_all_parties": sum(r["bytes_sent_per_step"] for r in results) / batch,
        "wall_s_total": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--loss", action="store_true", help="sgd_step_with_loss (metrics)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    out = bench(args.batch, args.steps, args.lr, args.loss)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
