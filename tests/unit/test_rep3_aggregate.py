"""Federation aggregation on replicated shares (rep3.divide, rep3.ranges, service.aggregate).

Three parties as threads over the in-process mesh (``rep3.local``), each
result checked against plaintext on grids that include the ring's edges.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from ppml.proto.domain import federations as fed
from ppml.proto.domain import layers as dl
from ppml.proto.domain.architecture import Architecture
from ppml.servers.mpc.fast.prg import KeyedPRG, Ring
from ppml.servers.mpc.rep3 import accuracy, divide, keys, ranges, rss
from ppml.servers.mpc.rep3.local import QueueNet, mesh, run_three
from ppml.servers.mpc.rep3.rounds import run
from ppml.servers.mpc.rep3.service import aggregate

RNG = KeyedPRG()
SCALE = 1 << 16
TOP = 1 << 63


def split3(x: Ring) -> list[Ring]:
    s1, s2 = RNG.ring(x.shape), RNG.ring(x.shape)
    return [x - s1 - s2, s1, s2]


def three(body: Callable[[keys.Correlated, QueueNet], Any]) -> tuple[list[Any], list[int]]:
    """``body(corr, net)`` on each party after key agreement: results and rounds taken."""
    nets = mesh()

    def party(i: int) -> Any:
        corr = run(nets[i], keys.agree(i))
        before = nets[i].rounds
        return body(corr, nets[i]), nets[i].rounds - before

    out = run_three([lambda i=i: party(i) for i in range(3)])
    return [r for r, _ in out], [n for _, n in out]


def test_division_by_a_public_integer_is_within_two_units_on_the_whole_range() -> None:
    edge = (1 << 62) - 1
    x = np.array(
        [0, 1, -1, 2, -2, 5, -5, 12345, -12345, edge, -edge, edge // 3, -(edge // 7), 1 << 40],
        dtype=np.int64,
    )
    x = np.concatenate([x, RNG.ring((200,)) >> np.int64(2)])  # uniform in [-2^62, 2^62)
    for d in (1, 2, 3, 7, 10, 100, 65536, 1_000_003, (1 << 40) + 1, 1 << 62):
        shares = split3(x)
        results, rounds = three(
            lambda corr, net, d=d, s=shares: run(net, divide.by_public(corr, s[corr.rank], d))
        )
        got = sum(results)  # int64 wraps: additive shares
        exact = np.array([int(v) // d for v in x], dtype=object)
        off = np.array([int(g) - int(e) for g, e in zip(got, exact, strict=True)])
        assert off.min() >= -1 and off.max() <= 2, (d, off.min(), off.max())
        if d == 1:
            assert np.array_equal(got, x)
        assert max(rounds) == divide.ROUNDS


def test_division_refuses_divisors_out_of_range() -> None:
    corr = keys.Correlated(0, b"a" * 32, b"b" * 32)
    for d in (0, -3, (1 << 62) + 1, True):
        with pytest.raises(ValueError, match="divisor"):
            next(divide.by_public(corr, np.zeros(2, dtype=np.int64), d))  # type: ignore[arg-type]


def test_open_sum_reveals_the_sum_and_no_party_share() -> None:
    x = RNG.ring((5,))
    shares = split3(x)
    sent: list[list[Any]] = []

    def body(corr: keys.Correlated, net: QueueNet) -> Ring:
        steps = divide.open_sum(corr, shares[corr.rank])
        message = next(steps)
        sent.append([a for arrays in message.send.values() for a in arrays])
        got = net.exchange(message.send, message.expect)
        try:
            steps.send(got)
        except StopIteration as stop:
            result: Ring = stop.value
            return result
        raise AssertionError("open_sum takes one round")

    results, _ = three(body)
    assert all(np.array_equal(r, x) for r in results)
    for message in sent:  # re-randomised: what a party sends is not its own share
        assert not any(np.array_equal(a, s) for a in message for s in shares)


def test_outside_is_exact_on_the_whole_ring() -> None:
    low, high = SCALE, fed.MAX_UPDATE_WEIGHT * SCALE
    special = [
        low, low - 1, high, high + 1, low + 1, high - 1, 0, -1, -low, -high, TOP - 1, -TOP,
        low - TOP, low - TOP - 1, low - TOP + 1, high - TOP, high - TOP + 1, high - TOP - 1,
        (1 << 62), -(1 << 62), 7 * SCALE, 100 * SCALE,
    ]  # fmt: skip
    x = np.concatenate([np.array(special, dtype=np.int64), RNG.ring((300,))])
    shares = split3(x)

    def body(corr: keys.Correlated, net: QueueNet) -> Any:
        xs = run(net, rss.reshare(corr, shares[corr.rank]))
        before = net.rounds
        bad = run(net, ranges.outside(corr, xs, low, high))
        used = net.rounds - before
        return run(net, rss.open_all(corr.rank, bad)), used

    results, _ = three(body)
    opened = results[0][0]
    assert all(np.array_equal(r[0], opened) for r in results)
    expected = (x < low) | (x > high)
    assert np.array_equal(opened, expected.astype(np.uint64))
    assert results[0][1] == ranges.ROUNDS
    with pytest.raises(ValueError, match="bounds"):
        next(ranges.outside(keys.Correlated(0, b"a" * 32, b"b" * 32), rss.Shared(x, x), 5, 4))


def test_check_weights_opens_one_bit_per_weight() -> None:
    garbage = RNG.ring((1,))
    weights = np.array([10 * SCALE, 0, garbage[0], 2**24 * SCALE, 2**24 * SCALE + 1, SCALE])
    shares = split3(weights.astype(np.int64))
    results, rounds = three(
        lambda corr, net: run(
            net, aggregate.check_weights(corr, shares[corr.rank], SCALE, 2**24 * SCALE)
        )
    )
    expected = [True, False, bool(SCALE <= garbage[0] <= 2**24 * SCALE), True, False, True]
    assert results == [expected] * 3
    assert max(rounds) == 11


def test_average_is_the_sample_weighted_average_within_fixed_point() -> None:
    rng = np.random.default_rng(0)  # public: test values
    rows = [10, 30, 60]
    deltas = [rng.normal(0, 0.5, 50) for _ in rows]
    submitted = [np.rint(n * d * SCALE).astype(np.int64) for n, d in zip(rows, deltas, strict=True)]
    update_shares = [split3(s) for s in submitted]
    weight_shares = [split3(np.array([n * SCALE], dtype=np.int64)) for n in rows]

    def body(corr: keys.Correlated, net: QueueNet) -> tuple[Ring, float]:
        summed = np.sum([u[corr.rank] for u in update_shares], axis=0)
        total = np.sum([w[corr.rank] for w in weight_shares], axis=0)
        return run(net, aggregate.average(corr, summed, total))

    results, rounds = three(body)
    assert [t for _, t in results] == [100.0] * 3
    got = np.sum([s for s, _ in results], axis=0).astype(np.float64) / SCALE
    expected = np.sum(submitted, axis=0) / SCALE / sum(rows)
    assert np.max(np.abs(got - expected)) <= 2 / SCALE
    assert max(rounds) == 3
    # every party's share is re-randomised: party 2's is not zero
    assert np.any(results[2][0] != 0)


def test_a_total_weight_below_one_fails_on_every_party() -> None:
    zero = split3(np.zeros(1, dtype=np.int64))
    with pytest.raises(ValueError, match="total sample count"):
        three(
            lambda corr, net: run(
                net, aggregate.average(corr, np.zeros(3, np.int64), zero[corr.rank])
            )
        )


def test_dp_and_engine_less_layers_are_refused_naming_them() -> None:
    mlp = Architecture((dl.Linear(4, 3), dl.ReLU(), dl.Linear(3, 2)), (4,), (2,))
    plain = fed.FederationSpec(participants=("a", "b"), rounds=1)
    assert aggregate.unsupported_federation(mlp, plain) is None
    dp = fed.FederationSpec(("a", "b"), 1, dp=fed.DpSettings(clip_norm=1.0, noise_multiplier=1.0))
    why = aggregate.unsupported_federation(mlp, dp)
    assert why is not None and "DP" in why and "replicated" in why
    affine = Architecture((dl.Linear(4, 3), dl.Affine((3,)), dl.Linear(3, 2)), (4,), (2,))
    why = aggregate.unsupported_federation(affine, plain)
    assert why is not None and "Affine" in why


@pytest.mark.parametrize("classes", [2, 3, 10])
def test_count_correct_argmax_matches_plaintext(classes: int) -> None:
    rng = np.random.default_rng(classes)  # public: test values
    rows = 64
    outputs = rng.normal(0, 3, (rows, classes))
    outputs[0] = 1e4 * np.eye(classes)[0]  # large, and edges of the fixed-point range
    outputs[1] = -1e4 * np.eye(classes)[1]
    truth = rng.integers(0, classes, rows)
    truth[:8] = np.argmax(outputs[:8], axis=1)  # some rows right for sure
    onehot = np.eye(classes)[truth]
    o_sh = split3(np.rint(outputs * SCALE).astype(np.int64))
    y_sh = split3(np.rint(onehot * SCALE).astype(np.int64))
    results, rounds = three(
        lambda corr, net: run(
            net, accuracy.count_correct(corr, o_sh[corr.rank], y_sh[corr.rank], "argmax")
        )
    )
    assert max(rounds) == 1 + 1 + 8 + math.ceil(math.log2(classes)) + 2  # input reshare first
    assert all(r.shape == () for r in results)
    count = float(sum(results)) / SCALE
    assert count == float(np.sum(np.argmax(outputs, axis=1) == truth))
    assert 8 <= count < rows


def test_count_correct_sign_matches_plaintext() -> None:
    rng = np.random.default_rng(7)  # public: test values
    outputs = rng.normal(0, 2, (50, 1))
    outputs[:3, 0] = [0.0, 2**-16, -(2**-16)]  # gt(0): 0 is class 0
    truth = rng.integers(0, 2, 50)
    o_sh = split3(np.rint(outputs * SCALE).astype(np.int64))
    y_sh = split3(np.rint(np.eye(2)[truth] * SCALE).astype(np.int64))
    results, _ = three(
        lambda corr, net: run(
            net, accuracy.count_correct(corr, o_sh[corr.rank], y_sh[corr.rank], "sign")
        )
    )
    count = float(sum(results)) / SCALE
    assert count == float(np.sum((outputs[:, 0] > 0) == (truth == 1)))
