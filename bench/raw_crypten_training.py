"""Raw CrypTen SPMD *training* baseline for SecureML "Network A" (no gRPC, no service).

The same per-step work as one party of a ppml training job
(:mod:`ppml.servers.mpc.training.trainer`), written as a plain CrypTen program:

* CrypTen's TTP dealer (PRSS seeds from the OS CSPRNG) + 2 compute parties,
  separate OS processes, gloo over loopback, one torch thread per process
  (processes launched by :func:`raw_crypten.launch_spmd`);
* Network A, Linear(784, 128) -> ReLU -> Linear(128, 128) -> ReLU ->
  Linear(128, 10), as ``crypten.nn`` layers encrypted from party 0;
* synthetic MNIST-shaped data (``steps * batch`` rows of 784 uniform pixels,
  one-hot labels over 10 classes) secret-shared from party 0 *before* timing;
* each step picks its batch by index from the shared data in the service's
  public order (:class:`ppml.training.batches.BatchPlan`), runs forward,
  ``CrossEntropyLoss(skip_forward=True)`` and backward under
  ``functions.max_method = "pairwise"``, then ``crypten.optim.SGD`` with
  momentum 0.9.

Party 0 times ``steps`` steps after one warm-up step and counts CrypTen's
communication (rounds, bytes) per step.

Run it::

    .venv/bin/python bench/raw_crypten_training.py --steps 20 --batch 128 --json out.json

or call :func:`run_training_baseline` from another benchmark script.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from raw_crypten import WORLD_SIZE, _comm, _percentile, _setup, launch_spmd, spmd_main

FEATURES = 784
CLASSES = 10
HIDDEN = 128
LR = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 0.0
DATA_SEED = 0  # synthetic data (bench/training.py shares the same rows with the service)
MODEL_SEED = 0  # initial weights (party 0's are the ones encrypted)
ORDER_SEED = 0  # public batch order


def synthetic_mnist(rows: int, seed: int = DATA_SEED) -> tuple[Any, Any]:
    """``rows`` MNIST-shaped rows: float32 pixels in [0, 1) and int64 labels 0..9."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(rows, FEATURES, generator=generator)
    y = torch.randint(0, CLASSES, (rows,), generator=generator)
    return x, y


def _network_a(crypten: Any) -> Any:
    nn = crypten.nn
    return nn.Sequential(
        nn.Linear(FEATURES, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, CLASSES),
    )


def _party_main(rank: int, steps: int, batch: int, out: str) -> None:
    """Compute party: train in lockstep with the other party; party 0's timing is the result."""
    import torch

    crypten = _setup()
    from ppml.training.batches import BatchPlan

    crypten.init()
    try:
        torch.manual_seed(MODEL_SEED)
        model = _network_a(crypten)
        model.encrypt(src=0)
        model.train()

        rows = steps * batch
        features, labels = synthetic_mnist(rows)
        one_hot = torch.nn.functional.one_hot(labels, CLASSES).float()
        x = crypten.cryptensor(features, src=0)  # shared before timing, as the service's data
        y = crypten.cryptensor(one_hot, src=0)

        optimizer = crypten.optim.SGD(
            model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        )
        loss_fn = crypten.nn.CrossEntropyLoss(skip_forward=True)
        plan = BatchPlan(rows, batch, ORDER_SEED)

        def step(i: int) -> None:
            index = torch.from_numpy(plan.indices(i))
            xb, yb = x[index], y[index]
            with crypten.cfg.temp_override({"functions.max_method": "pairwise"}):
                loss = loss_fn(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()

        step(0)  # warm-up (its update stays: the timed epoch starts from these weights)
        crypten.reset_communication_stats()
        durations: list[float] = []
        started = time.perf_counter()
        for i in range(steps):
            t0 = time.perf_counter()
            step(i)
            durations.append(time.perf_counter() - t0)
        wall = time.perf_counter() - started
        rounds, nbytes = _comm(crypten)

        # sanity (untimed): the trained weights open to finite values
        last = list(model._modules.values())[-1].weight.get_plain_text()
        assert last.shape == (CLASSES, HIDDEN) and bool(torch.isfinite(last).all()), last
        res = {
            "setting": {
                "parties": WORLD_SIZE,
                "provider": "TTP",
                "dealer_seed": "CSPRNG",
                "threads": torch.get_num_threads(),
                "backend": "gloo",
                "transport": "loopback",
                "model": "Network A 784-128-128-10",
                "steps": steps,
                "batch": batch,
                "rows": rows,
                "warmup_steps": 1,
                "optimizer": f"SGD lr={LR} momentum={MOMENTUM} weight_decay={WEIGHT_DECAY}",
                "loss": "CrossEntropyLoss(skip_forward=True), max_method=pairwise",
            },
            "samples_per_s": steps * batch / wall,
            "seconds": wall,
            "s_per_step": wall / steps,
            "s_per_step_p50": statistics.median(durations),
            "s_per_step_p95": _percentile(durations, 95),
            "rounds_per_step": rounds / steps,
            "bytes_per_step": nbytes / steps,
        }
        Path(f"{out}.rank{rank}").write_text(json.dumps(res))
    finally:
        crypten.uninit()  # party 0 also sends "terminate" to the TTP here


def run_training_baseline(steps: int = 20, batch: int = 128, timeout_s: float = 1800.0) -> dict:
    """Launch TTP + 2 parties, train ``steps`` timed steps of ``batch``; party 0's figures.

    Party 1's communication counts are added as ``*_party1`` (party 0 also
    talks to the dealer, party 1 does not).
    """
    script = str(Path(__file__).resolve())
    args = ["--steps", str(steps), "--batch", str(batch)]
    res, p1 = launch_spmd(script, args, timeout_s, prefix="raw_crypten_training_")
    res["rounds_per_step_party1"] = p1["rounds_per_step"]
    res["bytes_per_step_party1"] = p1["bytes_per_step"]
    res["seconds_party1"] = p1["seconds"]
    return res


def summary(r: dict) -> str:
    """Human-readable summary of :func:`run_training_baseline`'s result."""
    s = r["setting"]
    return "\n".join(
        [
            f"raw CrypTen training, {s['model']}, {s['parties']} parties + {s['provider']} "
            f"({s['dealer_seed']} seed), {s['threads']} thread(s)/process, "
            f"{s['backend']} over {s['transport']}",
            f"{s['steps']} steps of batch {s['batch']} after {s['warmup_steps']} warm-up: "
            f"{r['samples_per_s']:.1f} samples/s, {r['s_per_step']:.3f} s/step "
            f"(p50 {r['s_per_step_p50']:.3f}, p95 {r['s_per_step_p95']:.3f})",
            f"comm/step: party 0 {r['rounds_per_step']:.0f} rounds, "
            f"{r['bytes_per_step'] / 1e6:.2f} MB; party 1 {r['rounds_per_step_party1']:.0f} "
            f"rounds, {r['bytes_per_step_party1'] / 1e6:.2f} MB",
        ]
    )


def main() -> None:
    spmd_main(
        __doc__ or "",
        [("steps", 20, "timed training steps"), ("batch", 128, "rows per step")],
        _party_main,
        run_training_baseline,
        summary,
    )


if __name__ == "__main__":
    main()
