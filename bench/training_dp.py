"""DP-SGD vs plain secret-shared training of the same MLP, in one run.

The service side of :mod:`training` (bench/training.py) twice on one
:class:`~ppml.client.deploy.local.LocalCluster` (2 compute parties + the
dealer, TLS gRPC control plane, loopback, one torch thread per process):
SecureML "Network A" (784-128-128-10, ReLU) on synthetic MNIST-shaped rows,
batch 128, SGD lr 0.1 momentum 0.9, one epoch of ``--steps`` steps,

1. plain: CrypTen autograd, ``CrossEntropyLoss(skip_forward=True)``;
2. DP-SGD: the same job with ``dp_clip_norm=1``, ``dp_noise_multiplier=1``
   (per-example norms, secret clip factors, each party's noise; the epsilon
   spent is computed on every server after every step, and counted here).

Each side gets a one-step warm-up job first. Samples/s is the job's own
figure (the last step's ``samples_per_s``: epoch samples over the time from
the start of step 1 to the end of the last, the slower server's), plus this
script's clock on the progress events from step 1 to the last step
(``steady``). ``--raw`` adds the raw CrypTen SPMD loop of
:mod:`raw_crypten_training` (no service) as a baseline, run first, before
the cluster exists.

Then a utility check on scikit-learn digits (x / 16 - 0.5, 80/20 split,
random_state 0): a 64-128-128-10 MLP, 3 epochs, batch 64, from the same
initial weights and batch order, plain and with DP-SGD (C = 1, z = 1), with
the accuracy of each (evaluated in MPC) and the epsilon the DP job reports.

Run: ``.venv/bin/python bench/training_dp.py --steps 10 --json bench/results/training_dp.json``
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from network_a import network_a
from raw_crypten_training import CLASSES, LR, MOMENTUM, ORDER_SEED, synthetic_mnist

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.proto.domain.jobs import TrainingSpec
from ppml.training.privacy import dpsgd

DP = {"dp_clip_norm": 1.0, "dp_noise_multiplier": 1.0}


def _costs(cluster: Cluster) -> list[tuple[int, int, int, float]]:
    """Per server: (jobs, rounds, bytes, seconds) of ``train`` MPC jobs so far."""
    out = []
    for report in cluster.status():
        cost = next((c for c in report.mpc_cost if c.kind == "train"), None)
        out.append((cost.jobs, cost.rounds, cost.bytes, cost.seconds) if cost else (0, 0, 0, 0.0))
    return out


def run_job(
    cluster: Cluster, data_id: str, warm_id: str, steps: int, batch: int, dp: dict[str, float]
) -> dict[str, Any]:
    """One warm-up step, then one epoch of ``steps`` steps; the job's figures."""
    seed = 0 if dp else ORDER_SEED  # DP-SGD's batches come from the servers' secret key
    hyper = {"epochs": 1, "batch_size": batch, "lr": LR, "momentum": MOMENTUM, "seed": seed}
    cluster.train(network_a(), [warm_id], **hyper, **dp, name="warmup").result(timeout=600)
    before = _costs(cluster)
    job = cluster.train(network_a(), [data_id], **hyper, **dp, name="bench")
    arrivals: dict[int, tuple[float, float, float]] = {}  # step -> (clock, samples/s, epsilon)
    for event in job.progress():
        if event.state == "running" and event.batch:
            arrivals[event.steps_done] = (time.perf_counter(), event.samples_per_s, event.epsilon)
    job.result(timeout=max(600.0, 60.0 * steps))
    after = _costs(cluster)
    assert sorted(arrivals) == list(range(1, steps + 1)), sorted(arrivals)
    rate = arrivals[steps][1]
    steady = (steps - 1) * batch / (arrivals[steps][0] - arrivals[1][0]) if steps > 1 else None
    party0 = [(a - b) / steps for a, b in zip(after[0][1:], before[0][1:], strict=True)]
    return {
        "samples_per_s": rate,
        "s_per_step": batch / rate,
        "steady_samples_per_s": steady,
        "rounds_per_step_party0": party0[0],
        "mb_per_step_party0": party0[1] / 1e6,
        "mpc_s_per_step_party0": party0[2],
        "epsilon": arrivals[steps][2],
        "noise_multiplier": job.status().info.dp_noise_multiplier,
    }


def epsilon_cost(rows: int, batch: int, steps: int) -> float:
    """Seconds one server spends computing the epsilon spent after a step (median of 5)."""
    spec = TrainingSpec(("x",), epochs=1, batch_size=batch, lr=LR, **DP)  # type: ignore[arg-type]
    plan = dpsgd.plan(spec, rows)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        plan.epsilon(steps)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def run_accuracy(cluster: Cluster, epochs: int = 3, batch: int = 64) -> dict[str, Any]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0 - 0.5).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=0.2, random_state=0)
    train_id = cluster.share_dataset(x_tr, y_tr, name="digits-train", num_classes=10)
    test_id = cluster.share_dataset(x_te, y_te, name="digits-test", num_classes=10)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )
    hyper = {"epochs": epochs, "batch_size": batch, "lr": 0.1, "momentum": 0.9, "seed": 0}
    out: dict[str, Any] = {"model": "MLP 64-128-128-10", "epochs": epochs, "batch": batch}
    for name, dp in (("plain", {}), ("dp", DP)):
        started = time.perf_counter()
        job = cluster.train(model, [train_id], **hyper, **dp, name=f"digits-{name}")
        model_id = job.result(timeout=3600)
        out[f"{name}_train_s"] = time.perf_counter() - started
        out[f"{name}_accuracy"] = cluster.evaluate(model_id, test_id).accuracy
        out[f"{name}_epsilon"] = job.epsilon()
    out["delta"] = dpsgd.DEFAULT_DELTA
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="training steps (1 epoch)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--raw", action="store_true", help="also time raw CrypTen (no service)")
    parser.add_argument("--skip-accuracy", action="store_true", help="skip the digits run")
    parser.add_argument("--json", type=Path, default=None, help="write the result JSON here")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    result: dict[str, Any] = {
        "setting": {
            "model": "Network A 784-128-128-10",
            "data": "synthetic MNIST-shaped: 784 uniform pixels, 10 classes",
            "steps": args.steps,
            "batch": args.batch,
            "parties": 2,
            "optimizer": f"SGD lr={LR} momentum={MOMENTUM}",
            "dp": DP,
        }
    }
    if args.raw:
        from raw_crypten_training import run_training_baseline

        raw = run_training_baseline(args.steps, args.batch)
        result["raw"] = {"samples_per_s": raw["samples_per_s"], "s_per_step": raw["s_per_step"]}
    x, y = synthetic_mnist(args.steps * args.batch)
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(2, Path(tmp) / "c") as local,
        Cluster.from_config(local.config_path) as cluster,
    ):
        data_id = cluster.share_dataset(x, y, name="mnist-synthetic", num_classes=CLASSES)
        warm = cluster.share_dataset(x[: args.batch], y[: args.batch], num_classes=CLASSES)
        result["plain"] = run_job(cluster, data_id, warm, args.steps, args.batch, {})
        result["dp"] = run_job(cluster, data_id, warm, args.steps, args.batch, DP)
        if not args.skip_accuracy:
            result["accuracy"] = run_accuracy(cluster)
    result["dp_vs_plain"] = result["dp"]["samples_per_s"] / result["plain"]["samples_per_s"]
    result["epsilon_s_per_step"] = epsilon_cost(len(y), args.batch, args.steps)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
