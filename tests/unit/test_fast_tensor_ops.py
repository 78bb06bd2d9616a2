"""The fast engine's linear half of attention (tensor_ops.py, beaver.py): a block against float64.

Two parties in one process (threads, queue exchanges) against a float64
forward of the same fixed-point parameters. The block: a positional Bias,
q, k, v projections on tokens, a two-head split, ``q kᵀ`` (a Beaver
product), Scale by ``1/sqrt(d_head)``, no softmax, ``@ v``, the heads merged,
an output projection, the residual Add, the Mean over tokens and a Linear
head. Error: stochastic rounding (< 2^-16) per truncation, Scale's factor
off by at most 2^-17 absolute (relative 1.4e-5 for 1/sqrt(8)), the Mean over
8 tokens exact, each product multiplying its operands' errors by O(1)
values: on unit-scale inputs with O(1) activations the tests allow 5e-4
(measured at most 3.4e-5 over 5 seeds, batch 4).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as tf
from fast_pair import encode, forward_pair

from ppml.servers.mpc.fast import beaver
from ppml.servers.mpc.fast.bundle import Bundle
from ppml.servers.mpc.fast.engine import (
    Add,
    Dealer,
    ModelSetup,
    ModelSpec,
    PartyModel,
    ReLU,
)
from ppml.servers.mpc.fast.gates import GateParams, split
from ppml.servers.mpc.fast.graph import plan_of
from ppml.servers.mpc.fast.linear import Linear
from ppml.servers.mpc.fast.local import queue_exchanges, run_pair
from ppml.servers.mpc.fast.prg import KeyedPRG, Ring, new_key
from ppml.servers.mpc.fast.service import spec as fast_spec
from ppml.servers.mpc.fast.tensor_ops import (
    Bias,
    MatMul,
    Mean,
    Reshape,
    Scale,
    Transpose,
    reciprocal,
)

RNG = KeyedPRG()
FRAC = 16
SCALE = 1 << FRAC
T, D, H = 8, 16, 2  # tokens, features, heads
DH = D // H
FACTOR = 1 / math.sqrt(DH)


def attention_block(classes: int = 4) -> ModelSpec:
    tok = (T,)
    layers = (
        Bias((T, D)),  # 0: a positional embedding
        Linear(D, D, lead=tok),  # 1: q
        Linear(D, D, lead=tok),  # 2: k
        Linear(D, D, lead=tok),  # 3: v
        Reshape((T, H, DH)),  # 4
        Transpose((1, 0, 2)),  # 5: q per head (H, T, DH)
        Reshape((T, H, DH)),  # 6
        Transpose((1, 2, 0)),  # 7: kᵀ per head (H, DH, T)
        Reshape((T, H, DH)),  # 8
        Transpose((1, 0, 2)),  # 9: v per head (H, T, DH)
        MatMul(),  # 10: scores (H, T, T)
        Scale.of(FACTOR, FRAC),  # 11
        MatMul(),  # 12: (H, T, DH)
        Transpose((1, 0, 2)),  # 13
        Reshape((T, D)),  # 14
        Linear(D, D, lead=tok),  # 15: output projection
        Add(),  # 16: residual
        Mean(0),  # 17: over tokens
        Linear(D, classes),  # 18: head
    )
    inputs = (
        (-1,), (0,), (0,), (0,), (1,), (4,), (2,), (6,), (3,), (8,),
        (5, 7), (10,), (11, 9), (12,), (13,), (14,), (15, 0), (16,), (17,),
    )  # fmt: skip
    return ModelSpec(layers, (T, D), inputs=inputs)


Params = tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]


def _grid(t: torch.Tensor) -> np.ndarray:
    return np.rint(t.numpy() * SCALE) / SCALE


def _params(spec: ModelSpec, seed: int = 0) -> Params:
    """Public test parameters on the fixed-point grid: weights (w, b) and Bias parameters."""
    g = torch.Generator().manual_seed(seed)
    weighted = []
    for op in spec.weighted:
        w = torch.randn(op.weight_shape, generator=g, dtype=torch.float64)
        b = torch.randn(op.weight_shape[0], generator=g, dtype=torch.float64) * 0.1
        weighted.append((_grid(w / math.sqrt(op.weight_shape[1])), _grid(b)))
    biases = [
        _grid(torch.randn(n.shape, generator=g, dtype=torch.float64) * 0.1) for n in spec.biases
    ]
    return weighted, biases


def _plain(spec: ModelSpec, params: Params, x: np.ndarray) -> np.ndarray:
    """float64 forward of ``spec`` with the true Scale factor (the reference)."""
    values: dict[int, torch.Tensor] = {-1: torch.from_numpy(x)}
    weights, biases = iter(params[0]), iter(params[1])
    for i, node in enumerate(spec.layers):
        a, *rest = (values[s] for s in spec.sources(i))
        if isinstance(node, Linear):
            w, b = (torch.from_numpy(t) for t in next(weights))
            y = tf.linear(a if node.lead else a.reshape(a.shape[0], -1), w, b)
        elif isinstance(node, Bias):
            y = a + torch.from_numpy(next(biases))
        elif isinstance(node, Reshape):
            y = a.reshape(a.shape[0], *node.shape)
        elif isinstance(node, Transpose):
            y = a.permute(0, *(p + 1 for p in node.perm))
        elif isinstance(node, MatMul):
            y = a @ rest[0]
        elif isinstance(node, Scale):
            y = a * FACTOR
        elif isinstance(node, Mean):
            y = a.mean(node.axis + 1)
        else:
            assert isinstance(node, Add)
            y = a + rest[0]
        values[i] = y
    return values[len(spec.layers) - 1].numpy()


def _models(spec: ModelSpec, params: Params) -> tuple[Dealer, bytes, tuple[PartyModel, PartyModel]]:
    dealer, key = Dealer(), new_key()
    setups = dealer.model_setup(spec, key)
    w = [split(encode(a), RNG) for a, _ in params[0]]
    b = [split(encode(c), RNG) for _, c in params[0]]
    p = [split(encode(c), RNG) for c in params[1]]
    ex = queue_exchanges()

    def party(i: int) -> Callable[[], PartyModel]:
        setup = ModelSetup.from_bytes(setups[i].to_bytes())
        return lambda: PartyModel.open(
            spec, setup, [s[i] for s in w], [s[i] for s in b], ex[i], [s[i] for s in p]
        )

    return dealer, key, run_pair(party(0), party(1))


def _inputs(batch: int = 2, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(-1, 1, size=(batch, T, D))  # public test data
    return np.rint(x * SCALE) / SCALE


def test_beaver_products_are_exact_in_the_ring_and_open_once() -> None:
    x = RNG.ring((3, 2, 5, 4))
    for y in (RNG.ring((3, 2, 4, 6)), np.ascontiguousarray(x.transpose(0, 1, 3, 2))):
        t0, t1 = beaver.deal(3, x.shape[1:], y.shape[1:], RNG)
        xs, ys = split(x, RNG), split(y, RNG)
        m0, m1 = beaver.masked(xs[0], ys[0], t0), beaver.masked(xs[1], ys[1], t1)
        assert m0.shape == (x.size + y.size,)  # one exchange for both operands
        with np.errstate(over="ignore"):
            opened = m0 + m1
            z = beaver.product(0, opened, t0) + beaver.product(1, opened, t1)
        assert np.array_equal(z, beaver.ring_bmm(x, y))


def test_an_attention_block_matches_float64_in_its_planned_rounds() -> None:
    spec = attention_block()
    plan = plan_of(spec)
    assert len(plan.triples) == 2 and plan.params == ((T, D),)
    assert [g.kind for g in plan.gates] == ["trunc_top"] * 9
    params = _params(spec, 1)
    dealer, key, models = _models(spec, params)
    pair = dealer.preprocess(spec, key, 3)
    bundles = (Bundle.from_bytes(pair[0].to_bytes()), Bundle.from_bytes(pair[1].to_bytes()))
    x = _inputs(3)
    y, rounds, sent = forward_pair(models, bundles, x)
    ref = _plain(spec, params, x)
    assert np.abs(ref).max() > 0.1
    assert np.abs(y - ref).max() <= 5e-4
    # open x; trunc q, kᵀ; product; trunc scores; trunc scaled, v; product; trunc; open;
    # trunc after the Add; trunc after the Mean; open; the output's trunc
    assert rounds == plan.rounds == 14
    # every opening, both operands of each product, one value per truncation: 8 bytes each
    opened = sum(math.prod(m) for m in plan.masks) + sum(g.per_sample for g in plan.gates)
    opened += sum(math.prod(a) + math.prod(b) for a, b in plan.triples)
    assert sent == 3 * 8 * opened


def test_a_linear_on_tokens_maps_every_row() -> None:
    """A Linear on tokens is one matmul over all rows: the same as a Linear per token."""
    spec = ModelSpec((Bias((T, D)), Linear(D, 3, lead=(T,))), (T, D))
    params = _params(spec, 2)
    dealer, key, models = _models(spec, params)
    x = _inputs(2, seed=4)
    y, rounds, _ = forward_pair(models, dealer.preprocess(spec, key, 2), x)
    assert y.shape == (2, T, 3)
    assert np.abs(y - _plain(spec, params, x)).max() <= 1e-4
    assert rounds == 2  # open, the output's trunc
    with pytest.raises(ValueError):
        _ = spec.stages  # not a chain of vector layers (the replicated engine)


def test_bundles_with_triples_cut_stack_and_keep_a_uniform_view() -> None:
    spec = attention_block()
    params = _params(spec, 3)
    dealer, key, models = _models(spec, params)
    made = dealer.preprocess_many(spec, key, 1, 3)
    stacked = tuple(Bundle.concat([m[b] for m in made[1:]]) for b in (0, 1))
    assert stacked[0].batch == 2 and len(stacked[0].triples) == 2
    x = _inputs(2, seed=5)
    ref = _plain(spec, params, x)
    y, _, _ = forward_pair(models, (stacked[0], stacked[1]), x)
    assert np.abs(y - ref).max() <= 5e-4
    head = tuple(Bundle.from_bytes(b.head(1).to_bytes()) for b in made[0])
    single, _, _ = forward_pair(models, (head[0], head[1]), x[:1])
    assert np.abs(single - ref[:1]).max() <= 5e-4
    for value in (0.0, 50.0):  # what party 0 receives online has uniform bits either way
        seen: list[Ring] = []
        forward_pair(models, dealer.preprocess(spec, key, 16), np.full((16, T, D), value), seen)
        view = np.concatenate([s.reshape(-1) for s in seen])
        freq = np.unpackbits(view.view(np.uint8).reshape(-1, 8), axis=1).mean(axis=0)
        assert np.all(np.abs(freq - 0.5) < 6 * 0.5 / math.sqrt(view.size)), freq


def test_material_and_online_costs_of_the_block() -> None:
    spec = attention_block()
    plan = plan_of(spec)
    bundle = Dealer().preprocess(spec, new_key(), 1)[0]
    triples = 2 * (3 * H * T * DH) * 8  # (H,T,DH) @ (H,DH,T), (H,T,T) @ (H,T,DH); T == DH
    assert sum(t.nbytes for t in bundle.triples) == triples == 6_144
    assert plan.elements_per_sample() * 8 < bundle.nbytes  # gate keys are far larger than 8 bytes


def test_a_party_needs_one_share_per_bias_parameter() -> None:
    spec = attention_block()
    setup = Dealer().model_setup(spec, new_key())[0]
    params = _params(spec)
    w = [encode(a) for a, _ in params[0]]
    b = [encode(c) for _, c in params[0]]
    with pytest.raises(ValueError, match="Bias parameter"):
        PartyModel.open(spec, setup, w, b, lambda a: a, [])


def test_fixed_point_factors() -> None:
    assert Scale.of(0.25, 16).multiplier == 1 << 14  # a power of two: exact
    s = Scale.of(FACTOR, 16)
    assert abs(s.multiplier / SCALE - FACTOR) <= 2**-17
    assert reciprocal(8, 16) == 1 << 13 and abs(reciprocal(3, 16) / SCALE - 1 / 3) <= 2**-17
    assert Scale.of(2.0**16, 16).multiplier == 1 << 32  # the largest factor a Scale layer has
    for bad in (2**-18, 2.0**17):
        with pytest.raises(ValueError):
            Scale.of(bad, 16)


def test_the_block_s_wire_spec_round_trips() -> None:
    spec = attention_block()
    wire = fast_spec.to_wire(spec)
    assert wire[1][1] == ("linear", D, D, True, T) and wire[1][10] == ("matmul",)
    assert fast_spec.from_wire(wire) == spec
    chain = ModelSpec((Linear(4, 3),), (4,))
    assert fast_spec.to_wire(chain)[1] == (("linear", 4, 3, True),)  # unchanged for chains


def _bad(rows: tuple[tuple[object, ...], ...], shape: tuple[int, ...] = (T, D)) -> object:
    inputs = tuple((i - 1,) for i in range(len(rows)))
    return shape, (*rows, ("linear", D, 2, True, T)), (*inputs, (len(rows) - 1,))


@pytest.mark.parametrize(
    "bad",
    [
        _bad((("transpose", 1, 1),)),  # not a permutation
        _bad((("transpose", 1, 0, 2),)),  # three dims of a 2-D value
        _bad((("transpose", 0),)),  # one dim of a 2-D value
        _bad((("transpose", -1, 0),)),
        _bad((("transpose", 1, True),)),  # a bool is no index
        _bad((("reshape", 4, 4, 4),)),  # 64 elements of 128
        _bad((("reshape", 128, 0),)),
        _bad((("reshape", 2, 2, 2, 2, 8),)),  # five dims
        _bad((("reshape",),)),
        _bad((("scale", 0),)),
        _bad((("scale", 1 << 40),)),
        _bad((("scale", True),)),
        _bad((("scale", 0.5),)),  # the multiplier is an int
        _bad((("bias", 3, D),)),  # does not broadcast
        _bad((("bias", D),)),  # too few dims
        _bad((("mean", 2),)),  # no such axis
        _bad((("mean", 0, 1),)),
        _bad((("linear", D, D, True, 4),)),  # tokens 4 of 8
        _bad((("linear", D, D, True, T, 1, 1, 1),)),  # too many lead dims
        _bad((("linear", D, D, True, T, True),)),
        _bad((("softmax", 1),)),  # softmax takes no argument
        _bad((("layer_norm", 8, 0),)),  # normalises 8 of 16 features
        _bad((("layer_norm", D),)),  # no eps
        _bad((("layer_norm", D, 1.0),)),  # eps in fixed point (an int)
        ((T, 129), (("softmax",), ("linear", 129, 2, True, T)), ((-1,), (0,))),  # rows of 129
        ((T, D), (("linear", D, D, True, T), ("matmul",)), ((-1,), (0, -1))),  # (8,16)@(8,16)
        ((T, D), (("linear", D, D, True, T), ("matmul",)), ((-1,), (0,))),  # one operand
        ((4096, 4096), (("transpose", 1, 0), ("linear", 4096, 2, True, 4096)), ((-1,), (0,))),
    ],
)
def test_malformed_tensor_wire_specs_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        fast_spec.from_wire(bad)


def test_gates_reaching_the_output_through_tensor_steps_keep_64_bits() -> None:
    """With L = 48 < 64, a ReLU read by the output through Transpose or Bias keeps full lanes."""
    narrow = GateParams(16, 31)
    layers = (Linear(D, 4, lead=(T,)), ReLU(), Transpose((1, 0)), Bias((4, 1)))
    spec = ModelSpec(layers, (T, D), narrow)
    assert [g.out_bits for g in plan_of(spec).gates] == [64]
    params = _params(spec, 6)
    dealer, key, models = _models(spec, params)
    x = _inputs(2, seed=6)
    y, _, _ = forward_pair(models, dealer.preprocess(spec, key, 2), x)
    ref = np.maximum(np.einsum("btd,od->bto", x, params[0][0][0]) + params[0][0][1], 0)
    assert np.abs(y - (ref.transpose(0, 2, 1) + params[1][0])).max() <= 1e-4
    scaled = ModelSpec((Linear(D, 4, lead=(T,)), ReLU(), Scale(3)), (T, D), narrow)
    assert [g.out_bits for g in plan_of(scaled).gates] == [48, 64]  # a trunc after the Scale
