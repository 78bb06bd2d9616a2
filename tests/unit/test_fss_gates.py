"""Tests for ppml.servers.mpc.fast.gates and linear: FSS gates and ring layers against plaintext."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppml.servers.mpc.fast.dcf import NONCE_BYTES
from ppml.servers.mpc.fast.gates import (
    GATES,
    TRUNC_TOP,
    GateKey,
    GateParams,
    ReluTrunc,
    RowMaxRelu,
    TruncTop,
    split,
)
from ppml.servers.mpc.fast.linear import Conv2d, Linear, ring_matmul
from ppml.servers.mpc.fast.local import queue_exchanges, run_pair
from ppml.servers.mpc.fast.prg import KeyedPRG

RNG = KeyedPRG()
DEFAULT = GateParams()
NARROW = GateParams(16, 31)  # the former default: L = 48 < 64, narrow DCF lanes between layers
F = DEFAULT.frac_bits
Gate = type[ReluTrunc] | TruncTop


def _eval_both(
    gate: Gate,
    p: GateParams,
    keys: tuple[GateKey, GateKey],
    opened: np.ndarray,
    seen: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Both parties' output shares, evaluated in two threads (ReLU opens a bit between them);
    ``seen`` collects party 0's (sent, received) arrays."""
    ex0, ex1 = queue_exchanges()

    def spy(mine: np.ndarray) -> np.ndarray:
        peer = ex0(mine)
        if seen is not None:
            seen.append((mine, peer))
        return peer

    return run_pair(
        lambda: gate.eval(p, keys[0], opened, None, spy),
        lambda: gate.eval(p, keys[1], opened, None, ex1),
    )


def _run_gate(gate: Gate, p: GateParams, z: np.ndarray, out_bits: int = 64) -> np.ndarray:
    """Share z, mask, open, evaluate both keys, reconstruct."""
    keys = gate.gen(p, z.size, RNG, None, out_bits)
    z0, z1 = split(z, RNG)
    with np.errstate(over="ignore"):
        opened = (z0 + keys[0].mask) + (z1 + keys[1].mask)
        y0, y1 = _eval_both(gate, p, keys, opened)
        return y0 + y1


def _check(gate: Gate, p: GateParams, z: np.ndarray) -> np.ndarray:
    """y is floor(z / 2^f) + carry (ReLU'd for the ReLU gate), carry 0 when z's low bits are 0."""
    y = _run_gate(gate, p, z)
    floor = z >> np.int64(p.frac_bits)
    lo, hi = (
        (np.maximum(floor, 0), np.maximum(floor + 1, 0))
        if gate is ReluTrunc
        else (floor, floor + 1)
    )
    exact = (z & ((1 << p.frac_bits) - 1)) == 0
    assert np.all((y == lo) | ((y == hi) & ~exact)), z[~((y == lo) | ((y == hi) & ~exact))][:5]
    return y


def _bounds(p: GateParams, gate: Gate = ReluTrunc) -> tuple[int, int]:
    """ReLU's range, or (truncation alone) one bit less: [-2^(L-2), 2^(L-2))."""
    if gate is TRUNC_TOP:
        return -(1 << (p.low_bits - 2)), (1 << (p.low_bits - 2)) - 1
    return -(1 << (p.depth + p.frac_bits)), (1 << (p.depth + p.frac_bits)) - (1 << p.frac_bits)


def _uniform(n: int, p: GateParams, gate: Gate) -> np.ndarray:
    """n values uniform over the gate's range."""
    lo, hi = _bounds(p, gate)
    return np.clip(RNG.ring(n) >> np.int64(64 - lo.bit_length()), lo, hi)


@pytest.mark.parametrize("gate", [ReluTrunc, TRUNC_TOP])
@pytest.mark.parametrize(("f", "depth"), [(2, 3), (0, 4), (3, 1), (4, 6)])
def test_exhaustive_small_parameters(gate: Gate, f: int, depth: int) -> None:
    p = GateParams(f, depth)
    lo, hi = _bounds(p, gate)
    z = np.repeat(np.arange(lo, hi + 1, dtype=np.int64), 8)  # 8 fresh masks per value
    _check(gate, p, z)


def _edges(p: GateParams, gate: Gate = ReluTrunc) -> np.ndarray:
    """Around 0, the range's ends and (default range) large pre-activations at scale 2^(2f)."""
    lo, hi = _bounds(p, gate)
    one = 1 << F  # 2^-16 in real units after truncation, i.e. 1 ulp of the output
    vals = [0, 1, -1, one, -one, one - 1, -one + 1, one + 1, -one - 1, 2 * one, -2 * one]
    vals += [lo, lo + 1, lo + one, hi, hi - 1, hi - one, 12345 << F, -(12345 << F)]
    real = [2e5, 1e6, 2.0**15, 2.0**15 + 0.5, 2.0**29, 2.0**30, 2.0**31 - 1.0, 2.0**31 - 2.0**-16]
    vals += [v for r in real for v in (int(r * 2**32), -int(r * 2**32), int(r * 2**32) + 12345)]
    return np.array([v for v in vals if lo <= v <= hi], dtype=np.int64)


@pytest.mark.parametrize(
    ("gate", "ends", "top"),
    [(ReluTrunc, (-(2**63), 2**63 - 2**F), 2.0**30), (TRUNC_TOP, (-(2**62), 2**62 - 1), 2.0**29)],
)
def test_default_parameters_edges_and_random(gate: Gate, ends: tuple[int, int], top: float) -> None:
    """ReLU's default range is the whole ring (every z from -2^63 to 2^63 - 2^f); truncation
    alone takes half of it, [-2^62, 2^62): |v| < 2^30 at product scale 2^32."""
    assert _bounds(DEFAULT, gate) == ends
    edges = _edges(DEFAULT, gate)
    assert {ends[0], ends[1]} <= set(edges.tolist())
    large = {int(r * 2**32) * sign for r in (2e5, 1e6, top) for sign in (1, -1)}
    assert large <= set(edges.tolist())  # all in range (none was at depth 31)
    z = np.concatenate([np.repeat(edges, 20), _uniform(4000, DEFAULT, gate)])
    y = _check(gate, DEFAULT, z)
    if gate is ReluTrunc:
        assert np.all(y[z < 0] == 0)
    big = z == -int(2e5 * 2**32)  # an idle hidden unit of issue 18's digits MLP
    assert np.all(y[big] == (0 if gate is ReluTrunc else -int(2e5 * 2**16)))


@pytest.mark.parametrize("p", [DEFAULT, NARROW])
@pytest.mark.parametrize("gate", [ReluTrunc, TRUNC_TOP])
def test_between_layers_output_is_right_modulo_low_bits(gate: Gate, p: GateParams) -> None:
    """With out_bits = L, y is exact modulo 2^L (all the next layer uses); the gates read only
    o mod 2^L, so inputs right mod 2^L are enough."""
    z = np.concatenate([np.repeat(_edges(p, gate), 10), _uniform(3000, p, gate)])
    y = _run_gate(gate, p, z, p.low_bits)
    floor = z >> np.int64(F)
    relu = gate is ReluTrunc
    lo, hi = (np.maximum(floor, 0), np.maximum(floor + 1, 0)) if relu else (floor, floor + 1)
    exact = (z & ((1 << F) - 1)) == 0
    low = np.array((1 << p.low_bits) - 1, dtype=np.uint64).view(np.int64)  # L = 64: all ones
    with np.errstate(over="ignore"):
        assert np.all((((y - lo) & low) == 0) | ((((y - hi) & low) == 0) & ~exact))


def test_default_bound_is_documented_range() -> None:
    """The default covers the whole ring: |v| < 2^31 at product scale 2^32, L = 64."""
    assert DEFAULT.depth == 47 and DEFAULT.real_bound == 2.0**31
    assert DEFAULT.low_bits == 64
    assert NARROW.real_bound == 2.0**15 and NARROW.low_bits == 48
    with pytest.raises(ValueError):
        GateParams(16, 48)  # would need 65 low bits


def test_truncation_is_stochastic_rounding_unbiased() -> None:
    """z = k + 1/4 ulp: the output is k + 1 with probability 1/4 (fresh masks)."""
    n = 20000
    z = np.full(n, (7 << F) + (1 << (F - 2)), dtype=np.int64)
    y = _run_gate(TRUNC_TOP, DEFAULT, z)
    assert set(np.unique(y).tolist()) <= {7, 8}
    assert abs(float(np.mean(y == 8)) - 0.25) < 0.02


def test_one_party_output_share_is_uniform_whatever_z() -> None:
    """Party 0's output share (top 4 bits) is uniform for z = 0 and for z = 5.0 (6 sd bounds)."""
    n = 16000
    for z in (np.zeros(n, dtype=np.int64), np.full(n, 5 << (2 * F), dtype=np.int64)):
        k0, k1 = ReluTrunc.gen(DEFAULT, n, RNG)
        z0, z1 = split(z, RNG)
        with np.errstate(over="ignore"):
            opened = (z0 + k0.mask) + (z1 + k1.mask)
        share, _ = _eval_both(ReluTrunc, DEFAULT, (k0, k1), opened)
        top = (share.view(np.uint64) >> np.uint64(60)).astype(np.int64)
        counts = np.bincount(top, minlength=16)
        assert counts.min() > n / 16 * 0.8 and counts.max() < n / 16 * 1.2


def test_gate_key_round_trip_and_registry() -> None:
    k0, _ = GATES["relu"].gen(DEFAULT, 5, RNG)
    k = GateKey.from_arrays(k0.to_arrays("g"), "g")
    assert k.kind == "relu" and np.array_equal(k.consts, k0.consts) and k.party == 0
    _, t1 = GATES["trunc_top"].gen(DEFAULT, 5, RNG)
    t = GateKey.from_arrays(t1.to_arrays("g"), "g")
    assert t.kind == "trunc_top" and t.dcf is None and t.party == 1
    assert np.array_equal(t.consts, t1.consts) and t.take(1, 3).party == 1
    assert GateKey.concat([t, t.head(2)]).size == 7
    with pytest.raises(ValueError, match="without DCF"):
        _ = t.fss
    with pytest.raises(ValueError, match="one kind and party"):
        GateKey.concat([t, GATES["trunc_top"].gen(DEFAULT, 5, RNG)[0]])
    bad = {**t1.to_arrays("g"), "g.owner": np.array([2])}
    with pytest.raises(ValueError, match="owner"):
        GateKey.from_arrays(bad, "g")
    assert set(GATES) == {"relu", "relu_row", "trunc_top", "trunc_top_wide"}


def test_the_row_max_relu_is_relu_on_its_narrower_range() -> None:
    """relu_row (a softmax row's max): depth 13 + f = 29, so |v| < 2^13 at product scale 2^32:
    exact ReLU with stochastic rounding there, ends included; a smaller key; a ReLU key of
    the full depth refused, and vice versa."""
    narrow = RowMaxRelu.params(DEFAULT)
    assert narrow == GateParams(F, 29) and RowMaxRelu.params(GateParams(16, 20)).depth == 20
    lo, hi = -(1 << (29 + F)), (1 << (29 + F)) - (1 << F)  # real [-8192, 8192 - 2^-16]
    one = 1 << F
    edges = [lo, lo + 1, lo + one, hi, hi - 1, hi - one, 0, 1, -1, one, -one, 4096 << (2 * F)]
    z = np.concatenate(
        [np.repeat(np.array(edges, dtype=np.int64), 20), _uniform(4000, narrow, ReluTrunc)]
    )
    y = _run_gate(RowMaxRelu, DEFAULT, z)
    floor = np.maximum(z >> np.int64(F), 0)
    exact = (z & (one - 1)) == 0
    assert np.all((y == floor) | ((y == floor + 1) & ~exact) & (z >= 0))
    assert np.all(y[z < 0] == 0)
    k0, _ = RowMaxRelu.gen(DEFAULT, 10, RNG)
    assert k0.kind == "relu_row" and k0.fss.depth == 29
    assert (k0.nbytes - NONCE_BYTES) / 10 == 8 + 40 + 16 + (29 - 7) * 17 + 16 == 454
    full, _ = ReluTrunc.gen(DEFAULT, 10, RNG)
    with pytest.raises(ValueError, match="depth"):
        RowMaxRelu.eval(DEFAULT, full, np.zeros(10, dtype=np.int64), None, lambda a: a)
    with pytest.raises(ValueError, match="depth"):
        ReluTrunc.eval(DEFAULT, k0, np.zeros(10, dtype=np.int64), None, lambda a: a)


def test_key_bytes_per_element() -> None:
    """The sizes stated in gates.py's docstring (plus one DCF nonce per key set), and
    full-width ReLU at the model output."""

    def per_element(p: GateParams, gate: Gate, out_bits: int) -> float:
        return (gate.gen(p, 10, RNG, None, out_bits)[0].nbytes - NONCE_BYTES) / 10

    assert per_element(DEFAULT, ReluTrunc, DEFAULT.low_bits) == 760  # 864 without early exit
    low = NARROW.low_bits
    assert per_element(NARROW, ReluTrunc, low) == 488
    assert per_element(NARROW, ReluTrunc, 64) == 488  # the one-bit lane does not widen
    for p in (DEFAULT, NARROW):  # mask and two constants, no DCF and so no nonce
        assert TRUNC_TOP.gen(p, 10, RNG, None, p.low_bits)[0].nbytes == 24 * 10
    with pytest.raises(ValueError):
        NARROW.lanes("relu", low - 1)


@pytest.mark.parametrize(("m", "k", "n"), [(1, 784, 128), (64, 784, 128), (3, 5, 7)])
def test_ring_matmul_wraps_like_numpy(m: int, k: int, n: int) -> None:
    a, b = RNG.ring((m, k)), RNG.ring((k, n))
    with np.errstate(over="ignore"):
        assert np.array_equal(ring_matmul(a, b), a @ b)
    assert np.array_equal(ring_matmul(a, np.ascontiguousarray(b.T).T), a @ b)


def test_linear_and_conv_match_torch_on_small_integers() -> None:
    lin = Linear(6, 4)
    x = np.arange(-12, 12, dtype=np.int64).reshape(4, 6)
    w = np.arange(24, dtype=np.int64).reshape(4, 6) - 7
    assert np.array_equal(lin.apply(x, lin.transpose(w)), x @ w.T)
    conv = Conv2d(2, 3, 3, (6, 5), stride=2, padding=1)
    x = (np.arange(2 * 2 * 6 * 5, dtype=np.int64) % 11 - 5).reshape(2, 2, 6, 5)
    w = (np.arange(3 * 2 * 9, dtype=np.int64) % 7 - 3).reshape(conv.weight_shape)
    want = torch.nn.functional.conv2d(
        torch.from_numpy(x).double(), torch.from_numpy(w).double(), stride=2, padding=1
    )
    got = conv.apply(x, conv.transpose(w))
    assert got.shape == (2, *conv.out_shape) == tuple(want.shape)
    assert np.array_equal(got, want.numpy().astype(np.int64))


def test_relu_opens_a_uniform_bit_whatever_the_sign() -> None:
    """The second round opens D XOR rho: half ones for all-positive and all-negative z alike."""
    n = 8192
    for value in (5 << (2 * F), -(5 << (2 * F))):
        z = np.full(n, value, dtype=np.int64)
        k0, k1 = ReluTrunc.gen(DEFAULT, n, RNG)
        z0, z1 = split(z, RNG)
        with np.errstate(over="ignore"):
            opened = (z0 + k0.mask) + (z1 + k1.mask)
        seen: list[tuple[np.ndarray, np.ndarray]] = []
        y0, y1 = _eval_both(ReluTrunc, DEFAULT, (k0, k1), opened, seen)
        ((mine, peer),) = seen
        bits = np.unpackbits(mine.view(np.uint8)) ^ np.unpackbits(peer.view(np.uint8))
        assert abs(float(bits[:n].mean()) - 0.5) < 0.03  # 6 sd
        with np.errstate(over="ignore"):
            assert np.all(y0 + y1 == max(value >> F, 0))


def test_relu_needs_the_exchange() -> None:
    k0, _ = ReluTrunc.gen(DEFAULT, 3, RNG)
    with pytest.raises(ValueError, match="exchange"):
        ReluTrunc.eval(DEFAULT, k0, np.zeros(3, dtype=np.int64))


def test_top_bit_truncation_needs_no_exchange_and_its_shares_are_uniform() -> None:
    """trunc_top evaluates with no exchange (the opening of o is all it sees); party 0's output
    share (top 4 bits) is uniform whether z is 0 or 5.0, its constants being fresh shares."""
    n = 16000
    for value in (0, 5 << (2 * F)):
        k0, k1 = TRUNC_TOP.gen(DEFAULT, n, RNG)
        z0, z1 = split(np.full(n, value, dtype=np.int64), RNG)
        with np.errstate(over="ignore"):
            opened = (z0 + k0.mask) + (z1 + k1.mask)
            share = TRUNC_TOP.eval(DEFAULT, k0, opened)  # no exchange given: none needed
            y = share + TRUNC_TOP.eval(DEFAULT, k1, opened)
        assert set(np.unique(y).tolist()) == {value >> F}
        counts = np.bincount((share.view(np.uint64) >> np.uint64(60)).astype(np.int64))
        assert counts.min() > n / 16 * 0.8 and counts.max() < n / 16 * 1.2


def test_top_bit_truncation_outside_its_range_can_be_wrong() -> None:
    """The documented range is a real bound: well beyond 2^(L-2) the top bit no longer tells
    the wrap, and some outputs are off by 2^(L-1-f) (out of range, not insecure)."""
    n = 4000
    z = np.full(n, (1 << 62) + (1 << 61), dtype=np.int64)
    y = _run_gate(TRUNC_TOP, DEFAULT, z)
    assert np.any(np.abs(y - (z >> np.int64(F))) > 1)


def test_top_bit_truncation_by_zero_bits_is_exact() -> None:
    p = GateParams(0, 8)
    lo, hi = _bounds(p, TRUNC_TOP)
    z = np.arange(lo, hi + 1, dtype=np.int64)
    assert np.array_equal(_run_gate(TRUNC_TOP, p, z), z)
