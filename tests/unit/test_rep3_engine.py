"""Tests for ppml.servers.mpc.rep3: three parties as three threads over counting queue links."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from ppml.servers.mpc.fast.engine import Flatten, ModelSpec, ReLU
from ppml.servers.mpc.fast.linear import Conv2d, Linear
from ppml.servers.mpc.fast.prg import KeyedPRG, Ring
from ppml.servers.mpc.rep3 import compare, engine, keys, rss, select, trunc
from ppml.servers.mpc.rep3.local import QueueNet, mesh, run_three
from ppml.servers.mpc.rep3.rounds import Array, Expect, Round, Steps, gather, run

RNG = KeyedPRG()
SCALE = 1 << 16
EDGES = np.array([0, 1, -1, 2, -2, 1 << 31, -(1 << 31), (1 << 62) - 1, -(1 << 62)], dtype=np.int64)


def split3(x: Ring) -> list[Ring]:
    s1, s2 = RNG.ring(x.shape), RNG.ring(x.shape)
    return [x - s1 - s2, s1, s2]


def three(body: Callable[[keys.Correlated, QueueNet], Any]) -> tuple[list[Any], list[QueueNet]]:
    """Run ``body(corr, net)`` on each party after key agreement; results and nets."""
    nets = mesh()

    def party(i: int) -> Any:
        corr = run(nets[i], keys.agree(i))
        return body(corr, nets[i])

    return run_three([lambda i=i: party(i) for i in range(3)]), list(nets)


def shared_of(corr: keys.Correlated, net: QueueNet, additive: list[Ring]) -> rss.Shared:
    return run(net, rss.reshare(corr, additive[corr.rank]))


def opened(corr: keys.Correlated, net: QueueNet, x: rss.Shared) -> Array:
    return run(net, rss.open_all(corr.rank, x))


def test_gather_takes_the_longest_protocols_rounds_and_keeps_results_apart() -> None:
    def talk(rank: int, times: int, tag: int) -> Steps[list[int]]:
        seen = []
        for k in range(times):
            msg = np.array([tag * 100 + k, rank], dtype=np.int64)
            got = yield Round(
                send={keys.prev_of(rank): [msg]}, expect={keys.next_of(rank): [Expect.like(msg)]}
            )
            seen.append(int(got[keys.next_of(rank)][0][0]))
        return seen

    results, nets = three(
        lambda corr, net: run(net, gather(talk(corr.rank, 2, 1), talk(corr.rank, 5, 2)))
    )
    assert results[0] == [[100, 101], [200, 201, 202, 203, 204]]
    assert [n.rounds for n in nets] == [1 + 5] * 3  # key agreement + the longer protocol


def test_keys_give_zero_sharings_and_no_party_holds_all_three_keys() -> None:
    def body(corr: keys.Correlated, net: QueueNet) -> tuple[Ring, Array, tuple[Ring, Ring]]:
        return corr.zero((1000,)), corr.zero_bits((1000,)), corr.random((1000,))

    results, _ = three(body)
    assert np.all(sum(r[0] for r in results) == 0)
    assert np.all(results[0][1] ^ results[1][1] ^ results[2][1] == 0)
    # party i's second component is party i+1's first: a replicated sharing
    for i in range(3):
        assert np.array_equal(results[i][2][1], results[(i + 1) % 3][2][0])
    # each party alone: its zero share is uniform-looking, not 0
    assert all(np.count_nonzero(r[0]) > 990 for r in results)


def test_reshare_open_and_products_are_exact_on_the_whole_ring() -> None:
    x, y = RNG.ring((300,)), RNG.ring((300,))
    x[:9], y[:9] = EDGES, EDGES[::-1]
    bx, by = RNG.uint64((300,)), RNG.uint64((300,))
    w = RNG.ring((300, 7))

    def body(corr: keys.Correlated, net: QueueNet) -> list[Array]:
        xs, ys = shared_of(corr, net, x_sh), shared_of(corr, net, y_sh)
        bxs = run(net, rss.reshare(corr, bx_sh[corr.rank]))
        bys = run(net, rss.reshare(corr, by_sh[corr.rank]))
        ws = run(net, rss.reshare(corr, w_sh[corr.rank]))
        prod = run(net, rss.mul(corr, xs, ys))
        anded = run(net, rss.and_bits(corr, bxs, bys))
        mm = run(net, rss.reshare(corr, rss.matmul_local(lambda a, b: a[None, :] @ b, xs, ws)))
        return [opened(corr, net, v) for v in (xs, prod, anded, mm)]

    x_sh, y_sh, w_sh = split3(x), split3(y), split3(w)
    b1, b2 = RNG.uint64((300,)), RNG.uint64((300,))
    bx_sh = [bx ^ b1 ^ b2, b1, b2]
    c1, c2 = RNG.uint64((300,)), RNG.uint64((300,))
    by_sh = [by ^ c1 ^ c2, c1, c2]
    results, _ = three(body)
    for r in results:
        assert np.array_equal(r[0], x)
        assert np.array_equal(r[1], x * y)  # wraps mod 2^64 like the ring
        assert np.array_equal(r[2], bx & by)
        assert np.array_equal(r[3], x[None, :] @ w)


def test_sign_circuit_is_exact_for_every_ring_value_in_eight_rounds() -> None:
    x = RNG.ring((4000,))
    x[:9] = EDGES
    x[9:13] = [np.iinfo(np.int64).max, np.iinfo(np.int64).min, -(1 << 62) - 1, 1 << 62]
    x_sh = split3(x)

    def body(corr: keys.Correlated, net: QueueNet) -> tuple[Array, int]:
        xs = shared_of(corr, net, x_sh)
        before = net.rounds
        neg = run(net, compare.negative(corr, xs))
        used = net.rounds - before
        return opened(corr, net, neg), used

    results, _ = three(body)
    for bits, used in results:
        assert np.array_equal(bits, (x < 0).astype(np.uint64))
        assert used == compare.ROUNDS


@pytest.mark.parametrize("source", ["shared", "additive"])
def test_truncation_is_off_by_at_most_one_unit_up_to_the_range_edge(source: str) -> None:
    x = RNG.ring((5000,)) >> np.int64(2)  # |x| < 2^62: the stated range
    x[:9] = EDGES
    x_sh = split3(x)

    def body(corr: keys.Correlated, net: QueueNet) -> Ring:
        if source == "shared":
            return run(net, trunc.from_shared(corr, shared_of(corr, net, x_sh), 16))
        return run(net, trunc.from_additive(corr, x_sh[corr.rank], 16))

    results, _ = three(body)
    assert not np.any(results[2])  # party 2 only masks
    err = sum(results) - (x >> np.int64(16))
    assert set(np.unique(err)) <= {0, 1}


def test_truncation_refuses_a_shift_outside_the_ring() -> None:
    with pytest.raises(ValueError, match="shift"):
        next(trunc.from_additive(_corr(0), np.zeros(3, dtype=np.int64), 62))


def _corr(rank: int) -> keys.Correlated:
    return keys.Correlated(rank, b"\x01" * 32, b"\x02" * 32)


def test_select_and_relu_with_truncation() -> None:
    x = RNG.ring((3000,)) >> np.int64(2)
    x[:9] = EDGES
    bits = (RNG.uint64((3000,)) & np.uint64(1)).astype(np.int64)
    x_sh = split3(x)

    def body(corr: keys.Correlated, net: QueueNet) -> tuple[Array, Array, int]:
        xs = shared_of(corr, net, x_sh)
        b = run(net, rss.reshare(corr, bits_sh[corr.rank]))
        chosen = opened(corr, net, run(net, select.select(corr, b, xs)))
        before = net.rounds
        relu = run(net, select.relu_trunc(corr, xs, 16))
        used = net.rounds - before
        return chosen, opened(corr, net, relu), used

    b1, b2 = RNG.uint64((3000,)), RNG.uint64((3000,))
    bits_sh = [bits.astype(np.uint64) ^ b1 ^ b2, b1, b2]
    results, _ = three(body)
    expected = np.maximum(x >> np.int64(16), 0)
    for chosen, relu, used in results:
        assert np.array_equal(chosen, bits * x)
        assert set(np.unique(relu - expected)) <= {0, 1}
        assert np.all(relu[x < 0] == 0)
        assert used == compare.ROUNDS + select.SELECT_ROUNDS


def _encode(t: torch.Tensor) -> Ring:
    return np.rint(t.detach().double().numpy() * SCALE).astype(np.int64)


def _serve(
    spec: ModelSpec, net: torch.nn.Module, x: torch.Tensor
) -> tuple[np.ndarray, list[QueueNet]]:
    weighted: list[Any] = [
        m for m in net.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
    ]
    w_sh = [split3(_encode(m.weight)) for m in weighted]
    b_sh = [split3(_encode(m.bias)) for m in weighted]
    x_sh = split3(_encode(x))

    def body(corr: keys.Correlated, qn: QueueNet) -> tuple[Ring, int]:
        model = run(
            qn,
            engine.share_model(
                corr, spec, [w[corr.rank] for w in w_sh], [b[corr.rank] for b in b_sh]
            ),
        )
        before = qn.rounds
        out = run(qn, engine.forward(corr, spec, model, x_sh[corr.rank]))
        return out, qn.rounds - before

    results, nets = three(body)
    y = sum(r[0] for r in results).astype(np.float64) / SCALE
    return y, nets


def test_network_a_matches_plaintext_in_25_rounds() -> None:
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Linear(784, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )
    spec = ModelSpec((Linear(784, 128), ReLU(), Linear(128, 128), ReLU(), Linear(128, 10)), (784,))
    x = torch.rand(16, 784)
    y, nets = _serve(spec, net, x)
    assert np.abs(y - net(x).detach().numpy()).max() < 1e-3
    # party 1 takes part in every round; the critical path is 25 exchanges
    forward_rounds = nets[1].rounds - 1 - 1  # minus key agreement and model setup
    assert forward_rounds == 25


def test_cnn_with_convolution_and_flatten_matches_plaintext() -> None:
    torch.manual_seed(2)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 16),
        torch.nn.Linear(16, 3),
    )
    spec = ModelSpec(
        (Conv2d(1, 4, 3, (8, 8), 2, 1), ReLU(), Flatten(), Linear(64, 16), Linear(16, 3)), (1, 8, 8)
    )
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    y, _ = _serve(spec, net, x)
    assert np.abs(y - net(x).detach().numpy()).max() < 1e-3


def test_what_a_party_receives_is_uniform_even_for_all_zero_inputs() -> None:
    """Messages in products, truncation and select look uniform when every secret is 0."""
    zero = [np.zeros(4000, dtype=np.int64)] * 3
    nets = mesh()

    def party(i: int) -> None:
        corr = run(nets[i], keys.agree(i))
        xs = run(nets[i], rss.reshare(corr, zero[i]))
        run(nets[i], rss.mul(corr, xs, xs))
        run(nets[i], select.relu_trunc(corr, xs, 16))

    run_three([lambda i=i: party(i) for i in range(3)])
    for rank, arrays in enumerate(n.received for n in nets):
        data = np.concatenate([a.reshape(-1).view(np.uint8) for a in arrays[1:]])  # skip the key
        ones = np.unpackbits(data).mean()
        assert abs(ones - 0.5) < 0.002, (rank, ones)
