"""``make demo``: four data owners train a model together in MPC, then query it encrypted.

1. start a local cluster: 2 non-colluding compute servers and a dealer (TLS, tokens);
2. four statistics offices each hold part of scikit-learn's 8x8 digits (non-IID:
   each sees mostly a few classes); each secret-shares its rows, labels one-hot;
3. a 64-32-10 MLP is trained in MPC on all four parts together, with the
   features standardised by a secret-shared mean and variance; a progress bar
   shows the epochs, and the owner reveals only per-epoch loss and accuracy;
4. the trained model stays secret-shared and answers encrypted predictions at once;
5. the MPC result is compared with the same architecture, initial weights, batch
   order and hyper-parameters trained in plaintext PyTorch;
6. the same four offices train the same MLP federated instead: each trains at
   home and only its update is secret-shared; the servers average the updates
   in MPC, once without DP and once with client-level DP (clipping and noise
   inside MPC, epsilon from dp-accounting).

Exits 1 if the MPC accuracy is more than 3 points below plaintext training's.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from ppml.client import demo_federated
from ppml.client.cluster import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.client.training_job import Progress, TrainingJob
from ppml.proto.domain.federations import DpSettings
from ppml.proto.domain.jobs import TrainingSpec
from ppml.training.datasets import Dataset, partition
from ppml.training.plaintext import train_plaintext

OWNERS = 4
ROWS = 8
TOLERANCE = 0.03  # accuracy points below plaintext training
# public hyper-parameters, the same for MPC and plaintext training
SPEC = TrainingSpec((), epochs=3, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, seed=7)
# Wait up to 25 ms for a batch to fill so that concurrent requests share one MPC run.
SERVING = {"max_wait_ms": 25.0}
# federated: 3 rounds of 3 local epochs; client-level DP at epsilon 8 (delta 1e-5) over them
FL_ROUNDS, FL_EPOCHS, FL_LR = 3, 3, 0.5
FL_DP = DpSettings(clip_norm=1.0, target_epsilon=8.0, delta=1e-5)


def heading(text: str) -> None:
    print(f"\n== {text} ==", flush=True)


def progress_bar(job: TrainingJob, width: int = 30) -> None:
    """Draw the job's progress on one line; print each epoch's revealed figures."""
    last: Progress | None = None
    live = sys.stdout.isatty()  # redraw one line; plain epoch lines when piped
    for event in job.progress():
        last = event
        if live and event.state == "running" and event.steps_total:
            done = event.steps_done / event.steps_total
            bar = "#" * round(width * done)
            print(
                f"\r  [{bar:<{width}}] {done:4.0%}  epoch {event.epoch}/{SPEC.epochs}  "
                f"{event.samples_per_s:6.0f} samples/s",
                end="",
                flush=True,
            )
        if event.loss is not None:
            accuracy = f"{event.accuracy:.1%}" if event.accuracy is not None else "n/a"
            start = "\n" if live else ""
            print(f"{start}  epoch {event.epoch}: loss {event.loss:.3f}, accuracy {accuracy}")
    end = "\n" if live else ""
    print(f"{end}  job {job.job_id}: {last.state if last else 'unknown'}")


def owners_data() -> tuple[list[Dataset], np.ndarray, np.ndarray]:
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    parts = partition(
        Dataset(x_train, y_train, 10, "digits"), OWNERS, "label_skew", alpha=0.5, seed=0
    )
    return parts, x_test, y_test


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        predicted = model(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy()
    return float((predicted == y).mean())


def federated(
    local: LocalCluster,
    cluster: Cluster,
    parts: list[Dataset],
    x_test: np.ndarray,
    y_test: np.ndarray,
    mpc_accuracy: float,
) -> None:
    heading(f"6. Federated instead: {OWNERS} offices train at home, the servers only aggregate")
    outcomes = {}
    for label, dp in (("no DP", None), ("client-level DP", FL_DP)):
        torch.manual_seed(0)  # public: the same initial weights as in step 3
        model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        print(f"FedAvg, {FL_ROUNDS} rounds, updates secret-shared, averaged in MPC, {label}:")
        outcome = demo_federated.federate(
            local,
            cluster,
            model,
            parts,
            x_test,
            y_test,
            FL_ROUNDS,
            dp,
            lr=FL_LR,
            local_epochs=FL_EPOCHS,
            scale=demo_federated.FEATURE_SCALE,
        )
        demo_federated.show(outcome)
        outcomes[label] = outcome
    dp_run = outcomes["client-level DP"]
    print(f"MPC-trained model (step 3):                  {mpc_accuracy:.1%}")
    print(f"federated, no DP:                            {outcomes['no DP'].accuracy:.1%}")
    print(
        f"federated, client-level DP (epsilon {dp_run.info.epsilon_spent:.2f}, "
        f"delta {FL_DP.delta:g}): {dp_run.accuracy:.1%}"
    )
    print(
        "  epsilon bounds what the released averages reveal about any one office's whole\n"
        "  data; with only 4 offices the noise that hides a whole office swamps the signal.\n"
        "  Client-level DP pays off with hundreds of participants (see README, 'Federated\n"
        "  learning or MPC training?')."
    )


def run() -> tuple[float, float]:
    """Run the whole story; returns (MPC accuracy, plaintext accuracy)."""
    heading("1. Start a local cluster: 2 compute servers + dealer, TLS on")
    start = time.perf_counter()
    with (
        LocalCluster(
            parties=2, serving=SERVING, clients=demo_federated.office_names(OWNERS)
        ) as local,
        Cluster.from_config(local.config_path) as cluster,
    ):
        print(f"all servers SERVING after {time.perf_counter() - start:.1f} s ({local.directory})")

        heading(f"2. {OWNERS} statistics offices secret-share their rows (non-IID)")
        parts, x_test, y_test = owners_data()
        ids = []
        for i, part in enumerate(parts):
            ids.append(cluster.share_dataset(part, name=f"office-{i}"))
            counts = np.bincount(part.labels, minlength=10)
            print(f"office-{i}: {part.rows:4d} rows, per class {counts.tolist()} -> {ids[-1]}")
        test_id = cluster.share_dataset(x_test, y_test, name="held-out", num_classes=10)
        print(f"held-out validation set: {len(y_test)} rows -> {test_id}")

        heading("3. Train a 64-32-10 MLP in MPC (secret-shared standardisation, SGD+momentum)")
        torch.manual_seed(0)  # public: the demo model's initial weights
        model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        start = time.perf_counter()
        job = cluster.train(
            model,
            ids,
            epochs=SPEC.epochs,
            batch_size=SPEC.batch_size,
            lr=SPEC.lr,
            momentum=SPEC.momentum,
            weight_decay=SPEC.weight_decay,
            seed=SPEC.seed,
            validation=test_id,
            reveal_metrics=True,
            standardize=True,
            name="digits-mlp",
        )
        progress_bar(job)
        model_id = job.result()
        print(f"trained in {time.perf_counter() - start:.1f} s; model {model_id} stays shared")

        heading(f"4. Encrypted predictions on {ROWS} held-out rows (raw features in)")
        x = torch.tensor(x_test[:ROWS], dtype=torch.float32)
        with ThreadPoolExecutor(max_workers=ROWS) as pool:
            outputs = list(pool.map(lambda row: cluster.predict_detailed(model_id, row[None]), x))
        predicted = [int(p.output.argmax()) for p in outputs]
        print(f"true      {y_test[:ROWS].tolist()}")
        print(f"predicted {predicted}")
        print(f"requests per MPC batch: {[p.batch_requests for p in outputs]}")

        heading("5. Accuracy: MPC training vs the same training in plaintext")
        evaluation = cluster.evaluate(model_id, test_id)
        features = np.concatenate([p.features for p in parts])
        labels = np.concatenate([p.labels for p in parts])
        spec = dataclasses.replace(SPEC, dataset_ids=tuple(ids), standardize=True)
        plain = accuracy(train_plaintext(model, features, labels, spec, 10), x_test, y_test)
        print(f"MPC-trained model, evaluated in MPC:  {evaluation.accuracy:.1%}")
        print(f"plaintext PyTorch, same everything:   {plain:.1%}")

        federated(local, cluster, parts, x_test, y_test, evaluation.accuracy)
    print("cluster stopped.")
    return evaluation.accuracy, plain


def main() -> None:
    # The tensors are small and the servers share this machine: more threads only contend.
    torch.set_num_threads(1)
    mpc, plain = run()
    if mpc < plain - TOLERANCE:
        print(f"FAILED: MPC accuracy {mpc:.1%} is more than 3 points below {plain:.1%}")
        sys.exit(1)
    print("OK: secret-shared training matches plaintext training.")


if __name__ == "__main__":
    main()
