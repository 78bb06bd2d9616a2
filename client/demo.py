"""``make demo``: encrypted inference on handwritten digits, end to end, on this machine.

1. start a local cluster: 2 non-colluding compute servers and a dealer (TLS, tokens);
2. train a small MLP (64-32-10) in plaintext on scikit-learn's 8x8 digits;
3. secret-share its weights: each server gets one random-looking share;
4. predict on held-out rows: inputs are secret-shared here, the servers compute on
   shares (CrypTen MPC) and only this process sees the reconstructed logits;
5. compare with the plaintext model. Exits 1 if any logit differs by more than 1e-2.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

from ppml.client.cluster import Cluster, Prediction
from ppml.servers.local import LocalCluster

ROWS = 8
TOLERANCE = 1e-2
# Wait up to 25 ms for a batch to fill so that concurrent requests share one MPC run.
SERVING = {"max_wait_ms": 25.0}


def heading(text: str) -> None:
    print(f"\n== {text} ==")


def load_data(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Digits (1797 images of 8x8 pixels), split 80/20 and standardised on the train split."""
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.2, random_state=seed, stratify=digits.target
    )
    scaler = StandardScaler().fit(x_train)
    return (
        torch.tensor(scaler.transform(x_train), dtype=torch.float32),
        torch.tensor(scaler.transform(x_test), dtype=torch.float32),
        torch.tensor(y_train),
        torch.tensor(y_test),
    )


def train(x: torch.Tensor, y: torch.Tensor, epochs: int = 200, seed: int = 0) -> nn.Sequential:
    """Full-batch Adam on cross-entropy; well under a second on one CPU core."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimiser.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def concurrent_single_rows(cluster: Cluster, model_id: str, x: torch.Tensor) -> list[Prediction]:
    """One request per row, all in flight at once; the servers may batch them together."""
    with ThreadPoolExecutor(max_workers=len(x)) as pool:
        futures = [pool.submit(cluster.predict_detailed, model_id, row[None]) for row in x]
        return [f.result() for f in futures]


def print_comparison(plain: torch.Tensor, encrypted: torch.Tensor, labels: torch.Tensor) -> None:
    print(f"{'row':>3}  {'true':>4}  {'plaintext':>9}  {'encrypted':>9}  {'max |diff|':>10}")
    for i in range(len(labels)):
        diff = (encrypted[i] - plain[i]).abs().max().item()
        print(
            f"{i:>3}  {int(labels[i]):>4}  {int(plain[i].argmax()):>9}  "
            f"{int(encrypted[i].argmax()):>9}  {diff:>10.2e}"
        )


def run() -> float:
    """Run the whole demo; returns the largest |encrypted - plaintext| logit difference."""
    heading("1. Start a local cluster: 2 compute servers + dealer, TLS on")
    start = time.perf_counter()
    with (
        LocalCluster(parties=2, serving=SERVING) as local,
        Cluster.from_config(local.config_path) as cluster,
    ):
        print(f"all servers SERVING after {time.perf_counter() - start:.1f} s ({local.directory})")

        heading("2. Train a 64-32-10 MLP in plaintext on scikit-learn digits")
        x_train, x_test, y_train, y_test = load_data()
        start = time.perf_counter()
        model = train(x_train, y_train)
        print(
            f"trained in {time.perf_counter() - start:.1f} s on {len(x_train)} images; "
            f"plaintext test accuracy {accuracy(model, x_test, y_test):.1%}"
        )

        heading("3. Secret-share the model (each server gets one share of every weight)")
        model_id = cluster.share_model(model, x_train[:4], name="digits-mlp")
        listing = next(m for m in cluster.list_models() if m.meta.model_id == model_id)
        print(
            f"model {model_id}: {listing.meta.architecture.describe()}, "
            f"{listing.meta.parameter_count} secret parameters, "
            f"held by {', '.join(listing.servers)}"
        )

        x, labels = x_test[:ROWS], y_test[:ROWS]
        with torch.no_grad():
            plain = model(x)
        heading(f"4. Encrypted prediction on {ROWS} held-out rows, one request")
        start = time.perf_counter()
        batch = cluster.predict_detailed(model_id, x)
        print(f"answered in {1000 * (time.perf_counter() - start):.0f} ms")
        print_comparison(plain, batch.output, labels)

        heading(f"5. The same rows as {ROWS} concurrent single-row requests")
        start = time.perf_counter()
        singles = concurrent_single_rows(cluster, model_id, x)
        print(
            f"answered in {1000 * (time.perf_counter() - start):.0f} ms; "
            f"requests per MPC batch seen by each call: {[p.batch_requests for p in singles]}"
        )
        for report in cluster.status():
            sizes = sorted(report.batch_sizes.items())
            print(
                f"server-{report.rank} ran "
                + ", ".join(f"{count} MPC batch(es) of {n} request(s)" for n, count in sizes)
            )

        single_out = torch.cat([p.output for p in singles])
        diff = max(
            (batch.output - plain).abs().max().item(), (single_out - plain).abs().max().item()
        )
    heading("6. Result")
    print(f"max |encrypted - plaintext| logit difference: {diff:.2e} (tolerance {TOLERANCE:g})")
    print("cluster stopped.")
    return diff


def main() -> None:
    # The tensors are tiny and the servers share this machine: more threads only contend.
    torch.set_num_threads(1)
    diff = run()
    if not diff <= TOLERANCE:
        print(f"FAILED: difference {diff:.2e} exceeds {TOLERANCE:g}", file=sys.stderr)
        sys.exit(1)
    print("OK: encrypted predictions match the plaintext model.")


if __name__ == "__main__":
    main()
