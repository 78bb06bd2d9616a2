"""ReLU per element: the fast engine's FSS gate vs CrypTen's comparison, rounds, bytes, time.

Two measurements in one run, for each element count ``n``:

* CrypTen (:func:`raw_crypten.launch_spmd`: 2 parties + TTP, gloo on
  loopback, one thread each): ``x.relu()`` on an ``n``-element shared tensor,
  timed on party 0 after the input is shared, with CrypTen's own counters
  (rounds and bytes, party 0; the dealer's corrections are inside them);
* the fast engine's fused ReLU + truncation gate
  (:class:`ppml.servers.mpc.fast.gates.ReluTrunc`): the dealer's key
  generation for ``n`` elements, and both parties' evaluation run at once in
  two threads of this process with the two openings between them (a queue,
  no network): the masked pre-activation, then one masked sign bit per
  element. Its rounds and online bytes follow from the protocol (``n`` ring
  elements and ``n`` bits per party); the dealer's material is the key size
  per element.

Inputs are pre-activations at scale ``2^32`` (the output of a linear layer
before truncation); both sides are checked against plaintext ReLU, the
values ``0``, ``±2^-16`` and ``±(2^15 - 1)`` included (the fast gate's range is
the whole ring, ``|v| < 2^31``, since depth 47: gates.py).

Run: ``.venv/bin/python bench/relu.py --json bench/results/relu_run1.json``
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from raw_crypten import _comm, _setup, launch_spmd, spmd_main

SIZES = (128, 8192)
EDGES = (0.0, 2.0**-16, -(2.0**-16), 32767.0, -32767.0)


def _inputs(n: int) -> np.ndarray:
    """Public test values (a fixed seed: benchmark data, not secrets), edges first."""
    rng = np.random.default_rng(n)
    x = rng.normal(0.0, 4.0, n)
    x[: len(EDGES)] = EDGES
    return x


def _party_main(rank: int, reps: int, out: str) -> None:
    crypten = _setup()
    import torch

    crypten.init()
    result: dict[str, Any] = {}
    for n in SIZES:
        x = torch.from_numpy(_inputs(n))
        enc = crypten.cryptensor(x, src=0)
        got = enc.relu().get_plain_text()  # warm-up and check
        error = float((got - x.relu()).abs().max())
        times, rounds, nbytes = [], 0, 0
        for _ in range(reps):
            crypten.communicator.get().reset_communication_stats()
            started = time.perf_counter()
            enc.relu()
            times.append(time.perf_counter() - started)
            rounds, nbytes = _comm(crypten)
        result[str(n)] = {
            "p50_ms": 1000 * statistics.median(times),
            "rounds": rounds,
            "bytes": nbytes,
            "max_abs_error": error,
        }
    Path(f"{out}.rank{rank}").write_text(json.dumps(result))
    crypten.uninit()


def run_crypten(reps: int) -> dict[str, Any]:
    results: dict[str, Any] = launch_spmd(__file__, ["--reps", str(reps)], 1200.0)[0]
    return results


def run_fast(reps: int) -> dict[str, Any]:
    from ppml.servers.mpc.fast.gates import GateParams, ReluTrunc, split
    from ppml.servers.mpc.fast.local import queue_exchanges, run_pair
    from ppml.servers.mpc.fast.prg import FixedKeyPRG, KeyedPRG

    p, rng = GateParams(), KeyedPRG()
    out: dict[str, Any] = {}
    for n in SIZES:
        x = _inputs(n)
        z = np.rint(x * 2.0 ** (2 * p.frac_bits)).astype(np.int64)  # pre-activation, scale 2^2f
        gen_times, eval_times, error = [], [], 0.0
        for _ in range(reps):
            started = time.perf_counter()
            keys = ReluTrunc.gen(p, n, rng, FixedKeyPRG(), 64)
            gen_times.append(time.perf_counter() - started)
            shares = split(z, rng)
            ex = queue_exchanges()

            def party(b: int, ex: Any = ex, shares: Any = shares, keys: Any = keys) -> Any:
                with np.errstate(over="ignore"):
                    opened = ex[b](shares[b] + keys[b].mask) + shares[b] + keys[b].mask
                return ReluTrunc.eval(p, keys[b], opened, FixedKeyPRG(), ex[b])

            started = time.perf_counter()
            y0, y1 = run_pair(lambda: party(0), lambda: party(1))
            eval_times.append(time.perf_counter() - started)
            with np.errstate(over="ignore"):
                y = (y0 + y1).astype(np.float64) / 2.0**p.frac_bits
            error = max(error, float(np.abs(y - np.maximum(x, 0.0)).max()))
        key_bytes = keys[0].nbytes
        out[str(n)] = {
            "p50_ms": 1000 * statistics.median(eval_times),
            "dealer_gen_p50_ms": 1000 * statistics.median(gen_times),
            "rounds": 2,
            "bytes": 8 * n + n // 8,  # n ring elements, then n sign bits, sent by each party
            "dealer_bytes_per_party": key_bytes,
            "key_bytes_per_element": key_bytes / n,
            "dcf_depth": p.depth,
            "max_abs_error": error,
        }
    return out


def run(reps: int) -> dict[str, Any]:
    return {"crypten": run_crypten(reps), "fast_gate": run_fast(reps)}


def summary(result: dict[str, Any]) -> str:
    lines = ["| n | | rounds | bytes per element (party 0) | time per element | max error |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for n in SIZES:
        c, f = result["crypten"][str(n)], result["fast_gate"][str(n)]
        lines.append(
            f"| {n} | CrypTen | {c['rounds']} | {c['bytes'] / n:,.0f} "
            f"| {1000 * c['p50_ms'] / n:.2f} µs | {c['max_abs_error']:.1e} |"
        )
        lines.append(
            f"| {n} | fast gate | {f['rounds']} | {f['bytes'] / n:,.0f} online + "
            f"{f['key_bytes_per_element']:,.0f} from the dealer | {1000 * f['p50_ms'] / n:.2f} µs "
            f"(dealer {1000 * f['dealer_gen_p50_ms'] / n:.2f} µs) | {f['max_abs_error']:.1e} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    spmd_main(__doc__, [("reps", 10, "timed calls per size")], _party_main, run, summary)
