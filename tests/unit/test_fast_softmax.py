"""Softmax over the last axis and the element-wise Beaver product on the fast engine.

Two parties in one process against float64 softmax of the same (fixed-point)
inputs. The model: an identity Linear on tokens (the plan needs a weighted
layer; its output's truncation moves each input by < 2^-16) and a Softmax.

Bound (graph.py's Softmax paragraph), per entry ``p_i`` of a row with sum
``s = sum_j exp(x_j - max) >= 1``: the row maximum is exact; each exp is
within ``delta_j = eps_e(d_j) + 2^-16`` (``eps_e = 1e-3``, or ``e^d`` where
the table is 0, below -6.96875; the truncation after the gate); with ``D =
sum_j delta_j``, ``|p^_i - p_i| <= (delta_i + p_i D) / (s - D) (1 + rho) +
rho p_i + 3 2^-16``: ``rho = 1.1e-3`` is the row reciprocal's relative
error on ``[0.997, 130]`` (the computed sum is at least the maximum's exp,
0.99994, less ``n 2^-16`` of truncations), the ``2^-16`` terms its output
truncation, the product's and the input's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from fast_pair import encode, forward_pair

from ppml.servers.mpc.fast import beaver
from ppml.servers.mpc.fast.activations import EXP
from ppml.servers.mpc.fast.engine import Dealer, ModelSetup, ModelSpec, PartyModel
from ppml.servers.mpc.fast.gates import split
from ppml.servers.mpc.fast.graph import plan_of
from ppml.servers.mpc.fast.linear import Linear
from ppml.servers.mpc.fast.local import queue_exchanges, run_pair
from ppml.servers.mpc.fast.nodes import Softmax
from ppml.servers.mpc.fast.prg import KeyedPRG, new_key

RNG = KeyedPRG()
ULP = 2.0**-16
RHO = 1.1e-3


def _spec(rows: int, n: int) -> ModelSpec:
    return ModelSpec((Linear(n, n, lead=(rows,)), Softmax()), (rows, n))


def _pair(spec: ModelSpec, n: int) -> tuple[Dealer, bytes, tuple[PartyModel, PartyModel]]:
    dealer, key = Dealer(), new_key()
    setups = dealer.model_setup(spec, key)
    w = split(encode(np.eye(n)), RNG)
    ex = queue_exchanges()

    def party(i: int) -> Callable[[], PartyModel]:
        setup = ModelSetup.from_bytes(setups[i].to_bytes())
        return lambda: PartyModel.open(spec, setup, [w[i]], [None], ex[i])

    return dealer, key, run_pair(party(0), party(1))


def bound(x: np.ndarray) -> np.ndarray:
    """The documented bound per entry (module doc) for rows ``x`` (..., n)."""
    d = x - x.max(-1, keepdims=True)
    e = np.exp(d)
    s = e.sum(-1, keepdims=True)
    p = e / s
    delta = np.where(d < EXP.breakpoints[0], e, EXP.bound) + ULP
    total = delta.sum(-1, keepdims=True)
    return (delta + p * total) / (s - total) * (1 + RHO) + RHO * p + 3 * ULP


def _rows(rows: int, n: int, spread: float, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(-spread / 2, spread / 2, size=(2, rows, n))
    if spread == 0:
        x += 3.0  # a flat row away from 0
    return np.rint(x * 2**16) / 2**16


@pytest.mark.parametrize("n", [8, 128])
def test_softmax_rows_are_within_the_documented_bound(n: int) -> None:
    rows = 4
    spec = _spec(rows, n)
    dealer, key, models = _pair(spec, n)
    worst = 0.0
    for seed, spread in enumerate((0.0, 1.0, 8.0, 40.0, 4095.0)):  # exp's range: x - max >= -4096
        x = _rows(rows, n, spread, seed)
        if spread > 40:
            x[..., 0], x[..., 1] = spread / 2, -spread / 2  # the row's full spread
        y, rounds, _ = forward_pair(models, dealer.preprocess(spec, key, 2), x)
        e = np.exp(x - x.max(-1, keepdims=True))
        ref = e / e.sum(-1, keepdims=True)
        err = np.abs(y - ref)
        assert np.all(err <= bound(x)), (spread, err.max())
        worst = max(worst, float(err.max()))
        # open; trunc; the tournament's levels (2 each); exp; trunc; reciprocal; trunc; product;
        # the output's trunc
        assert rounds == plan_of(spec).rounds == 2 + 2 * math.ceil(math.log2(n)) + 6
    assert worst <= (2e-3 if n == 8 else 4e-3)


def test_softmax_plan_refuses_long_rows() -> None:
    with pytest.raises(ValueError, match="at most 128"):
        plan_of(_spec(2, 129))


def test_elementwise_beaver_products_are_exact_and_broadcast() -> None:
    x = RNG.ring((3, 4, 5))
    for y in (RNG.ring((3, 4, 5)), RNG.ring((3, 4, 1)), x.copy()):
        t0, t1 = beaver.deal(3, x.shape[1:], y.shape[1:], RNG, elementwise=True)
        xs, ys = split(x, RNG), split(y, RNG)
        m0, m1 = beaver.masked(xs[0], ys[0], t0), beaver.masked(xs[1], ys[1], t1)
        assert m0.shape == (x.size + y.size,)  # one exchange for both operands
        with np.errstate(over="ignore"):
            opened = m0 + m1
            z = beaver.hadamard(0, opened, t0) + beaver.hadamard(1, opened, t1)
            assert np.array_equal(z, x * y)
