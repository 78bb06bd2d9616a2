"""Secret-shared training: the ppml service vs a raw CrypTen SPMD loop, in one run.

Both sides train SecureML "Network A" (Linear(784, 128) -> ReLU ->
Linear(128, 128) -> ReLU -> Linear(128, 10)) on the same synthetic
MNIST-shaped rows (784 uniform pixels, 10 classes) with batch 128, SGD lr 0.1
momentum 0.9, ``CrossEntropyLoss(skip_forward=True)`` and pairwise max, on 2
compute parties + CrypTen's TTP dealer (CSPRNG-seeded) over loopback, one
torch thread per process.

1. raw: :mod:`raw_crypten_training`, ``--steps`` timed steps after one
   warm-up step (processes launched by hand, no gRPC, no service);
2. service: a :class:`~ppml.client.deploy.local.LocalCluster` (TLS gRPC control
   plane, leader dispatching every step) driven through the SDK. The data
   set (``steps * batch`` rows) is shared first, then a one-step warm-up job
   runs on a batch-sized data set (the raw side's warm-up step), then the
   measured job: 1 epoch = ``steps`` steps.

   Service samples/s, as the job itself reports it (``job``): the last step's
   ``samples_per_s`` in the job's progress events (the slower server's), which
   each party computes as the epoch's samples over the time from the start of
   step 1 to the end of the last step. That excludes queueing and the first
   step's setup (loading the shares, building the secret model) and includes
   the leader's dispatch of every step. For comparison with the raw side's
   "after warm-up" timing, ``steady`` uses this script's own clock on the
   progress events as they arrive: ``(steps - 1) * batch`` samples over the
   time from the step-1 event to the last-step event.
3. accuracy after one epoch on scikit-learn digits (x / 16 - 0.5, 80/20
   split, random_state 0): a 64-128-128-10 MLP, batch 128, lr 0.1, momentum
   0.9, fixed seed, trained in MPC by the service and evaluated in MPC on the
   shared test split, vs :func:`~ppml.training.plaintext.train_plaintext`
   from the same initial weights and the same batch order.

Run: ``.venv/bin/python bench/training.py --steps 20 --json bench/results/training.json``
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
from raw_crypten_training import (
    CLASSES,
    LR,
    MOMENTUM,
    ORDER_SEED,
    WEIGHT_DECAY,
    run_training_baseline,
    synthetic_mnist,
)
from raw_crypten_training import summary as raw_summary

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.proto.domain.jobs import TrainingSpec
from ppml.training.plaintext import train_plaintext

TARGET = 0.9  # service samples/s >= 0.9x raw
DIGITS_SEED = 0


def _costs(cluster: Cluster, kind: str) -> list[tuple[int, int, int, float]]:
    """Per server: (jobs, rounds, bytes, seconds) of MPC jobs of ``kind`` so far."""
    out = []
    for report in cluster.status():
        cost = next((c for c in report.mpc_cost if c.kind == kind), None)
        out.append((cost.jobs, cost.rounds, cost.bytes, cost.seconds) if cost else (0, 0, 0, 0.0))
    return out


def _hyper(batch: int) -> dict[str, Any]:
    return {
        "epochs": 1,
        "batch_size": batch,
        "lr": LR,
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
    }


def run_service(cluster: Cluster, steps: int, batch: int) -> dict[str, Any]:
    """Train Network A for one epoch of ``steps`` steps through the service; its figures."""
    x, y = synthetic_mnist(steps * batch)
    model = network_a()
    started = time.perf_counter()
    data_id = cluster.share_dataset(x, y, name="mnist-synthetic", num_classes=CLASSES)
    share_s = time.perf_counter() - started
    warm_id = cluster.share_dataset(x[:batch], y[:batch], name="warmup", num_classes=CLASSES)
    cluster.train(model, [warm_id], **_hyper(batch), seed=ORDER_SEED, name="warmup").result(
        timeout=600
    )

    before = _costs(cluster, "train")
    beats_before = _costs(cluster, "heartbeat")[0][0]
    submitted = time.perf_counter()
    job = cluster.train(model, [data_id], **_hyper(batch), seed=ORDER_SEED, name="network-a-bench")
    arrivals: dict[int, tuple[float, float]] = {}  # steps_done -> (our clock, job's samples/s)
    final = None
    for event in job.progress():
        now = time.perf_counter()
        if event.state == "running" and event.batch:
            arrivals[event.steps_done] = (now, event.samples_per_s)
        final = event
    model_id = job.result(timeout=max(600.0, 60.0 * steps))
    finished = time.perf_counter()
    after = _costs(cluster, "train")
    beats = _costs(cluster, "heartbeat")[0][0] - beats_before
    assert final is not None and final.state == "succeeded", final
    assert sorted(arrivals) == list(range(1, steps + 1)), sorted(arrivals)

    job_rate = arrivals[steps][1]
    steady = None
    if steps >= 2:
        steady = (steps - 1) * batch / (arrivals[steps][0] - arrivals[1][0])
    jobs = [max(1, a[0] - b[0]) for a, b in zip(after, before, strict=True)]
    per_party = [
        {
            "rounds_per_step": (a[1] - b[1]) / n,
            "bytes_per_step": (a[2] - b[2]) / n,
            "mpc_s_per_step": (a[3] - b[3]) / n,
        }
        for a, b, n in zip(after, before, jobs, strict=True)
    ]
    weights = cluster.export_model(model_id).weights
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())
    return {
        "steps": steps,
        "batch": batch,
        "rows": steps * batch,
        "samples_per_s": job_rate,
        "s_per_step": batch / job_rate,
        "steady_samples_per_s": steady,
        "steady_s_per_step": batch / steady if steady else None,
        "end_to_end_s": finished - submitted,
        "share_dataset_s": share_s,
        "train_jobs_counted": jobs,
        "heartbeats_during_job": beats,
        # worker time per step (step 1 includes the job's setup); the rest of
        # s_per_step is the leader's step-by-step dispatch
        "party0": per_party[0],
        "party1": per_party[1],
    }


def _accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        predicted = model(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy()
    return float((predicted == y).mean())


def run_accuracy(cluster: Cluster, batch: int = 128, seed: int = DIGITS_SEED) -> dict[str, Any]:
    """One epoch on digits in MPC (service) vs plaintext PyTorch, same weights and order."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0 - 0.5).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=0.2, random_state=0)
    train_id = cluster.share_dataset(
        x_tr, y_tr, name="digits-train", num_classes=10, scaling="x/16-0.5"
    )
    test_id = cluster.share_dataset(x_te, y_te, name="digits-test", num_classes=10)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )
    hyper = {**_hyper(batch), "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}
    started = time.perf_counter()
    job = cluster.train(model, [train_id], **hyper, seed=seed, name="digits-bench")
    model_id = job.result(timeout=1800)
    train_s = time.perf_counter() - started
    evaluation = cluster.evaluate(model_id, test_id)
    spec = TrainingSpec((train_id,), seed=seed, **hyper)
    plain = train_plaintext(model, x_tr, y_tr, spec, 10)
    mpc_weights = cluster.export_model(model_id).weights
    plain_weights = plain.state_dict()
    max_diff = max(float((mpc_weights[k] - plain_weights[k]).abs().max()) for k in mpc_weights)
    return {
        "dataset": "sklearn digits, x/16-0.5, 80/20 split (random_state 0)",
        "model": "MLP 64-128-128-10",
        "train_rows": len(y_tr),
        "test_rows": len(y_te),
        "epochs": 1,
        "batch": batch,
        "lr": 0.1,
        "momentum": 0.9,
        "seed": seed,
        "initial_accuracy": _accuracy(model.eval(), x_te, y_te),
        "mpc_accuracy": evaluation.accuracy,
        "mpc_correct": evaluation.correct,
        "plaintext_accuracy": _accuracy(plain, x_te, y_te),
        "max_abs_weight_diff": max_diff,
        "mpc_train_s": train_s,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def summary(result: dict[str, Any]) -> str:
    raw, svc, s = result["raw"], result["service"], result["setting"]
    ratio = result["ratios"]
    rows = [
        f"Network A training, batch {s['batch']}, {s['steps']} steps, {s['parties']} parties + "
        f"{s['provider']} dealer ({s['dealer_seed']} seed), {s['threads']} thread/process, "
        f"{s['mpc_backend']} over {s['transport']}",
        "",
        f"{'':34}{'samples/s':>11}{'s/step':>9}{'rounds/step p0|p1':>20}{'MB/step p0|p1':>17}",
        f"{'raw CrypTen (after 1 warm-up step)':34}{raw['samples_per_s']:11.1f}"
        f"{raw['s_per_step']:9.3f}"
        f"{raw['rounds_per_step']:>12.0f}|{raw['rounds_per_step_party1']:<7.0f}"
        f"{raw['bytes_per_step'] / 1e6:>9.2f}|{raw['bytes_per_step_party1'] / 1e6:<7.2f}",
        f"{'service, job-reported (steps 1..N)':34}{svc['samples_per_s']:11.1f}"
        f"{svc['s_per_step']:9.3f}"
        f"{svc['party0']['rounds_per_step']:>12.0f}|{svc['party1']['rounds_per_step']:<7.0f}"
        f"{svc['party0']['bytes_per_step'] / 1e6:>9.2f}|"
        f"{svc['party1']['bytes_per_step'] / 1e6:<7.2f}",
        f"{'service, steady (steps 2..N)':34}{_fmt(svc['steady_samples_per_s'], '11.1f')}"
        f"{_fmt(svc['steady_s_per_step'], '9.3f')}",
        "",
        f"service / raw: {ratio['service_vs_raw']:.3f} (job-reported), "
        f"{_fmt(ratio['steady_vs_raw'], '.3f')} (steady); target >= {TARGET}: "
        f"{'met' if ratio['meets_target'] else 'NOT met'}",
        f"service job end to end (submit -> stored model): {svc['end_to_end_s']:.1f} s; "
        f"worker MPC s/step p0 {svc['party0']['mpc_s_per_step']:.3f}, "
        f"p1 {svc['party1']['mpc_s_per_step']:.3f}; heartbeats during job: "
        f"{svc['heartbeats_during_job']}",
    ]
    acc = result.get("accuracy")
    if acc:
        rows += [
            "",
            f"digits, {acc['model']}, 1 epoch, batch {acc['batch']}, lr {acc['lr']}, "
            f"momentum {acc['momentum']}, seed {acc['seed']} ({acc['train_rows']} train / "
            f"{acc['test_rows']} test rows):",
            f"  MPC (service) {acc['mpc_accuracy']:.4f}   plaintext PyTorch "
            f"{acc['plaintext_accuracy']:.4f}   (untrained {acc['initial_accuracy']:.4f}; "
            f"max |w_mpc - w_plain| {acc['max_abs_weight_diff']:.4f})",
        ]
    return "\n".join(row.rstrip() for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps (1 epoch)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--skip-accuracy", action="store_true", help="skip the digits run")
    parser.add_argument(
        "--accuracy-batch",
        type=int,
        default=32,
        help="batch size of the one-epoch digits run (1437 rows: 45 steps at 32)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the result JSON here")
    args = parser.parse_args()
    # The raw side's processes run with OMP_NUM_THREADS=1; give the servers the same
    # (they also set torch.set_num_threads from [serving] torch_threads, default 1).
    os.environ["OMP_NUM_THREADS"] = "1"

    # raw first, before the cluster exists (its idle heartbeats would disturb the timing)
    raw = run_training_baseline(args.steps, args.batch)
    print(raw_summary(raw), flush=True)
    accuracy = None
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(2, Path(tmp) / "c") as local,
        Cluster.from_config(local.config_path) as cluster,
    ):
        service = run_service(cluster, args.steps, args.batch)
        if not args.skip_accuracy:
            accuracy = run_accuracy(cluster, args.accuracy_batch)
    steady = service["steady_samples_per_s"]
    ratio = service["samples_per_s"] / raw["samples_per_s"]
    result: dict[str, Any] = {
        "setting": {
            "model": "Network A 784-128-128-10",
            "data": "synthetic MNIST-shaped: 784 uniform pixels, 10 classes",
            "steps": args.steps,
            "batch": args.batch,
            "parties": 2,
            "provider": "TTP",
            "dealer_seed": "CSPRNG",
            "threads": 1,
            "mpc_backend": "gloo",
            "transport": "loopback",
            "service_control_plane": "gRPC with TLS (LocalCluster)",
            "optimizer": f"SGD lr={LR} momentum={MOMENTUM} weight_decay={WEIGHT_DECAY}",
            "loss": "CrossEntropyLoss(skip_forward=True), max_method=pairwise",
            "service_rate": "job-reported: last step's samples_per_s (start of step 1 to end "
            "of last step; no queueing, no setup); steady: client clock on progress events, "
            "step-1 event to last-step event",
            "raw_rate": "party 0 clock, steps after 1 warm-up step",
        },
        "raw": raw,
        "service": service,
        "ratios": {
            "service_vs_raw": ratio,
            "steady_vs_raw": steady / raw["samples_per_s"] if steady else None,
            "target": TARGET,
            "meets_target": ratio >= TARGET,
        },
        "accuracy": accuracy,
    }
    print()
    print(summary(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
