"""Tests for ppml.servers.mpc.fast.engine: two parties as two threads with queue exchanges."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from ppml.servers.mpc.fast.bundle import arrays_from_bytes, arrays_to_bytes
from ppml.servers.mpc.fast.dcf import NONCE_BYTES
from ppml.servers.mpc.fast.engine import (
    Bundle,
    Dealer,
    Flatten,
    ModelSetup,
    ModelSpec,
    PartyModel,
    ReLU,
    forward,
    prepare,
)
from ppml.servers.mpc.fast.gates import split
from ppml.servers.mpc.fast.linear import Conv2d, Linear
from ppml.servers.mpc.fast.local import queue_exchanges, run_pair
from ppml.servers.mpc.fast.prg import KeyedPRG, Ring, new_key

RNG = KeyedPRG()
SCALE = 1 << 16
NETWORK_A = ModelSpec((Linear(784, 128), ReLU(), Linear(128, 128), ReLU(), Linear(128, 10)), (784,))


def _encode(t: torch.Tensor) -> Ring:
    return np.rint(t.detach().double().numpy() * SCALE).astype(np.int64)


def _weighted(net: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in net.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]


def _setup(
    spec: ModelSpec, net: torch.nn.Module
) -> tuple[Dealer, bytes, tuple[PartyModel, PartyModel]]:
    """Model owner shares the weights; dealer shares masks; parties open W - B."""
    dealer, key = Dealer(), new_key()
    setups = dealer.model_setup(spec, key)
    w = [split(_encode(m.weight), RNG) for m in _weighted(net)]
    b = [split(_encode(m.bias), RNG) for m in _weighted(net)]
    ex0, ex1 = queue_exchanges()

    def party(i: int, ex: Callable[[Ring], Ring]) -> Callable[[], PartyModel]:
        setup = ModelSetup.from_bytes(setups[i].to_bytes())
        return lambda: PartyModel.open(spec, setup, [p[i] for p in w], [p[i] for p in b], ex)

    return dealer, key, run_pair(party(0, ex0), party(1, ex1))


def _infer(
    spec: ModelSpec,
    dealer: Dealer,
    key: bytes,
    models: tuple[PartyModel, PartyModel],
    x: torch.Tensor,
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    bundles = [Bundle.from_bytes(b.to_bytes()) for b in dealer.preprocess(spec, key, x.shape[0])]
    xs = split(_encode(x), RNG)
    ex0, ex1 = queue_exchanges()
    (y0, s0), (y1, s1) = run_pair(
        lambda: forward(models[0], bundles[0], xs[0], ex0),
        lambda: forward(models[1], prepare(models[1], bundles[1]), xs[1], ex1),
    )
    with np.errstate(over="ignore"):
        y = (y0 + y1).astype(np.float64) / SCALE
    return y, (s0.rounds, s0.bytes_sent), (s1.rounds, s1.bytes_sent)


def _network_a(weight_scale: float = 1.0) -> torch.nn.Module:
    torch.manual_seed(0)  # public test weights; the engine itself draws no torch randomness
    net = torch.nn.Sequential(
        torch.nn.Linear(784, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(weight_scale)
    return net


@pytest.mark.parametrize("batch", [1, 7])
def test_network_a_matches_plaintext(batch: int) -> None:
    net = _network_a()
    dealer, key, models = _setup(NETWORK_A, net)
    x = torch.rand(batch, 784)
    y, c0, c1 = _infer(NETWORK_A, dealer, key, models, x)
    assert np.abs(y - net(x).detach().numpy()).max() <= 1e-3
    sign_bits = 2 * 8 * -(-128 * batch // 64)  # each ReLU layer opens 128 bits, in int64 words
    assert c0 == c1 == (8, 8 * batch * (784 + 4 * 128 + 10) + sign_bits)


def _quantised(net: torch.nn.Module) -> torch.nn.Module:
    """float64 copy of ``net`` with every parameter rounded to the fixed-point grid."""
    q = copy.deepcopy(net).double()
    with torch.no_grad():
        for p in q.parameters():
            p.copy_(torch.round(p * SCALE) / SCALE)
    return q


def test_network_a_large_activations_and_negative_inputs() -> None:
    """Weights x4, inputs in [-8, 8): outputs in the tens. The protocol's own error (vs the
    same fixed-point weights and inputs in float64) stays within 1e-3; the rest of the gap to
    float32 torch is fixed-point encoding, which any 16-bit engine has."""
    net = _network_a(4.0)
    dealer, key, models = _setup(NETWORK_A, net)
    x = torch.round((torch.rand(4, 784) * 16 - 8) * SCALE) / SCALE
    y, _, _ = _infer(NETWORK_A, dealer, key, models, x)
    ref = _quantised(net)(x.double()).detach().numpy()
    assert np.abs(ref).max() > 30
    assert np.abs(y - ref).max() <= 1e-3


def test_models_are_reusable_across_requests_with_fresh_bundles() -> None:
    net = _network_a()
    dealer, key, models = _setup(NETWORK_A, net)
    for _ in range(3):
        x = torch.rand(2, 784)
        y, _, _ = _infer(NETWORK_A, dealer, key, models, x)
        assert np.abs(y - net(x).detach().numpy()).max() <= 1e-3


def _run(models: tuple[PartyModel, PartyModel], bundles: list[Bundle], x: torch.Tensor) -> Any:
    """Both parties' forward of ``x`` on ``bundles``, reconstructed to floats."""
    xs = split(_encode(x), RNG)
    ex0, ex1 = queue_exchanges()
    (y0, _), (y1, _) = run_pair(
        lambda: forward(models[0], bundles[0], xs[0], ex0),
        lambda: forward(models[1], bundles[1], xs[1], ex1),
    )
    with np.errstate(over="ignore"):
        return (y0 + y1).astype(np.float64) / SCALE


def test_single_image_bundles_stack_into_a_batch() -> None:
    """A dynamic batch of 5 runs on 5 concatenated single-image bundles."""
    net = _network_a()
    dealer, key, models = _setup(NETWORK_A, net)
    singles = [dealer.preprocess(NETWORK_A, key, 1) for _ in range(5)]
    bundles = [Bundle.concat([s[b] for s in singles]) for b in (0, 1)]
    assert bundles[0].batch == 5 and bundles[1].party == 1
    x = torch.rand(5, 784)
    assert np.abs(_run(models, bundles, x) - net(x).detach().numpy()).max() <= 1e-3
    with pytest.raises(ValueError):
        Bundle.concat([singles[0][0], singles[1][1]])


def test_the_head_of_a_bundle_serves_fewer_rows() -> None:
    """A pooled bundle for 8 serves a batch of 5: its first rows, through the wire format."""
    net = _network_a()
    dealer, key, models = _setup(NETWORK_A, net)
    wide = [Bundle.from_bytes(b.to_bytes()) for b in dealer.preprocess(NETWORK_A, key, 8)]
    bundles = [b.head(5) for b in wide]
    # one DCF nonce per gate with DCF keys (not the truncation's), whatever the rows
    nonces = sum(g.dcf is not None for g in wide[0].gates) * NONCE_BYTES
    assert (
        bundles[0].batch == 5 and bundles[0].nbytes - nonces == 5 * (wide[0].nbytes - nonces) // 8
    )
    x = torch.rand(5, 784) * 4 - 2
    assert np.abs(_run(models, bundles, x) - net(x).detach().numpy()).max() <= 1e-3
    assert wide[0].head(8) is wide[0]
    for rows in (0, 9):
        with pytest.raises(ValueError):
            wide[0].head(rows)


def test_bundles_made_in_one_pass_each_serve_a_forward() -> None:
    """preprocess_many cuts one generation into bundles: each is a whole, independent bundle
    (through the wire format), with fresh masks of its own."""
    net = _network_a()
    dealer, key, models = _setup(NETWORK_A, net)
    made = dealer.preprocess_many(NETWORK_A, key, 2, 3)
    assert len(made) == 3 and all(a.batch == b.batch == 2 for a, b in made)
    for pair in made:
        bundles = [Bundle.from_bytes(b.to_bytes()) for b in pair]
        x = torch.rand(2, 784) * 4 - 2
        assert np.abs(_run(models, bundles, x) - net(x).detach().numpy()).max() <= 1e-3
    masks = [pair[0].masks[0] for pair in made]
    assert not np.array_equal(masks[0], masks[1])
    with pytest.raises(ValueError):
        made[0][0].rows(1, 3)
    with pytest.raises(ValueError):
        dealer.preprocess_many(NETWORK_A, key, 2, 0)


def test_the_wire_container_round_trips_and_refuses_what_it_does_not_know() -> None:
    arrays = {
        "a": np.arange(-3, 3, dtype=np.int64).reshape(2, 3),
        "b": np.array([1, 2**63], dtype=np.uint64),
        "c": np.array([1, 2], dtype=np.uint32),
        "d": np.array([7], dtype=np.uint16),
        "e": np.zeros((0, 4), dtype=np.uint8),
    }
    data = arrays_to_bytes(arrays)
    back = arrays_from_bytes(data)
    assert list(back) == list(arrays)
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value)
        assert not back[name].flags.writeable  # views into the received bytes
    for bad in (np.array([1.5]), np.array(["x"]), np.array([1], dtype=np.int32)):
        with pytest.raises(ValueError):
            arrays_to_bytes({"x": bad})
    for broken in (b"", b"not a container at all", data[:-9], b"PPMLFB01\xff\xff\xff\xff"):
        with pytest.raises(ValueError):
            arrays_from_bytes(broken)


def test_conv_flatten_linear_model() -> None:
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, stride=1, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 10),
    )
    spec = ModelSpec(
        (Conv2d(1, 4, 3, (8, 8), padding=1), ReLU(), Flatten(), Linear(256, 10)), (1, 8, 8)
    )
    dealer, key, models = _setup(spec, net)
    x = torch.rand(3, 1, 8, 8)
    y, c0, _ = _infer(spec, dealer, key, models, x)
    assert np.abs(y - net(x).detach().numpy()).max() <= 1e-3
    assert c0 == (5, 8 * 3 * (64 + 256 + 256 + 10) + 3 * 256 // 8)  # + the ReLU's sign bits


def _bit_frequencies(a: np.ndarray) -> np.ndarray:
    return np.unpackbits(a.view(np.uint8).reshape(-1, 8), axis=1).mean(axis=0)


def test_masked_weights_are_uniform_and_independent_of_weights() -> None:
    """W - B looks the same (uniform bits, no correlation) for W = 0 and for a structured W."""
    spec = ModelSpec((Linear(784, 128),), (784,))
    structured = (np.arange(784 * 128, dtype=np.int64).reshape(128, 784) % 97 - 48) << 12
    masked = []
    for w in (np.zeros((128, 784), dtype=np.int64), structured):
        dealer, key = Dealer(), new_key()
        setups = dealer.model_setup(spec, key)
        w0, w1 = split(w, RNG)
        ex0, ex1 = queue_exchanges()
        m0, _ = run_pair(
            lambda s=setups, a=w0, e=ex0: PartyModel.open(spec, s[0], [a], [None], e),
            lambda s=setups, a=w1, e=ex1: PartyModel.open(spec, s[1], [a], [None], e),
        )
        masked.append(m0.masked_t[0].T.copy())
    for hat in masked:
        freq = _bit_frequencies(hat)  # 100352 samples per bit: sd 0.0016
        assert np.all(np.abs(freq - 0.5) < 0.01)
    hat = masked[1].astype(np.float64)
    corr = np.corrcoef(hat.reshape(-1), structured.astype(np.float64).reshape(-1))[0, 1]
    assert abs(corr) < 0.02
    # the same mask key would give W^ - W^' = W - W': fresh keys per model make them unrelated
    assert abs(np.corrcoef(masked[0].reshape(-1) >> 40, masked[1].reshape(-1) >> 40)[0, 1]) < 0.02


def _party0_view(
    dealer: Dealer, key: bytes, models: tuple[PartyModel, PartyModel], x: torch.Tensor
) -> np.ndarray:
    """Every value party 0 receives from party 1 during one forward, concatenated."""
    received: list[np.ndarray] = []
    ex0, ex1 = queue_exchanges()

    def spy(mine: Ring) -> Ring:
        peer = ex0(mine)
        received.append(peer.copy())
        return peer

    bundles = dealer.preprocess(NETWORK_A, key, x.shape[0])
    xs = split(_encode(x), RNG)
    run_pair(
        lambda: forward(models[0], bundles[0], xs[0], spy),
        lambda: forward(models[1], bundles[1], xs[1], ex1),
    )
    return np.concatenate([r.reshape(-1) for r in received])


def test_a_party_view_is_uniform_for_any_input() -> None:
    """Everything party 0 receives online has uniform bits, for a zero and a large input."""
    net = _network_a()
    dealer, key, models = _setup(NETWORK_A, net)
    for value in (0.0, 100.0):
        view = _party0_view(dealer, key, models, torch.full((16, 784), value))
        freq = _bit_frequencies(view)
        assert np.all(np.abs(freq - 0.5) < 0.02), freq


def test_rejects_bad_architectures_inputs_and_bundles() -> None:
    with pytest.raises(ValueError):
        _ = ModelSpec((ReLU(), Linear(4, 2)), (4,)).stages
    with pytest.raises(ValueError):
        _ = ModelSpec((Linear(4, 2), ReLU(), ReLU()), (4,)).stages
    with pytest.raises(ValueError):
        _ = ModelSpec((Linear(4, 2), Linear(3, 2)), (4,)).stages
    spec = ModelSpec((Linear(4, 2), ReLU(), Linear(2, 2)), (4,))
    net = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    dealer, key, models = _setup(spec, net)
    b0, b1 = dealer.preprocess(spec, key, 3)
    with pytest.raises(ValueError):
        prepare(models[0], b1)
    with pytest.raises(ValueError):
        forward(models[0], b0, np.zeros((2, 4), dtype=np.int64), lambda a: a)
    with pytest.raises(ValueError):
        dealer.preprocess(spec, key, 0)
