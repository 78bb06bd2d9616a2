"""Secret variances: ppml's wrap-safe ``mean_square`` vs squaring directly, same run.

Both run on CrypTen between 2 parties + TTP (:func:`raw_crypten.launch_spmd`:
gloo on loopback, one thread each), on the same shares of the same centred
features:

* *direct*: ``c.square().sum(0).div(rows)``, what raw CrypTen code writes
  (and what ppml's trainer did before): one truncation per squared element,
  wrong by ~2^32 with probability ``c^2 / 2^32``;
* *ppml*: :func:`ppml.servers.mpc.training.standardize.mean_square` (three scales
  of squares, the one kept per column picked by a secret comparison).

Data: the breast-cancer training split the integration test uses (426 x 30,
raw "area" columns), ``--runs`` times on fresh shares, counting runs with any
variance off by more than 1 % (relative to ``var + 0.01``, the floor every
variance gets before ``1 / sqrt``); and a HAR-sized table (7,352 x 561, columns
with std from 0.1 to 3,000), once, for time and memory at scale. Per method:
party 0's time, rounds and bytes, and its peak resident memory during the call.

Run: ``.venv/bin/python bench/standardize.py --runs 40 --json bench/results/standardize_run1.json``
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from raw_crypten import _comm, _setup, launch_spmd, spmd_main

from ppml.training.standardize import VARIANCE_FLOOR

BAD = 0.01  # a run is wrong if any variance is off by more than this, relative


def breast_cancer() -> np.ndarray:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    split = train_test_split(
        data.data, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    return np.asarray(split[0])


def har_sized() -> np.ndarray:
    """7,352 x 561 public benchmark values (a fixed seed), std 0.1 to 3,000 across columns."""
    rng = np.random.default_rng(0)
    stds = np.geomspace(0.1, 3000.0, 561)
    return rng.normal(0.0, 1.0, size=(7352, 561)) * stds + rng.uniform(-100.0, 100.0, 561)


def _peak_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _measure(crypten: Any, method: Any, centred: Any, expected: np.ndarray) -> dict[str, Any]:
    crypten.communicator.get().reset_communication_stats()
    _peak_reset()
    started = time.perf_counter()
    got = method(centred)
    seconds = time.perf_counter() - started
    peak = _peak_mb()
    rounds, nbytes = _comm(crypten)
    value = got.get_plain_text().double().numpy()
    error = float(np.max(np.abs(value - expected) / (expected + VARIANCE_FLOOR)))
    return {"s": seconds, "rounds": rounds, "bytes": nbytes, "peak_mb": peak, "error": error}


def _party_main(rank: int, runs: int, out: str) -> None:
    crypten = _setup()
    import json

    import torch

    from ppml.servers.mpc.training.standardize import mean_square

    def direct(c: Any) -> Any:
        return c.square().sum(0).div(c.size(0))

    crypten.init()
    methods = {"direct": direct, "ppml": mean_square}
    result: dict[str, Any] = {}
    tables = (("breast_cancer", breast_cancer(), runs), ("har_sized", har_sized(), 1))
    for name, x, repeat in tables:
        x32 = x.astype(np.float32)
        expected = x32.astype(np.float64).var(0)
        per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
        for _ in range(repeat):
            shared = crypten.cryptensor(torch.from_numpy(x32), src=0)  # fresh shares each run
            centred = shared - shared.sum(0).div(x.shape[0])
            for label, method in methods.items():
                per_method[label].append(_measure(crypten, method, centred, expected))
        result[name] = {"shape": list(x.shape), "runs": repeat}
        for label, measured in per_method.items():
            result[name][label] = {
                "wrong_runs": sum(m["error"] > BAD for m in measured),
                "median_error": float(np.median([m["error"] for m in measured])),
                "max_error": max(m["error"] for m in measured),
                "median_s": float(np.median([m["s"] for m in measured])),
                "rounds": measured[-1]["rounds"],
                "bytes": measured[-1]["bytes"],
                "peak_mb": max(m["peak_mb"] for m in measured),
            }
    Path(f"{out}.rank{rank}").write_text(json.dumps(result))
    crypten.uninit()


def run(runs: int) -> dict[str, Any]:
    result: dict[str, Any] = launch_spmd(__file__, ["--runs", str(runs)], 3600.0)[0]
    return result


def summary(result: dict[str, Any]) -> str:
    lines = [
        "| data | method | wrong runs | median / max rel. error | time | rounds | MB sent "
        "| peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in result.items():
        rows, cols = r["shape"]
        for label in ("direct", "ppml"):
            m = r[label]
            lines.append(
                f"| {name} ({rows} x {cols}) | {label} | {m['wrong_runs']} of {r['runs']} "
                f"| {m['median_error']:.1e} / {m['max_error']:.1e} "
                f"| {m['median_s'] * 1000:,.0f} ms | {m['rounds']} | {m['bytes'] / 1e6:,.1f} "
                f"| {m['peak_mb']:,.0f} MB |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    spmd_main(
        __doc__ or "",
        [("runs", 40, "runs on fresh shares of the breast-cancer split")],
        _party_main,
        run,
        summary,
    )
