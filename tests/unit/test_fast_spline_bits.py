"""The spline gates from one-bit comparisons (spline.py, ``<name>_bit``): the same ring values.

Each table's bit gate against its payload gate and the exact fixed-point
table, at every breakpoint and one ulp either side, the range's ends and
random points, with fresh masks; the opened bits uniform whatever the input;
key sizes as spline.py states them; the plan choosing the bit gates for large
layers only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from fast_pair import encode, forward_pair
from spline_reference import gate_outputs

from ppml.servers.mpc.fast.activations import GELU, SPLINE_GATES, SPLINES
from ppml.servers.mpc.fast.bundle import ModelSetup
from ppml.servers.mpc.fast.dcf import NONCE_BYTES
from ppml.servers.mpc.fast.engine import Dealer, PartyModel
from ppml.servers.mpc.fast.gate_table import GATES, SPLINE_BIT_GATES
from ppml.servers.mpc.fast.gates import GateKey, GateParams, split
from ppml.servers.mpc.fast.graph import BIT_SPLINE_POINTS, plan_of
from ppml.servers.mpc.fast.linear import Linear
from ppml.servers.mpc.fast.local import queue_exchanges, run_pair
from ppml.servers.mpc.fast.nodes import ModelSpec, Tanh
from ppml.servers.mpc.fast.prg import FixedKeyPRG, KeyedPRG, Ring, new_key
from ppml.servers.mpc.fast.spline import Spline, SplineBitGate, SplineGate

RNG = KeyedPRG()
PRG = FixedKeyPRG()
DEFAULT = GateParams()
FRAC = DEFAULT.frac_bits


def _both(gate: object, keys: tuple[GateKey, GateKey], opened: Ring) -> tuple[Ring, Ring]:
    """Both parties' output shares, the bit gates' openings between two threads."""
    ex0, ex1 = queue_exchanges()
    return run_pair(
        lambda: gate.eval(DEFAULT, keys[0], opened, None, ex0),  # type: ignore[attr-defined]
        lambda: gate.eval(DEFAULT, keys[1], opened, None, ex1),  # type: ignore[attr-defined]
    )


def _outputs(gate: object, xs: Ring) -> tuple[Ring, Ring]:
    """The reconstructed outputs for inputs ``xs`` under fresh masks, and the masks."""
    keys = gate.gen(DEFAULT, xs.size, RNG, PRG)  # type: ignore[attr-defined]
    with np.errstate(over="ignore"):
        masks = keys[0].mask + keys[1].mask
        y0, y1 = _both(gate, keys, xs + masks)
        out: Ring = y0 + y1
    return out, masks


def _inputs(spline: Spline) -> Ring:
    """Every breakpoint and one ulp either side, the range's ends, zero and random points."""
    fx = spline.fixed(FRAC)
    b = np.array(fx.breakpoints, dtype=np.int64)
    h = 1 << spline.depth(DEFAULT)
    edges = np.array([-h, -h + 1, h - 1, 0, -1, 1], dtype=np.int64)
    rand = RNG.ring(500) >> np.int64(64 - spline.depth(DEFAULT))  # uniform in [-h, h)
    xs = np.concatenate([b, b - 1, b + 1, edges, rand])
    lo, hi = (np.rint(np.array(spline.domain) * 2.0**FRAC).clip(-h, h - 1)).astype(np.int64)
    return xs[(xs >= lo) & (xs <= hi)]


@pytest.mark.parametrize("name", sorted(SPLINES))
def test_the_bit_gate_gives_the_payload_gates_ring_values(name: str) -> None:
    spline = SPLINES[name]
    xs = _inputs(spline)
    bit = SPLINE_BIT_GATES[f"{name}_bit"]
    assert bit.rounds == 1 and GATES[bit.kind] is bit
    for gate in (bit, SPLINE_GATES[name]):  # the pieces the masks select (spline_reference.py)
        out, masks = _outputs(gate, xs)
        assert out.tolist() == gate_outputs(spline, DEFAULT, xs, masks)


def _opened_bits(value: int, n: int) -> np.ndarray:
    """The bits GELU's bit gate opens for ``n`` copies of ``value`` (party 0's and the peer's)."""
    gate = SPLINE_BIT_GATES["gelu_bit"]
    keys = gate.gen(DEFAULT, n, RNG, PRG)
    sent: list[tuple[np.ndarray, np.ndarray]] = []
    ex0, ex1 = queue_exchanges()

    def spy(mine: np.ndarray) -> np.ndarray:
        peer = ex0(mine)
        sent.append((mine, peer))
        return peer

    with np.errstate(over="ignore"):
        opened = np.full(n, value, dtype=np.int64) + keys[0].mask + keys[1].mask
    run_pair(
        lambda: gate.eval(DEFAULT, keys[0], opened, None, spy),
        lambda: gate.eval(DEFAULT, keys[1], opened, None, ex1),
    )
    ((mine, peer),) = sent
    count = len(GELU.breakpoints) * n  # a bit per breakpoint (the wrap needs none)
    bits: np.ndarray = np.unpackbits(mine.view(np.uint8), count=count)
    return bits ^ np.unpackbits(peer.view(np.uint8), count=count)


def test_a_table_of_one_piece_compares_nothing_and_is_that_piece() -> None:
    line = Spline("line", (), ((0.5, 1.0),), 0.0, range_bits=4)  # x / 2 + 1 everywhere
    xs = np.array([-(16 << FRAC), -1, 0, 3 << FRAC, (16 << FRAC) - 1], dtype=np.int64)
    for gate in (SplineGate(line), SplineBitGate(line)):
        out, masks = _outputs(gate, xs)
        assert out.tolist() == gate_outputs(line, DEFAULT, xs, masks)
        assert out.tolist() == [(x << (FRAC - 1)) + (1 << (2 * FRAC)) for x in xs.tolist()]


@pytest.mark.parametrize("value", [0, 3 << FRAC, -(2000 << FRAC)])
def test_the_opened_bits_are_uniform_whatever_the_input(value: int) -> None:
    """Each point's e = c XOR rho is masked by a fresh rho: about half ones, for any x."""
    assert abs(float(_opened_bits(value, 6000).mean()) - 0.5) < 0.02


def test_a_bit_gates_key_is_smaller_and_it_needs_the_exchange() -> None:
    gate = SPLINE_BIT_GATES["gelu_bit"]
    k0, _ = gate.gen(DEFAULT, 10, RNG, PRG)
    assert (k0.nbytes - NONCE_BYTES) / 10 == 8 + 8 + 8 * 3 + 8 * 4 * 3 + 253 == 389  # d = 20
    payload, _ = SPLINE_GATES["gelu"].gen(DEFAULT, 10, RNG, PRG)
    assert (payload.nbytes - NONCE_BYTES) / 10 == 900  # mask, r^2, T r^t and three lanes
    with pytest.raises(ValueError, match="needs the exchange"):
        gate.eval(DEFAULT, k0, np.zeros(10, dtype=np.int64), PRG)
    with pytest.raises(ValueError):
        SPLINE_GATES["gelu"].eval(DEFAULT, k0, np.zeros(10, dtype=np.int64), PRG)


def _models(
    spec: ModelSpec, weights: list[np.ndarray]
) -> tuple[Dealer, bytes, tuple[PartyModel, PartyModel]]:
    """Both parties' models for public float weights (no biases), opened over a queue pair."""
    dealer, key = Dealer(), new_key()
    setups = dealer.model_setup(spec, key)
    shares = [split(encode(w), RNG) for w in weights]
    ex = queue_exchanges()

    def party(i: int) -> Callable[[], PartyModel]:
        setup = ModelSetup.from_bytes(setups[i].to_bytes())
        mine = [w[i] for w in shares]
        return lambda: PartyModel.open(spec, setup, mine, [None] * len(mine), ex[i])

    return dealer, key, run_pair(party(0), party(1))


def test_the_plan_takes_bit_gates_for_large_layers_only_and_serves_them() -> None:
    """Linear(8 -> 745), tanh, Linear(745 -> 2): the wide layer's tanh (745 * 11 comparisons) is
    a bit gate (one more round), the small model's is not (truncations are trunc_top either
    way); within tanh's bound."""
    wide = -(-BIT_SPLINE_POINTS // 11)
    assert wide == 745 and (wide - 1) * 11 < BIT_SPLINE_POINTS
    narrow = ModelSpec((Linear(8, wide - 1, False), Tanh()), (8,))
    assert [g.kind for g in plan_of(narrow).gates] == ["trunc_top", "tanh", "trunc_top"]
    small = ModelSpec((Linear(8, 16, False), Tanh(), Linear(16, 2, False)), (8,))
    spec = ModelSpec((Linear(8, wide, False), Tanh(), Linear(wide, 2, False)), (8,))
    assert [g.kind for g in plan_of(small).gates] == ["trunc_top", "tanh", "trunc_top", "trunc_top"]
    plan = plan_of(spec)
    assert [g.kind for g in plan.gates] == ["trunc_top", "tanh_bit", "trunc_top", "trunc_top"]
    rng = np.random.default_rng(0)  # public test weights and inputs
    w = [np.rint(rng.normal(0, 0.5, (wide, 8)) * 2**FRAC) / 2**FRAC,
         np.rint(rng.normal(0, 0.02, (2, wide)) * 2**FRAC) / 2**FRAC]  # fmt: skip
    x = rng.uniform(-1, 1, (3, 8))
    dealer, key, models = _models(spec, w)
    y, rounds, _ = forward_pair(models, dealer.preprocess(spec, key, 3), x)
    assert rounds == plan.rounds == plan_of(small).rounds + 1  # tanh's opening of bits
    want = np.tanh(x @ w[0].T) @ w[1].T
    assert np.abs(y - want).max() < 1e-2 * np.abs(w[1]).sum(axis=1).max() + 1e-3
