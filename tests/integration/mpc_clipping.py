"""The ``clipserver`` scenario of ``mpc_programs.py``: clipping on crafted shares, on request.

The parties stay in one MPC session and serve requests that the test writes
(``out/req-<n>.json``, so a Hypothesis search can run against real parties):
every party reads the same request, derives its share of the requested ring
values (raw encodings, any int64: masks from a public seed, test only), runs
ppml's clipping code in lockstep, and rank 0 writes the opened ring values to
``out/resp-<n>.json``. Kinds:

* ``rows``: :func:`~ppml.servers.mpc.core.clipping.clipped_rows` of ``rows``;
* ``aggregate``: :func:`~ppml.servers.mpc.aggregation.aggregate.aggregate` of ``rows``
  as updates of a ``Linear(5, 6)`` with DP and no noise (``z = 0``);
* ``dpsgd``: :func:`~ppml.servers.mpc.training.dpsgd.clipped_gradient_sums` of an
  MLP (``mpc_dpsgd``'s public test weights) on feature rows ``x`` and targets
  ``y``;
* ``stop``: leave the session.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppml.servers.mpc.core.crypten_compat import crypten

WAIT_S = 180.0  # a party gives up when no request comes for this long


def ring_share(encoded: np.ndarray, rank: int, world: int, seed: int) -> np.ndarray:
    """This party's additive share of the int64 ring values ``encoded`` (public masks)."""
    rng = np.random.default_rng(seed)  # public: test fixture shares, not secret randomness
    masks = [rng.integers(-(2**63), 2**63, encoded.shape, dtype=np.int64) for _ in range(world - 1)]
    if rank < world - 1:
        return masks[rank]
    return encoded - np.sum(np.stack(masks), axis=0, dtype=np.int64) if masks else encoded


def _shared(values: list, rank: int, world: int, seed: int) -> Any:
    from crypten.mpc import MPCTensor

    share = ring_share(np.asarray(values, dtype=np.int64), rank, world, seed)
    return MPCTensor.from_shares(torch.from_numpy(share))


def _rows(request: dict, rank: int, world: int) -> list:
    from ppml.servers.mpc.core.clipping import clipped_rows

    x = _shared(request["rows"], rank, world, request["seed"])
    return clipped_rows(x, request["clip"]).reveal().tolist()


def _aggregate(request: dict, rank: int, world: int) -> list:
    from ppml.proto.domain.architecture import Architecture, Linear
    from ppml.servers.mpc.aggregation import aggregate as agg

    architecture = Architecture((Linear(5, 6, True),), (5,), (6,))
    seed = request["seed"]
    updates = []
    for k, row in enumerate(request["rows"]):
        flat = ring_share(np.asarray(row, dtype=np.int64), rank, world, seed + k)
        updates.append({"0.bias": flat[:6], "0.weight": flat[6:].reshape(6, 5)})  # sorted
    one = ring_share(np.asarray([1 << 16], dtype=np.int64), rank, world, seed - 1)
    result = agg.aggregate(
        architecture, updates, [one] * len(updates), agg.DpNoise(request["clip"], 0.0)
    )
    return result.average.tolist()  # this party's share: rank 0 gathers them below


def _dpsgd(request: dict, rank: int, world: int) -> list:
    import mpc_dpsgd  # beside this file

    from ppml.servers.mpc.training.dpsgd import clipped_gradient_sums

    _, layers = mpc_dpsgd._models(request["model_seed"])
    x = _shared(request["x"], rank, world, request["seed"])
    y = _shared(request["y"], rank, world, request["seed"] + 1)
    sums = clipped_gradient_sums(
        ("linear", "relu", "linear"), layers, x, y, request["loss"], request["clip"]
    )
    by_name = {(id(module), name): total for module, name, total in sums}
    order = [(layers[i], name) for i in (0, 2) for name in ("weight", "bias")]  # torch's order
    return [by_name[(id(m), name)].reveal().reshape(-1).tolist() for m, name in order]


def _next_request(out: Path, number: int) -> dict:
    path = out / f"req-{number}.json"
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no request {number}")
        time.sleep(0.01)
    return json.loads(path.read_text())


def _write(path: Path, value: object) -> None:
    part = path.with_suffix(".part")
    part.write_text(json.dumps(value))
    os.replace(part, path)  # the test never reads half a file


def serve(rank: int, world: int, out: Path) -> dict:
    """Answer requests until ``stop``; returns how many were served."""
    comm = crypten.communicator.get()
    number = 0
    while True:
        request = _next_request(out, number)
        if request["kind"] == "stop":
            return {"served": number}
        if request["kind"] == "rows":
            opened: Any = _rows(request, rank, world)
        elif request["kind"] == "aggregate":
            share = torch.tensor(_aggregate(request, rank, world), dtype=torch.long)
            opened = comm.all_reduce(share).tolist()  # the average's ring values
        else:
            opened = _dpsgd(request, rank, world)
        if rank == 0:
            _write(out / f"resp-{number}.json", opened)
        number += 1
