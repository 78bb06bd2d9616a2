"""LayerNorm over the last dim on the fast engine against float64 (graph.py's LayerNorm paragraph).

Two parties in one process. The model: an identity Linear on tokens (the plan
needs a weighted layer; its output's truncation moves each input by < 2^-16)
and a LayerNorm with a secret weight and bias.

Bound, per entry with ``z = (x - mean) / sqrt(v + eps)``, ``c = x - mean``
and ``r = 1 / sqrt(v + eps)``: the variance is within ``dv = 3 2^-16`` (its
two truncations and eps's rounding); the rsqrt spline is within ``rho =
1e-3`` relative on ``[3/128, 160]``, so the row's ``r`` within ``rho + dv /
(2 (v + eps))`` relative, then truncated; ``c`` is off by the input's and the
mean's truncations; so ``|y^ - y| <= |w| (|z| (rho + dv / (2 (v + eps))) +
2^-16 (2 r + |c| + 2)) + 2^-16`` (the last the output's truncation).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as tf
from fast_pair import encode, forward_pair

from ppml.servers.mpc.fast.engine import Dealer, ModelSetup, ModelSpec, PartyModel
from ppml.servers.mpc.fast.gates import split
from ppml.servers.mpc.fast.graph import plan_of
from ppml.servers.mpc.fast.linear import Linear
from ppml.servers.mpc.fast.local import queue_exchanges, run_pair
from ppml.servers.mpc.fast.nodes import LayerNorm
from ppml.servers.mpc.fast.prg import KeyedPRG, new_key

RNG = KeyedPRG()
ULP = 2.0**-16
RHO = 1e-3
EPS = 1e-5


def _grid(a: np.ndarray) -> np.ndarray:
    return np.rint(a * 2**16) / 2**16


def _setup(
    rows: int, d: int, weight: np.ndarray, bias: np.ndarray
) -> tuple[ModelSpec, Dealer, bytes, tuple[PartyModel, PartyModel]]:
    spec = ModelSpec((Linear(d, d, lead=(rows,)), LayerNorm(d, EPS)), (rows, d))
    dealer, key = Dealer(), new_key()
    setups = dealer.model_setup(spec, key)
    w = split(encode(np.eye(d)), RNG)
    params = [split(encode(weight.reshape(1, d)), RNG), split(encode(bias.reshape(1, d)), RNG)]
    ex = queue_exchanges()

    def party(i: int) -> Callable[[], PartyModel]:
        setup = ModelSetup.from_bytes(setups[i].to_bytes())
        return lambda: PartyModel.open(spec, setup, [w[i]], [None], ex[i], [p[i] for p in params])

    return spec, dealer, key, run_pair(party(0), party(1))


def bound(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The documented bound per entry (module doc)."""
    c = x - x.mean(-1, keepdims=True)
    v = (c**2).mean(-1, keepdims=True) + EPS
    r = 1 / np.sqrt(v)
    dv = 3 * ULP
    rel = RHO + dv / (2 * v)
    return np.abs(weight) * (np.abs(c * r) * rel + ULP * (2 * r + np.abs(c) + 2)) + ULP


@pytest.mark.parametrize("d", [8, 128])
def test_layer_norm_rows_are_within_the_documented_bound(d: int) -> None:
    rows = 4
    g = np.random.default_rng(d)  # public test data
    weight, bias = _grid(g.uniform(0.5, 2.0, d)), _grid(g.uniform(-1, 1, d))
    spec, dealer, key, models = _setup(rows, d, weight, bias)
    # rows of +-a about a random mean: variances a^2 at both ends of rsqrt's domain [3/128, 160]
    signs = np.where(np.arange(d) % 2 == 0, 1.0, -1.0)
    edges = np.array([12.5, 0.16, 1.0, 5.0]).reshape(1, rows, 1) * signs
    for spread in (1.5, 4.0, 20.0, None):  # per-row standard deviations about 0.43 .. 6
        if spread is None:
            x = _grid(edges + g.normal(size=(2, rows, 1)).round(3))
        else:
            noise = g.uniform(-spread / 2, spread / 2, size=(2, rows, d))
            x = _grid(noise + g.normal(size=(2, rows, 1)))
        y, rounds, _ = forward_pair(models, dealer.preprocess(spec, key, 2), x)
        ref = tf.layer_norm(
            torch.from_numpy(x), (d,), torch.from_numpy(weight), torch.from_numpy(bias), EPS
        ).numpy()
        err = np.abs(y - ref)
        assert np.all(err <= bound(x, weight)), (spread, err.max())
        # open; trunc; mean trunc; square; sum trunc; var trunc; rsqrt; trunc; product; trunc;
        # weight product; the output's trunc
        assert rounds == plan_of(spec).rounds == 12
    assert plan_of(spec).params == ((1, d), (1, d))


def test_layer_norm_refuses_a_mismatched_dim() -> None:
    with pytest.raises(ValueError, match="LayerNorm"):
        plan_of(ModelSpec((Linear(8, 8, lead=(2,)), LayerNorm(4)), (2, 8)))
    assert math.isfinite(EPS)
