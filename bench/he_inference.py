"""Single-server CKKS inference vs the two-server MPC service vs raw CrypTen, in one run.

The same-sized network three ways, on sklearn's digits upsampled to 1x28x28
(:func:`ppml.training.poly_cnn.mnist_shaped_digits`, 450 held-out images):

* CKKS, one server (:meth:`ppml.client.Cluster.predict_ckks`): the poly CNN
  Conv(1->4, k4, s4) -> Square -> Flatten -> Linear(196, 64) -> Square ->
  Linear(64, 10) trained by :func:`~ppml.training.poly_cnn.train_poly_cnn`.
  Key generation and the size of the evaluation keys uploaded
  (``ClientKeys.public_parts()``), upload and registration times; sequential
  single-image latency (default layout, ``single``) with bytes up/down and the
  client's encryption and decryption time beside the server's own seconds;
  batch-256 throughput (``batch`` layout); and agreement of the encrypted
  argmax with the plaintext polynomial model on the whole held-out set, with
  the largest logit error;
* MPC, the service's two servers + dealer on the *same* cluster
  (:meth:`~ppml.client.Cluster.share_model`, ``predict``/``predict_detailed``):
  the same network with ReLU instead of Square, trained briefly in plaintext.
  Sequential single-image p50/p95 (with the servers' MPC rounds and bytes per
  job) and one 256-row request; the report says whether the fast engine or
  the CrypTen path ran it (the fast pool's hits + misses move only for the
  fast engine);
* raw CrypTen (:func:`raw_crypten.launch_spmd`: 2 parties + TTP, gloo on
  loopback, no service) on the ReLU network: batch-1 p50 and batch-256
  throughput on inputs shared before the timed region.

Every process runs one torch thread; the cluster is a
:class:`~ppml.client.deploy.local.LocalCluster` with TLS on loopback.

Run: ``.venv/bin/python bench/he_inference.py --json bench/results/he_inference_run1.json``
(``--n``, ``--reps``, ``--raw-n``, ``--raw-m`` trade time for precision).
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from network_a import _latency, _predict_cost
from raw_crypten import _comm, _setup, _ttp_main, launch_spmd

from ppml.client import Cluster
from ppml.client.deploy.local import LocalCluster
from ppml.proto.he.params import DEFAULT_PARAM_SET
from ppml.training.poly_cnn import mnist_shaped_digits, train_poly_cnn

BATCH = 256


def relu_cnn() -> nn.Sequential:
    """The poly CNN's shape with ReLU activations: what the MPC path runs."""
    return nn.Sequential(
        nn.Conv2d(1, 4, kernel_size=4, stride=4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 7 * 7, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def train_relu_cnn(x: np.ndarray, y: np.ndarray, epochs: int) -> nn.Sequential:
    """Adam on mini-batches of 64, seeded (public benchmark weights, not secrets)."""
    torch.manual_seed(0)
    model = relu_cnn()
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        order = torch.randperm(len(xs))
        for start in range(0, len(xs), 64):
            idx = order[start : start + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()
    return model.eval()


def _pct(xs: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(xs, 50)), "p95": float(np.percentile(xs, 95)),
            "mean": float(np.mean(xs))}  # fmt: skip


class _Timed:
    """Wraps one of the SDK's key methods to add up its seconds and calls."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def __call__(self, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.fn(*args)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1


def run_ckks(cluster: Cluster, data: tuple, n: int, reps: int) -> dict[str, Any]:
    train_x, train_y, test_x, test_y = data
    started = time.perf_counter()
    model = train_poly_cnn(train_x, train_y)
    train_s = time.perf_counter() - started
    with torch.no_grad():
        ref = model(torch.from_numpy(test_x)).double().numpy()
    started = time.perf_counter()
    keys = cluster._he_keys(DEFAULT_PARAM_SET)  # a fresh folder: generates the keys
    keygen_s = time.perf_counter() - started
    key_bytes = {part: len(b) for part, b in keys.public_parts().items()}
    started = time.perf_counter()
    cluster.he_upload_keys()
    upload_s = time.perf_counter() - started
    started = time.perf_counter()
    model_id = cluster.he_register(model, test_x.shape[1:], name="poly-cnn")
    register_s = time.perf_counter() - started
    enc, dec = _Timed(keys.encrypt), _Timed(keys.decrypt)
    setattr(keys, "encrypt", enc)  # noqa: B010 (instance attribute over the method)
    setattr(keys, "decrypt", dec)  # noqa: B010
    for i in range(2):  # warm up
        cluster.predict_ckks(model_id, test_x[i : i + 1])
    rows: list[dict[str, float]] = []
    outs = []
    for i in range(n):
        enc.reset()
        dec.reset()
        r = cluster.predict_ckks(model_id, test_x[i % len(test_x)][None])
        outs.append(r.output.double().numpy()[0])
        rows.append({"ms": 1000 * r.seconds, "server_ms": 1000 * r.server_seconds,
                     "encrypt_ms": 1000 * enc.seconds, "decrypt_ms": 1000 * dec.seconds,
                     "up": r.bytes_up, "down": r.bytes_down, "cts_up": enc.calls})  # fmt: skip
    single_ref = ref[np.arange(n) % len(ref)]
    batch = []
    for _ in range(reps):
        enc.reset()
        dec.reset()
        r = cluster.predict_ckks(model_id, test_x[:BATCH], layout="batch")
        batch.append({"seconds": r.seconds, "server_seconds": r.server_seconds,
                      "encrypt_seconds": enc.seconds, "decrypt_seconds": dec.seconds,
                      "ciphertexts_up": enc.calls, "up": r.bytes_up,
                      "down": r.bytes_down})  # fmt: skip
    whole = cluster.predict_ckks(model_id, test_x, layout="batch")
    got = whole.output.double().numpy()
    median = float(np.median([b["seconds"] for b in batch]))
    return {
        "model": "poly CNN (Square)",
        "param_set": DEFAULT_PARAM_SET,
        "train_s": train_s,
        "keygen_s": keygen_s,
        "key_upload_bytes": key_bytes,
        "key_upload_total_bytes": sum(key_bytes.values()),
        "key_upload_s": upload_s,
        "register_s": register_s,
        "single": {
            "n": n,
            "latency_ms": _pct([r["ms"] for r in rows]),
            "server_ms": _pct([r["server_ms"] for r in rows]),
            "encrypt_ms": _pct([r["encrypt_ms"] for r in rows]),
            "decrypt_ms": _pct([r["decrypt_ms"] for r in rows]),
            "bytes_up": rows[-1]["up"],
            "bytes_down": rows[-1]["down"],
            "ciphertexts_up": rows[-1]["cts_up"],
            "argmax_agreement": float((np.argmax(outs, 1) == single_ref.argmax(1)).mean()),
            "max_abs_logit_error": float(np.abs(np.array(outs) - single_ref).max()),
        },
        "batch256": {
            "reps": batch,
            "seconds_p50": median,
            "throughput_ips": BATCH / median,
            "server_seconds_p50": float(np.median([b["server_seconds"] for b in batch])),
            "encrypt_seconds_p50": float(np.median([b["encrypt_seconds"] for b in batch])),
            "decrypt_seconds_p50": float(np.median([b["decrypt_seconds"] for b in batch])),
            "bytes_up_per_image": batch[0]["up"] / BATCH,
            "bytes_down_per_image": batch[0]["down"] / BATCH,
        },
        "accuracy": {
            "held_out": len(test_x),
            "plaintext_accuracy": float((ref.argmax(1) == test_y).mean()),
            "encrypted_accuracy": float((got.argmax(1) == test_y).mean()),
            "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
            "max_abs_logit_error": float(np.abs(got - ref).max()),
            "max_abs_logit": float(np.abs(ref).max()),
            "seconds": whole.seconds,
        },
    }


def _settled_cost(cluster: Cluster, jobs: int, deadline_s: float = 30.0) -> tuple:
    """The servers' predict cost once ``jobs`` jobs are counted (a job counts after its reply)."""
    give_up = time.monotonic() + deadline_s
    cost = _predict_cost(cluster)
    while cost[0] < jobs and time.monotonic() < give_up:
        time.sleep(0.05)
        cost = _predict_cost(cluster)
    return cost


def run_mpc(cluster: Cluster, data: tuple, n: int, reps: int, epochs: int) -> dict[str, Any]:
    train_x, train_y, test_x, test_y = data
    model = train_relu_cnn(train_x, train_y, epochs)
    images = torch.from_numpy(test_x)
    with torch.no_grad():
        ref = model(images).numpy()
    started = time.perf_counter()
    model_id = cluster.share_model(model, images[:1], name="relu-cnn")
    share_s = time.perf_counter() - started

    def pool() -> tuple[int, int]:
        state = cluster.status()[0].fast_pool
        return state.hits, state.misses

    before = pool()
    for i in range(3):  # warm up
        cluster.predict(model_id, images[i : i + 1])
    latency = _latency(cluster, model_id, images, n)
    cost_before, pool_before = _settled_cost(cluster, 3 + n), pool()
    times, outs = [], []
    for _ in range(reps):
        started = time.perf_counter()
        outs.append(cluster.predict_detailed(model_id, images[:BATCH]).output.numpy())
        times.append(time.perf_counter() - started)
    cost_after, pool_after = _settled_cost(cluster, 3 + n + reps), pool()
    jobs = cost_after[0] - cost_before[0]
    median = float(np.median(times))
    return {
        "model": "ReLU CNN",
        "epochs": epochs,
        "engine": "fast" if sum(pool_after) > sum(before) else "crypten",
        "plaintext_accuracy": float((ref.argmax(1) == test_y).mean()),
        "share_model_s": share_s,
        "single": latency,
        "batch256": {
            "seconds": times,
            "seconds_p50": median,
            "throughput_ips": BATCH / median,
            "jobs_per_request": jobs / reps,
            "fast_pool_hits": pool_after[0] - pool_before[0],  # forwards served from the pool
            "fast_pool_misses": pool_after[1] - pool_before[1],  # dealer asked on demand
            "rounds_per_request": (cost_after[1] - cost_before[1]) / reps,
            "bytes_per_request": (cost_after[2] - cost_before[2]) / reps,
            "argmax_agreement": float((outs[-1].argmax(1) == ref[:BATCH].argmax(1)).mean()),
            "max_abs_logit_error": float(np.abs(outs[-1] - ref[:BATCH]).max()),
        },
    }


def _raw_party(rank: int, n: int, m: int, out: str) -> None:
    """One raw CrypTen party: the ReLU network on inputs shared before timing."""
    crypten = _setup()
    crypten.init()
    try:
        torch.manual_seed(1234 + rank)  # public benchmark weights: time does not depend on them
        cnn = crypten.nn
        model = cnn.Sequential(cnn.Conv2d(1, 4, 4, stride=4), cnn.ReLU(), cnn.Flatten(1),
                               cnn.Linear(196, 64), cnn.ReLU(), cnn.Linear(64, 10))  # fmt: skip
        model.encrypt(src=0)
        model.eval()
        x1 = crypten.cryptensor(torch.rand(1, 1, 28, 28), src=0)
        xb = crypten.cryptensor(torch.rand(BATCH, 1, 28, 28), src=0)
        with crypten.no_grad():
            for _ in range(3):
                model(x1)
            crypten.reset_communication_stats()
            model(xb)
            rounds_b, bytes_b = _comm(crypten)
            crypten.reset_communication_stats()
            y1 = model(x1)
            rounds1, bytes1 = _comm(crypten)
            lat1 = []
            for _ in range(n):
                started = time.perf_counter()
                model(x1)
                lat1.append(1000 * (time.perf_counter() - started))
            latb = []
            for _ in range(m):
                started = time.perf_counter()
                yb = model(xb)
                latb.append(time.perf_counter() - started)
        assert y1.get_plain_text().shape == (1, 10) and yb.get_plain_text().shape == (BATCH, 10)
        median = float(np.median(latb))
        res = {
            "batch1": {"n": n, **_pct(lat1), "rounds": rounds1, "bytes": bytes1},
            "batch256": {"m": m, "seconds": latb, "seconds_p50": median,
                         "throughput_ips": BATCH / median, "rounds": rounds_b,
                         "bytes": bytes_b},
        }  # fmt: skip
        Path(f"{out}.rank{rank}").write_text(json.dumps(res))
    finally:
        crypten.uninit()


def run_raw(n: int, m: int) -> dict[str, Any]:
    args = ["--raw-n", str(n), "--raw-m", str(m)]
    result: dict[str, Any] = launch_spmd(__file__, args, 900.0, prefix="he_inference_")[0]
    return result


def summary(r: dict[str, Any]) -> str:
    he, mpc = r["ckks"], r["mpc"]
    skipped = {"p50": float("nan"), "p95": float("nan"), "rounds": "-", "bytes": float("nan"),
               "throughput_ips": float("nan"), "seconds_p50": float("nan")}  # fmt: skip
    raw = r["raw_crypten"] or {"batch1": skipped, "batch256": skipped}
    s, b, a = he["single"], he["batch256"], he["accuracy"]
    ms, mb = mpc["single"], mpc["batch256"]
    lines = [
        "| | CKKS, 1 server (Square) | MPC service, 2 servers + dealer (ReLU, "
        f"{mpc['engine']} engine) | raw CrypTen, 2 parties + TTP (ReLU) |",
        "| --- | --- | --- | --- |",
        f"| setup | keygen {he['keygen_s']:.2f} s, key upload "
        f"{he['key_upload_total_bytes'] / 1e6:.1f} MB in {he['key_upload_s']:.2f} s, "
        f"register {he['register_s']:.2f} s | share_model {mpc['share_model_s']:.2f} s | |",
        f"| single image p50 / p95 (ms) | {s['latency_ms']['p50']:.0f} / "
        f"{s['latency_ms']['p95']:.0f} | {ms['p50_ms']:.0f} / {ms['p95_ms']:.0f} | "
        f"{raw['batch1']['p50']:.0f} / {raw['batch1']['p95']:.0f} |",
        f"| single image: where the time goes (p50 ms) | server {s['server_ms']['p50']:.0f}, "
        f"encrypt {s['encrypt_ms']['p50']:.1f} ({s['ciphertexts_up']} ct), decrypt "
        f"{s['decrypt_ms']['p50']:.1f} | MPC {ms['mpc_ms_per_job']:.0f} per job, "
        f"{ms['rounds']:.0f} rounds | {raw['batch1']['rounds']} rounds |",
        f"| single image traffic | up {s['bytes_up'] / 1e3:.0f} kB, down "
        f"{s['bytes_down'] / 1e3:.0f} kB (client <-> server) | {ms['bytes'] / 1e3:.0f} kB "
        f"between servers per job | {raw['batch1']['bytes'] / 1e3:.0f} kB (party 0) |",
        f"| batch 256 in one request (img/s) | {b['throughput_ips']:.1f} "
        f"({b['seconds_p50']:.2f} s) | {mb['throughput_ips']:.1f} ({mb['seconds_p50']:.2f} s) | "
        f"{raw['batch256']['throughput_ips']:.1f} ({raw['batch256']['seconds_p50']:.2f} s) |",
        f"| batch 256: where the time goes (p50 s) | server {b['server_seconds_p50']:.2f}, "
        f"encrypt {b['encrypt_seconds_p50']:.2f} ({b['reps'][0]['ciphertexts_up']} ct), "
        f"decrypt {b['decrypt_seconds_p50']:.2f} | | |",
        f"| batch 256: fast pool hits / misses | | {mb['fast_pool_hits']} / "
        f"{mb['fast_pool_misses']} (max_batch_rows {r['max_batch_rows']}) | |",
        f"| batch 256 traffic per image | up {b['bytes_up_per_image'] / 1e3:.1f} kB, down "
        f"{b['bytes_down_per_image'] / 1e3:.1f} kB | "
        f"{mb['bytes_per_request'] / BATCH / 1e3:.1f} kB between servers | "
        f"{raw['batch256']['bytes'] / BATCH / 1e3:.1f} kB (party 0) |",
        f"| agreement with plaintext argmax | {a['argmax_agreement']:.4f} "
        f"({a['held_out']} held out), max abs logit error {a['max_abs_logit_error']:.2g} | "
        f"{mb['argmax_agreement']:.4f} (256), max abs logit error "
        f"{mb['max_abs_logit_error']:.2g} | |",
        f"| plaintext accuracy (held out) | {a['plaintext_accuracy']:.3f} (encrypted "
        f"{a['encrypted_accuracy']:.3f}) | {mpc['plaintext_accuracy']:.3f} | |",
    ]
    lines.append(f"load average before / after: {r['loadavg_before']} / {r['loadavg_after']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--n", type=int, default=30, help="sequential single-image requests")
    parser.add_argument("--reps", type=int, default=3, help="batch-256 requests per path")
    parser.add_argument("--epochs", type=int, default=5, help="ReLU CNN training epochs")
    parser.add_argument("--raw-n", type=int, default=30, help="raw CrypTen batch-1 forwards")
    parser.add_argument("--raw-m", type=int, default=3, help="raw CrypTen batch-256 forwards")
    parser.add_argument("--max-batch-rows", type=int, default=64, help="[serving] setting")
    parser.add_argument("--skip-raw", action="store_true", help="no raw CrypTen baseline")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--role", choices=["party", "ttp"], help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role is not None:  # one process of the raw CrypTen baseline
        if args.role == "ttp":
            _ttp_main()
        else:
            _raw_party(args.rank, args.raw_n, args.raw_m, args.out)
        return
    os.environ["OMP_NUM_THREADS"] = "1"  # as the servers and the raw baseline run
    torch.set_num_threads(1)
    result: dict[str, Any] = {
        "loadavg_before": os.getloadavg(),
        "cores": os.cpu_count(),
        "max_batch_rows": args.max_batch_rows,
    }
    data = mnist_shaped_digits()
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(2, Path(tmp) / "c", serving={"max_batch_rows": args.max_batch_rows}) as local,
        Cluster.from_config(local.config_path) as cluster,
    ):
        result["ckks"] = run_ckks(cluster, data, args.n, args.reps)
        result["mpc"] = run_mpc(cluster, data, args.n, args.reps, args.epochs)
    result["raw_crypten"] = None if args.skip_raw else run_raw(args.raw_n, args.raw_m)
    result["loadavg_after"] = os.getloadavg()
    print(summary(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
