"""The client side of ``test_multihost.py``, run inside the client's network namespace.

``python multihost_client.py CONFIG`` reads one phase a line on its stdin and
answers each with one JSON line on its stdout: ``setup`` shares a model,
predicts and compares with plaintext, shares a small data set and runs a short
training job (the answer has the model id); ``predict`` (after the test
restarted a process) retries a prediction of that model until the cluster
answers again, then compares. One process for every phase: the client imports
torch and the SDK once, while the cluster starts.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from ppml.client.cluster import Cluster


def _model() -> torch.nn.Module:
    torch.manual_seed(7)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _inputs() -> torch.Tensor:
    return torch.tensor(np.random.default_rng(1).normal(size=(5, 4)), dtype=torch.float32)


def _compare(cluster: Cluster, model_id: str) -> float:
    x = _inputs()
    got = cluster.predict(model_id, x)
    with torch.no_grad():
        want = _model()(x)
    error = float((got - want).abs().max())
    if error > 0.05:
        raise SystemExit(f"prediction differs from plaintext by {error}")
    return error


def setup(config: str) -> dict[str, object]:
    with Cluster.from_config(config) as cluster:
        cluster.wait_ready(120)
        model_id = cluster.share_model(_model(), torch.zeros(1, 4), name="multihost")
        error = _compare(cluster, model_id)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 4)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0).astype(np.int64)
        data_id = cluster.share_dataset(x, y, name="multihost-data", num_classes=3)
        torch.manual_seed(0)
        job = cluster.train(torch.nn.Linear(4, 3), [data_id], epochs=1, batch_size=16, lr=0.2)
        trained = job.result(timeout=120)
        out = cluster.predict(trained, torch.tensor(x[:4]))
        if tuple(out.shape) != (4, 3) or not bool(torch.isfinite(out).all()):
            raise SystemExit(f"trained model answered {out}")
        return {"model_id": model_id, "error": error, "trained": trained}


def predict(config: str, model_id: str, timeout: float = 90.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    attempts, last = 0, ""
    with Cluster.from_config(config) as cluster:
        while True:
            attempts += 1
            try:
                return {"error": _compare(cluster, model_id), "attempts": attempts}
            except Exception as exc:  # retried until the deadline, then reported
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise SystemExit(f"no prediction within {timeout}s; last: {last}")
            time.sleep(1.0)


if __name__ == "__main__":
    config, model_id = sys.argv[1], ""
    while phase := sys.stdin.readline().strip():
        if phase == "setup":
            answer = setup(config)
            model_id = str(answer["model_id"])
        else:
            answer = predict(config, model_id)
        print(json.dumps(answer), flush=True)
