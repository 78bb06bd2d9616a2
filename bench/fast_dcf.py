"""Per-element cost of the fast engine's DCFs: key generation and one party's evaluation.

Two gates' DCFs at the default parameters (:class:`~ppml.servers.mpc.fast.gates.GateParams`):
the ReLU gate's (depth 47, one one-bit lane) and a GELU spline gate's (depth 48, lanes
(64, 64), evaluated at the spline's 9 points per element, stacked as
:func:`ppml.servers.mpc.fast.spline._evaluate` does). Best of ``--reps`` wall times,
one thread; prints ns per element and writes ``--json`` if given.

    .venv/bin/python bench/fast_dcf.py --sizes 1024 32768 262144 --reference

``--reference`` times the numpy passes the kernels replaced (tests/unit/dcf_reference.py)
in the same process, size by size, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ppml.servers.mpc.fast import dcf
from ppml.servers.mpc.fast.activations import GELU
from ppml.servers.mpc.fast.gates import GateParams
from ppml.servers.mpc.fast.prg import FixedKeyPRG, KeyedPRG

STACKED_POINTS = 1 << 15  # as spline.STACKED_POINTS: few points, one walk over key copies


def _best_s(f: Callable[[], object], reps: int) -> float:
    f()  # warm (and, the first time, compile)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def _points(impl: Any, key: dcf.DCFKey, xs: np.ndarray, prg: FixedKeyPRG) -> np.ndarray:
    """The key at each row of ``xs`` (m, n), as the spline gate evaluates it (its stacking)."""
    m, n = xs.shape
    if m * n <= STACKED_POINTS:
        stacked = dcf.DCFKey.concat([key] * m)
        return impl.evaluate(stacked, xs.reshape(-1), prg)
    return np.stack([impl.evaluate(key, row, prg) for row in xs])


def measure(n: int, reps: int, impl: Any = dcf) -> dict[str, Any]:
    """ns per element of gen (both keys) and eval (one party) for the two gates' DCFs.

    ``impl``: a module with ``gen`` and ``evaluate`` (the package's, or the reference).
    """
    p, rng, prg = GateParams(), KeyedPRG(), FixedKeyPRG()
    low = np.uint64((1 << p.depth) - 1)
    alpha = rng.uint64(n) & low
    ones = np.ones((1, n), dtype=np.int64)
    relu = dcf.gen(alpha, ones, p.depth, rng, prg, (1,))
    x = rng.uint64(n) & low
    points = len(GELU.breakpoints) + 1
    top = np.uint64((1 << (p.depth + 1)) - 1)
    beta = np.stack([np.ones(n, dtype=np.int64), rng.ring(n)])
    gelu = dcf.gen(alpha & top, beta, p.depth + 1, rng, prg, (64, 64))
    xs = rng.uint64((points, n)) & top
    times = {
        "relu_gen": _best_s(lambda: impl.gen(alpha, ones, p.depth, rng, prg, (1,)), reps),
        "relu_eval": _best_s(lambda: impl.evaluate(relu[0], x, prg), reps),
        "gelu_gen": _best_s(lambda: impl.gen(alpha, beta, p.depth + 1, rng, prg, (64, 64)), reps),
        "gelu_eval": _best_s(lambda: _points(impl, gelu[0], xs, prg), reps),
    }
    return {name: 1e9 * s / n for name, s in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 32768, 262144])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default="")
    ap.add_argument(
        "--reference", action="store_true",
        help="also time the numpy passes (tests/unit/dcf_reference.py), interleaved",
    )  # fmt: skip
    args = ap.parse_args()
    impls: dict[str, Any] = {"kernels": dcf}
    if args.reference:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))
        impls["numpy"] = importlib.import_module("dcf_reference")
    out: dict[str, Any] = {}
    for n in args.sizes:
        for name, impl in impls.items():
            row = out.setdefault(name, {})[str(n)] = measure(n, args.reps, impl)
            print(f"{name:>7} n={n:>7}: " + ", ".join(f"{k} {v:,.0f}" for k, v in row.items())
                  + " ns/elem")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
