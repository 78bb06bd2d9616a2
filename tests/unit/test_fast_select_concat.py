"""The fast engine's Select (CLS pooling) and Concat nodes against float64 (tensor_ops.py).

Two parties in one process (fast_pair.py). The spec joins values at both
scales (the model input at ``2^f``, a Linear's output at ``2^(2f)``) in
either order, picks rows out of the joined value and out of the input, and
ends in a Linear head: a wrong lift or a wrong row would be off by far more
than the truncations' ``2^-16`` each.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from fast_pair import encode, forward_pair

from ppml.servers.mpc.fast.bundle import Bundle
from ppml.servers.mpc.fast.engine import Dealer, ModelSetup, ModelSpec, PartyModel
from ppml.servers.mpc.fast.gates import split
from ppml.servers.mpc.fast.graph import plan_of
from ppml.servers.mpc.fast.linear import Linear
from ppml.servers.mpc.fast.local import queue_exchanges, run_pair
from ppml.servers.mpc.fast.prg import KeyedPRG, new_key
from ppml.servers.mpc.fast.service import spec as fast_spec
from ppml.servers.mpc.fast.steps import FF, F
from ppml.servers.mpc.fast.tensor_ops import Concat, Select

RNG = KeyedPRG()
SCALE = 1 << 16
T, D = 4, 8

SPEC = ModelSpec(
    (
        Linear(D, D, lead=(T,)),  # 0: (T, D) at 2^(2f)
        Concat(0),  # 1: input (2^f, lifted) then 0: (2T, D)
        Select(0, 0),  # 2: row 0 of 1 (the input's first row)
        Select(0, T + 1),  # 3: row T + 1 of 1 (the Linear's second row)
        Concat(0),  # 4: (2D,)
        Select(0, 2),  # 5: the input's row 2, at 2^f
        Concat(0),  # 6: 4 then 5 (lifted): (3D,)
        Linear(3 * D, 3),  # 7: the head
    ),
    (T, D),
    inputs=((-1,), (-1, 0), (1,), (1,), (2, 3), (-1,), (4, 5), (6,)),
)


def _grid(a: np.ndarray) -> np.ndarray:
    return np.rint(a * SCALE) / SCALE


def _reference(x: np.ndarray, params: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    (w0, b0), (w1, b1) = params
    h = x @ w0.T + b0
    joined = np.concatenate([x, h], axis=1)
    first = np.concatenate([joined[:, 0], joined[:, T + 1]], axis=1)
    return np.concatenate([first, x[:, 2]], axis=1) @ w1.T + b1


def _models(
    params: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[Dealer, bytes, tuple[PartyModel, PartyModel]]:
    dealer, key = Dealer(), new_key()
    setups = dealer.model_setup(SPEC, key)
    w = [split(encode(a), RNG) for a, _ in params]
    b = [split(encode(c), RNG) for _, c in params]
    ex = queue_exchanges()

    def party(i: int) -> Callable[[], PartyModel]:
        setup = ModelSetup.from_bytes(setups[i].to_bytes())
        return lambda: PartyModel.open(SPEC, setup, [s[i] for s in w], [s[i] for s in b], ex[i])

    return dealer, key, run_pair(party(0), party(1))


def test_the_plan_joins_at_the_larger_scale_and_keeps_shapes() -> None:
    plan = plan_of(SPEC)
    shapes = [v.shape for v in plan.values]
    assert (2 * T, D) in shapes and (3 * D,) in shapes
    joins = [s for s in plan.steps if type(s).__name__ == "Join"]
    assert [(s.lift_a, s.lift_b) for s in joins] == [(True, False), (False, False), (False, True)]
    assert all(plan.values[s.dst].scale == FF for s in joins)
    picks = [s for s in plan.steps if type(s).__name__ == "Pick"]
    assert [plan.values[s.dst].scale for s in picks] == [FF, FF, F]


def test_select_and_concat_match_float64() -> None:
    g = torch.Generator().manual_seed(3)
    params = []
    for op in SPEC.weighted:
        w = torch.randn(op.weight_shape, generator=g, dtype=torch.float64).numpy()
        b = torch.randn(op.weight_shape[0], generator=g, dtype=torch.float64).numpy() * 0.1
        params.append((_grid(w / math.sqrt(op.weight_shape[1])), _grid(b)))
    dealer, key, models = _models(params)
    pair = dealer.preprocess(SPEC, key, 3)
    bundles = (Bundle.from_bytes(pair[0].to_bytes()), Bundle.from_bytes(pair[1].to_bytes()))
    x = _grid(np.random.default_rng(0).uniform(-1, 1, size=(3, T, D)))  # public test data
    y, rounds, _ = forward_pair(models, bundles, x)
    ref = _reference(x, params)
    assert np.abs(ref).max() > 0.1
    assert np.abs(y - ref).max() <= 1e-3, np.abs(y - ref).max()
    assert rounds == plan_of(SPEC).rounds


def test_the_wire_spec_round_trips_and_refuses_bad_rows() -> None:
    assert fast_spec.from_wire(fast_spec.to_wire(SPEC)) == SPEC
    shape, rows, inputs = fast_spec.to_wire(SPEC)  # type: ignore[misc]
    for bad in (("select", 0, T * 2), ("select", 0), ("concat", 1), ("concat", -1)):
        broken = list(rows)
        broken[2 if bad[0] == "select" else 1] = bad
        with pytest.raises(ValueError):
            fast_spec.from_wire((shape, tuple(broken), inputs))


def test_out_of_range_nodes_are_refused_by_the_plan() -> None:
    with pytest.raises(ValueError, match="no entry"):
        plan_of(ModelSpec((Linear(D, D, lead=(T,)), Select(0, T)), (T, D)))
    with pytest.raises(ValueError, match="cannot join"):
        plan_of(ModelSpec((Linear(D, 3, lead=(T,)), Concat(0)), (T, D), inputs=((-1,), (-1, 0))))
