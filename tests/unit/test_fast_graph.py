"""The fast engine on DAGs (ppml.servers.mpc.fast.graph): residual blocks, pooling, wire specs.

Two parties in one process (threads, queue exchanges) against a float64
forward of the same fixed-point weights. Error bound: the engine's own error
is stochastic rounding (< 1 ulp = 2^-16 per truncation) propagated through
the layers, plus for an average over k x k windows a relative error of at
most k^2 / 2^17 (none for 2x2 and 8x8); on unit-scale inputs and O(1)
activations the tests allow 2e-3 per small block and 1e-2 for a small ResNet.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as tf
from fast_pair import encode, forward_pair

from ppml.proto.domain import layers as dl
from ppml.proto.domain.architecture import Architecture
from ppml.servers.mpc.fast.bundle import Bundle
from ppml.servers.mpc.fast.dcf import NONCE_BYTES
from ppml.servers.mpc.fast.engine import (
    Add,
    AvgPool,
    Dealer,
    Flatten,
    MaxPool,
    ModelSetup,
    ModelSpec,
    PartyModel,
    ReLU,
)
from ppml.servers.mpc.fast.gates import GateParams, split
from ppml.servers.mpc.fast.graph import plan_of
from ppml.servers.mpc.fast.linear import Conv2d, Linear
from ppml.servers.mpc.fast.local import queue_exchanges, run_pair
from ppml.servers.mpc.fast.prg import KeyedPRG, Ring, new_key
from ppml.servers.mpc.fast.service import spec as fast_spec

RNG = KeyedPRG()
SCALE = 1 << 16
Params = list[tuple[np.ndarray, np.ndarray]]  # per weighted layer: float64 weight, bias


def _params(spec: ModelSpec, seed: int) -> Params:
    """Public test weights on the fixed-point grid, scaled so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for op in spec.weighted:
        fan_in = int(np.prod(op.weight_shape[1:]))
        w = torch.randn(op.weight_shape, generator=g, dtype=torch.float64) / np.sqrt(fan_in)
        b = torch.randn(op.weight_shape[0], generator=g, dtype=torch.float64) * 0.1
        out.append((np.rint(w.numpy() * SCALE) / SCALE, np.rint(b.numpy() * SCALE) / SCALE))
    return out


def _plain(spec: ModelSpec, params: Params, x: np.ndarray) -> np.ndarray:
    """float64 forward of ``spec`` (the reference)."""
    values: dict[int, torch.Tensor] = {-1: torch.from_numpy(x)}
    weights = iter(params)
    for i, node in enumerate(spec.layers):
        a = values[spec.sources(i)[0]]
        if isinstance(node, Linear | Conv2d):
            w, b = (torch.from_numpy(t) for t in next(weights))
            if isinstance(node, Linear):
                y = tf.linear(a.reshape(a.shape[0], -1), w, b)
            else:
                y = tf.conv2d(a, w, b, stride=node.stride, padding=node.padding)
        elif isinstance(node, ReLU):
            y = torch.relu(a)
        elif isinstance(node, Flatten):
            y = a.reshape(a.shape[0], -1)
        elif isinstance(node, Add):
            y = a + values[spec.sources(i)[1]]
        elif isinstance(node, AvgPool):
            y = tf.avg_pool2d(a, node.kernel, node.stride)
        else:
            assert isinstance(node, MaxPool)
            y = tf.max_pool2d(a, node.kernel, node.stride)
        values[i] = y
    return values[len(spec.layers) - 1].numpy()


def _models(spec: ModelSpec, params: Params) -> tuple[Dealer, bytes, tuple[PartyModel, PartyModel]]:
    dealer, key = Dealer(), new_key()
    setups = dealer.model_setup(spec, key)
    w = [split(encode(a), RNG) for a, _ in params]
    b = [split(encode(c), RNG) for _, c in params]
    ex = queue_exchanges()

    def party(i: int) -> Callable[[], PartyModel]:
        setup = ModelSetup.from_bytes(setups[i].to_bytes())
        return lambda: PartyModel.open(spec, setup, [p[i] for p in w], [p[i] for p in b], ex[i])

    return dealer, key, run_pair(party(0), party(1))


def _run(spec: ModelSpec, x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Engine output (through the wire formats), reference output, rounds."""
    params = _params(spec, seed)
    dealer, key, models = _models(spec, params)
    pair = dealer.preprocess(spec, key, x.shape[0])
    bundles = (Bundle.from_bytes(pair[0].to_bytes()), Bundle.from_bytes(pair[1].to_bytes()))
    y, rounds, _ = forward_pair(models, bundles, x)
    return y, _plain(spec, params, x), rounds


def _inputs(shape: tuple[int, ...], batch: int = 2, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(-1, 1, size=(batch, *shape))  # public test data
    return np.rint(x * SCALE) / SCALE


def _block(c: int, hw: int) -> tuple[tuple[object, ...], tuple[tuple[int, ...], ...]]:
    """conv -> ReLU -> conv, + identity skip of the input, -> ReLU."""
    layers = (
        Conv2d(c, c, 3, (hw, hw), padding=1),
        ReLU(),
        Conv2d(c, c, 3, (hw, hw), padding=1),
        Add(),
        ReLU(),
    )
    return layers, ((-1,), (0,), (1,), (2, -1), (3,))


def test_residual_block_is_one_gate_after_the_add() -> None:
    layers, inputs = _block(4, 6)
    spec = ModelSpec(layers, (4, 6, 6), inputs=inputs)
    y, ref, rounds = _run(spec, _inputs((4, 6, 6)))
    assert np.abs(y - ref).max() <= 2e-3
    # open x, ReLU (2), open, ReLU of conv + lifted x (2); the output is already at 2^f
    assert rounds == plan_of(spec).rounds == 6


def test_downsampling_block_opens_its_input_once_for_both_convolutions() -> None:
    layers = (
        Conv2d(4, 8, 3, (8, 8), stride=2, padding=1),
        ReLU(),
        Conv2d(8, 8, 3, (4, 4), padding=1),
        Conv2d(4, 8, 1, (8, 8), stride=2),  # the 1x1 stride-2 shortcut
        Add(),
        ReLU(),
    )
    spec = ModelSpec(layers, (4, 8, 8), inputs=((-1,), (0,), (1,), (-1,), (2, 3), (4,)))
    plan = plan_of(spec)
    assert len(plan.masks) == 2 and plan.weighted_mask == (0, 1, 0)
    y, ref, rounds = _run(spec, _inputs((4, 8, 8)))
    assert np.abs(y - ref).max() <= 2e-3
    assert rounds == plan.rounds == 6


@pytest.mark.parametrize(("kernel", "stride", "levels"), [(2, 2, 2), (3, 2, 4), (3, 1, 4)])
def test_max_pooling_is_a_tournament_of_relu_gates(kernel: int, stride: int, levels: int) -> None:
    pooled = (8 - kernel) // stride + 1
    layers = (
        Conv2d(2, 3, 3, (10, 10)),
        MaxPool(kernel, stride),  # on the conv's 2^(2f) output: truncated first
        Flatten(),
        Linear(3 * pooled * pooled, 5),
    )
    spec = ModelSpec(layers, (2, 10, 10))
    plan = plan_of(spec)
    assert len(plan.gates) == 1 + levels + 1  # trunc, the tournament, the output's trunc
    y, ref, rounds = _run(spec, _inputs((2, 10, 10), batch=3))
    assert np.abs(y - ref).max() <= 2e-3
    # open x, trunc (1), 2 per level, open, output trunc (1)
    assert rounds == plan.rounds == 1 + 1 + 2 * levels + 1 + 1


@pytest.mark.parametrize("kernel", [2, 3, 8])
def test_average_pooling_and_global_average(kernel: int) -> None:
    pooled = (8 - kernel) // kernel + 1
    layers = (
        Conv2d(2, 4, 3, (8, 8), padding=1),
        ReLU(),
        AvgPool(kernel, kernel),  # kernel 8: the global average
        Flatten(),
        Linear(4 * pooled * pooled, 5),
    )
    spec = ModelSpec(layers, (2, 8, 8))
    y, ref, rounds = _run(spec, _inputs((2, 8, 8)))
    # 1/9 in fixed point is off by at most 9 / 2^17 relative; 1/4 and 1/64 are exact
    assert np.abs(y - ref).max() <= 2e-3
    # open x, ReLU (2), the average's trunc (1), open, output trunc (1)
    assert rounds == plan_of(spec).rounds == 6


def small_resnet(classes: int = 10) -> ModelSpec:
    """Stem conv, an identity block, a downsampling block, global average, linear head."""
    layers: list[object] = [Conv2d(3, 8, 3, (16, 16), padding=1), ReLU()]
    inputs: list[tuple[int, ...]] = [(-1,), (0,)]
    block, block_inputs = _block(8, 16)
    for node, srcs in zip(block, block_inputs, strict=True):
        layers.append(node)
        inputs.append(tuple(s + 2 if s >= 0 else 1 for s in srcs))
    x = len(layers) - 1
    layers += [
        Conv2d(8, 16, 3, (16, 16), stride=2, padding=1),
        ReLU(),
        Conv2d(16, 16, 3, (8, 8), padding=1),
        Conv2d(8, 16, 1, (16, 16), stride=2),
        Add(),
        ReLU(),
        AvgPool(8, 8),
        Flatten(),
        Linear(16, classes),
    ]
    inputs += [(x,), (x + 1,), (x + 2,), (x,), (x + 3, x + 4), (x + 5,), (x + 6,), (x + 7,)]
    inputs.append((x + 8,))
    return ModelSpec(tuple(layers), (3, 16, 16), inputs=tuple(inputs))


def test_a_small_resnet_matches_float64() -> None:
    spec = small_resnet()
    y, ref, rounds = _run(spec, _inputs((3, 16, 16), batch=2), seed=3)
    assert np.abs(ref).max() > 0.1
    assert np.abs(y - ref).max() <= 1e-2
    # stem 3, two blocks 6 each, the average's trunc 1, open 1, output trunc 1
    assert rounds == plan_of(spec).rounds == 3 + 6 + 6 + 3


def test_gates_reaching_the_output_locally_keep_64_bits_with_narrow_lanes() -> None:
    """With L = 48 < 64, gates feeding the output through sums or max keep full-width lanes."""
    narrow = GateParams(16, 31)
    layers = (Conv2d(2, 2, 3, (6, 6), padding=1), ReLU(), Add(), MaxPool(2, 2))
    spec = ModelSpec(layers, (2, 6, 6), narrow, ((-1,), (0,), (1, -1), (2,)))
    plan = plan_of(spec)
    assert [g.out_bits for g in plan.gates] == [64, 64, 64]
    chain = ModelSpec((Linear(4, 3), ReLU(), Linear(3, 2)), (4,), narrow)
    assert [g.out_bits for g in plan_of(chain).gates] == [48, 64]
    y, ref, _ = _run(spec, _inputs((2, 6, 6)) * 4)
    assert np.abs(y - ref).max() <= 2e-3


def test_dag_bundles_cut_stack_and_serve_forwards_with_a_uniform_view() -> None:
    spec = small_resnet(4)
    params = _params(spec, 1)
    dealer, key, models = _models(spec, params)
    made = dealer.preprocess_many(spec, key, 1, 3)
    stacked = tuple(Bundle.concat([m[b] for m in made[1:]]) for b in (0, 1))
    x = _inputs((3, 16, 16), batch=2, seed=5)
    ref = _plain(spec, params, x)
    y, _, sent = forward_pair(models, (stacked[0], stacked[1]), x)
    assert np.abs(y - ref).max() <= 1e-2
    single, _, sent1 = forward_pair(models, made[0], x[:1])
    assert np.abs(single - ref[:1]).max() <= 1e-2 and 2 * sent1 - sent < 2 * 8 * 30
    for value in (0.0, 50.0):  # what party 0 receives online has uniform bits either way
        seen: list[Ring] = []
        pair = dealer.preprocess(spec, key, 4)
        forward_pair(models, pair, np.full((4, 3, 16, 16), value), seen)
        view = np.concatenate([s.reshape(-1) for s in seen])
        freq = np.unpackbits(view.view(np.uint8).reshape(-1, 8), axis=1).mean(axis=0)
        assert np.all(np.abs(freq - 0.5) < 0.01), freq


def test_network_a_chain_keeps_its_rounds_bytes_and_dealer_material() -> None:
    spec = ModelSpec((Linear(784, 128), ReLU(), Linear(128, 128), ReLU(), Linear(128, 10)), (784,))
    plan = plan_of(spec)
    assert plan.rounds == 8 and [g.kind for g in plan.gates] == ["relu", "relu", "trunc_top"]
    assert fast_spec.to_wire(spec)[1][1] == ("relu",) and len(fast_spec.to_wire(spec)) == 2
    bundle = Dealer().preprocess(spec, new_key(), 4)[0]
    # what the chain-only engine made (9cbada3), byte for byte, less the ReLU keys' early
    # termination (104 bytes per element and party, dcf.py; 256 ReLUs per image, 4 images) and
    # the output truncation's DCF (1,031 -> 24 bytes per element, 10 per image; one nonce)
    assert bundle.nbytes == 967_840 - 4 * 256 * 104 - 4 * 10 * (1031 - 24) - NONCE_BYTES
    assert len(bundle.masks) == len(bundle.products) == 3


def _resnet_architecture() -> Architecture:
    layers = (
        dl.Conv2d(3, 4, (3, 3), padding=(1, 1)),
        dl.ReLU(),
        dl.Conv2d(4, 4, (3, 3), padding=(1, 1)),
        dl.Add(),
        dl.ReLU(),
        dl.MaxPool2d((2, 2), (2, 2)),
        dl.AvgPool2d((4, 4), (4, 4)),
        dl.Flatten(),
        dl.Linear(4, 3),
    )
    inputs = ((-1,), (0,), (1,), (2, 1), (3,), (4,), (5,), (6,), (7,))
    return Architecture(layers, (3, 8, 8), (3,), inputs=inputs)


def test_a_dag_architecture_maps_and_its_wire_round_trips() -> None:
    fm = fast_spec.fast_model(_resnet_architecture())
    assert fm is not None and fm.layer_index == (0, 2, 8) and fm.spec.sources(3) == (2, 1)
    wire = fast_spec.to_wire(fm.spec)
    assert len(wire) == 3 and fast_spec.from_wire(wire) == fm.spec
    assert fast_spec.from_wire(fast_spec.to_wire(small_resnet())) == small_resnet()
    affine = Architecture(
        (dl.Linear(4, 4), dl.Affine(4), dl.Add()), (4,), (4,), inputs=((-1,), (0,), (1, 0))
    )
    assert fast_spec.fast_model(affine) is None


def _wire(rows: tuple[tuple[object, ...], ...], inputs: object) -> object:
    return ((4,), rows, inputs)


GOOD_ROWS = (("linear", 4, 4, True), ("relu",), ("add",))


@pytest.mark.parametrize(
    "bad",
    [
        _wire(GOOD_ROWS, ((-1,), (0,), (1, 2))),  # reads itself
        _wire(GOOD_ROWS, ((-1,), (1,), (1, 0))),  # reads a later node
        _wire(GOOD_ROWS, ((-1,), (0,), (1, -2))),  # below the model input
        _wire(GOOD_ROWS, ((-1,), (0,), (1,))),  # Add with one input
        _wire(GOOD_ROWS, ((-1,), (0, -1), (1, 0))),  # ReLU with two
        _wire(GOOD_ROWS, ((-1,), (0,))),  # too few input lists
        _wire(GOOD_ROWS, ((-1,), (0,), (1, True))),  # a bool is no index
        _wire(GOOD_ROWS, ((-1,), (0,), [1, 0])),  # not a tuple
        _wire(GOOD_ROWS, "chain"),
        _wire((("linear", 4, 4, True),) * 257, tuple((i - 1,) for i in range(257))),  # too many
        _wire((("linear", 4, 4, True), ("maxpool", 2, 2)), ((-1,), (0,))),  # pooling a vector
        _wire((("linear", 4, 4, True), ("avgpool", 0, 1)), ((-1,), (0,))),
        _wire((("linear", 4, 4, True), ("add", 1)), ((-1,), (0, -1))),
        _wire((("linear", 4, 3, True), ("add",)), ((-1,), (0, -1))),  # shapes differ
        _wire((("relu",),), ((-1,),)),  # no weighted layer
        ((4,), GOOD_ROWS, ((-1,), (0,), (1, 0)), ()),  # four parts
    ],
)
def test_malformed_wire_specs_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        fast_spec.from_wire(bad)


def test_a_valid_dag_wire_spec_is_accepted() -> None:
    spec = fast_spec.from_wire(_wire(GOOD_ROWS, ((-1,), (0,), (1, -1))))
    assert spec.sources(2) == (1, -1) and isinstance(spec.layers[2], Add)
    with pytest.raises(ValueError):
        _ = spec.stages  # the replicated engine's chain view refuses a graph


def test_every_truncation_is_a_top_bit_gate_of_one_round() -> None:
    """Linear(784 -> 1024) then Linear(1024 -> 10): the hidden layer and the outputs are each
    truncated by a trunc_top gate (its opening only, 24 bytes per element); both match float64."""
    spec = ModelSpec((Linear(784, 1024), Linear(1024, 10)), (784,))
    plan = plan_of(spec)
    assert [g.kind for g in plan.gates] == ["trunc_top", "trunc_top"]
    y, ref, rounds = _run(spec, _inputs((784,)))
    assert np.abs(y - ref).max() <= 2e-3
    # open x; trunc_top: open its masked input; open h; trunc_top: open its input
    assert rounds == plan.rounds == 4
    bundle = Dealer().preprocess(spec, new_key(), 1)[0]
    assert sum(g.nbytes for g in bundle.gates) == 24 * (1024 + 10)
