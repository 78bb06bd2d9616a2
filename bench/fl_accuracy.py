"""Accuracy on the HAR-shaped scenario, four offices split by subject: FL vs MPC vs plaintext.

One run on one local cluster (2 compute servers + dealer, TLS), all from the
same initial weights of the HAR MLP 561-32-6, test accuracy on a held-out
set of other rows:

* **plaintext, centralised**: every row in one place (the upper reference);
* **MPC training, centralised**: the four offices secret-share their rows
  and the model is trained in MPC on all of them (``Cluster.train``);
* **FL, MPC aggregation**: FedAvg through a federation, no DP;
* **FL + client-level DP** at epsilon 1, 3 and 8 (delta 1e-5, clip C),
  noise multiplier calibrated by ``dp-accounting`` over all rounds;
* **FL, plaintext FedAvg**: the same FedAvg with a plaintext average
  (``ppml.training.federated.fedavg_plaintext``), to show that MPC
  aggregation costs no accuracy;
* **MPC training + DP-SGD** at the same epsilons: row-level DP (one row of
  any office), per-example clipping and noise inside MPC, the alternative
  for a handful of owners.

Per federation it also reports the servers' time per round close (the
``federate`` jobs' MPC time, from the leader's status counters) and wall
time. The data are the synthetic HAR layout (``ppml.training.har``): 561
features, 6 activities, 30 subjects dealt to 4 offices.

Run: ``.venv/bin/python bench/fl_accuracy.py --json bench/results/fl_accuracy_run1.json``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ppml.client.cluster import Cluster
from ppml.client.demo_federated import federate, office_names
from ppml.client.deploy.local import LocalCluster
from ppml.proto.domain.federations import DpSettings
from ppml.proto.domain.jobs import TrainingSpec
from ppml.training.datasets import Dataset
from ppml.training.federated import accuracy, fedavg_plaintext
from ppml.training.har import split_by_subject, synthetic_har
from ppml.training.plaintext import train_plaintext

OFFICES, DELTA = 4, 1e-5


def mlp() -> nn.Module:
    torch.manual_seed(0)  # public: the benchmark's initial weights
    return nn.Sequential(nn.Linear(561, 32), nn.ReLU(), nn.Linear(32, 6))


def federate_cost(owner: Cluster) -> tuple[int, float]:
    """The leader's running total of federate jobs and their MPC seconds."""
    leader = owner.status()[0]
    for cost in leader.mpc_cost:
        if cost.kind == "federate":
            return cost.jobs, cost.seconds
    return 0, 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2400)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--mpc-epochs", type=int, default=3)
    parser.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 3.0, 8.0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    data, subjects = synthetic_har(args.rows, seed=1)
    test, _ = synthetic_har(1000, seed=2)
    parts = [part for part, _ in split_by_subject(data, subjects, OFFICES, seed=0)]
    rows: dict[str, Any] = {}

    start = time.perf_counter()
    spec = TrainingSpec((), epochs=args.rounds * args.local_epochs, batch_size=32, lr=args.lr)
    central = train_plaintext(mlp(), data.features, data.labels, spec, 6)
    rows["plaintext, centralised"] = {
        "accuracy": accuracy(central, test),
        "seconds": time.perf_counter() - start,
        "epochs": spec.epochs,
    }
    start = time.perf_counter()
    fedavg, _ = fedavg_plaintext(
        mlp(), parts, args.rounds, args.local_epochs, 32, args.lr, seed=0, test=test
    )
    rows["FL, plaintext FedAvg (reference)"] = {
        "accuracy": accuracy(fedavg, test),
        "seconds": time.perf_counter() - start,
    }
    print(json.dumps(rows, indent=2), flush=True)

    with (
        LocalCluster(parties=2, clients=office_names(OFFICES)) as local,
        Cluster.from_config(local.config_path) as owner,
    ):
        runs: list[tuple[str, DpSettings | None]] = [("FL, MPC aggregation, no DP", None)]
        runs += [
            (f"FL + client-level DP, epsilon {eps:g}", DpSettings(args.clip, 0.0, eps, DELTA))
            for eps in args.epsilons
        ]
        for label, dp in runs:
            jobs0, seconds0 = federate_cost(owner)
            outcome = federate(
                local,
                owner,
                mlp(),
                parts,
                test.features,
                test.labels,
                args.rounds,
                dp,
                lr=args.lr,
                local_epochs=args.local_epochs,
            )
            jobs1, seconds1 = federate_cost(owner)
            rows[label] = {
                "accuracy": outcome.accuracy,
                "seconds": outcome.seconds,
                "epsilon": outcome.info.epsilon_spent,
                "noise_multiplier": outcome.info.noise_multiplier,
                "server_s_per_round": (seconds1 - seconds0) / max(1, jobs1 - jobs0),
                "rounds": len(outcome.rounds),
            }
            print(label, json.dumps(rows[label]), flush=True)

        start = time.perf_counter()
        ids = [owner.share_dataset(part, name=f"office-{i}") for i, part in enumerate(parts)]
        job = owner.train(
            mlp(), ids, epochs=args.mpc_epochs, batch_size=32, lr=args.lr, name="har-central"
        )
        model_id = job.result()
        trained = owner.export_model(model_id).to_torch()
        rows["MPC training, centralised"] = {
            "accuracy": accuracy(trained, Dataset(test.features, test.labels, 6, "test")),
            "seconds": time.perf_counter() - start,
            "epochs": args.mpc_epochs,
        }
        print(json.dumps(rows["MPC training, centralised"]), flush=True)
        for eps in args.epsilons:
            start = time.perf_counter()
            job = owner.train(
                mlp(),
                ids,
                epochs=args.mpc_epochs,
                batch_size=32,
                lr=args.lr,
                dp_clip_norm=args.clip,
                dp_target_epsilon=eps,
                dp_delta=DELTA,
                name=f"har-dpsgd-{eps:g}",
            )
            model_id = job.result()
            trained = owner.export_model(model_id).to_torch()
            label = f"MPC training + DP-SGD (row-level), epsilon {eps:g}"
            rows[label] = {
                "accuracy": accuracy(trained, Dataset(test.features, test.labels, 6, "test")),
                "seconds": time.perf_counter() - start,
                "epsilon": job.epsilon(),
                "epochs": args.mpc_epochs,
            }
            print(label, json.dumps(rows[label]), flush=True)

    summary = {"config": vars(args) | {"json": None}, "rows": rows}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
