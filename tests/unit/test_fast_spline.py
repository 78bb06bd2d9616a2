"""The fast engine's spline gate (spline.py) and GELU, tanh, sigmoid on it (activations.py).

Against float64: each table over its whole input range (a dense grid, the
tails, the ring's extremes, every breakpoint and its neighbours one ulp
away), within its stated bound; the gate exactly equal to the fixed-point
table on masked wires, exhaustively over every input and every mask residue
at a small depth (every wrap case), and at the default depth with masks at
the wrap edges; in the engine: rounds as planned (one opening per spline
gate), a party's view uniform, bundles cut, stacked and serialised, the wire
format strict.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from fast_pair import encode, forward_pair
from scipy.special import erf
from spline_reference import gate_outputs, selected_pieces, windows

from ppml.proto.domain import layers as dl
from ppml.proto.domain import nonlinear_layers as nl
from ppml.proto.domain.architecture import Architecture
from ppml.servers.mpc.fast import nodes, spline_fit, steps
from ppml.servers.mpc.fast import spline as spline_module
from ppml.servers.mpc.fast.activations import (
    EXP,
    GELU,
    RECIPROCAL,
    ROW_RECIPROCAL,
    RSQRT,
    SIGMOID,
    SPLINE_GATES,
    SPLINES,
    TANH,
)
from ppml.servers.mpc.fast.bundle import Bundle, ModelSetup
from ppml.servers.mpc.fast.engine import Dealer, PartyModel, prepare
from ppml.servers.mpc.fast.gate_table import GATES
from ppml.servers.mpc.fast.gates import GateParams, split
from ppml.servers.mpc.fast.graph import plan_of
from ppml.servers.mpc.fast.linear import Linear
from ppml.servers.mpc.fast.local import queue_exchanges, run_pair
from ppml.servers.mpc.fast.nodes import Add, ModelSpec, Sigmoid, Tanh
from ppml.servers.mpc.fast.prg import FixedKeyPRG, KeyedPRG, Ring, new_key
from ppml.servers.mpc.fast.service import spec as fast_spec
from ppml.servers.mpc.fast.spline import Spline, SplineGate, deal

RNG = KeyedPRG()
PRG = FixedKeyPRG()
DEFAULT = GateParams()
FRAC = DEFAULT.frac_bits
REFERENCE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu": lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))),
    "tanh": np.tanh,
    "sigmoid": lambda x: 0.5 * (1 + np.tanh(x / 2)),  # no overflow in the tails
    "exp": np.exp,
    "reciprocal": lambda x: 1 / x,
    "row_reciprocal": lambda x: 1 / x,
    "rsqrt": lambda x: 1 / np.sqrt(x),
}
TOP = 2.0**31 - 2.0**-16  # the largest input of the default range, |v| < 2^31


def _fixed_reference(spline: Spline, p: GateParams, xs: Ring) -> list[int]:
    """The table in exact integers: piece ``i`` at ring inputs ``X``, at ``2^((m + 1) f)``."""
    fx = spline.fixed(p.frac_bits)
    piece = np.searchsorted(np.array(fx.breakpoints), xs, side="right")
    return [fx.at(i, int(x)) for i, x in zip(piece, xs, strict=True)]


def _ring(values: list[int]) -> list[int]:
    """Exact integers mod 2^64, as signed 64-bit values (what the gate's shares sum to)."""
    return [(v + (1 << 63)) % (1 << 64) - (1 << 63) for v in values]


def _gate(spline: Spline, p: GateParams, xs: Ring, r: Ring | None = None) -> list[int]:
    """Both parties' outputs for ring inputs ``xs`` (masks ``r`` or fresh), reconstructed, after
    checking them against what the gate must give under those masks (spline_reference.py)."""
    gate = SplineGate(spline)
    k0, k1 = (
        gate.gen(p, xs.size, RNG, PRG)
        if r is None
        else deal(spline.depth(p), r, RNG, PRG, spline.name, spline.degree, spline.shift(p))
    )
    with np.errstate(over="ignore"):
        masks = k0.mask + k1.mask
        opened = xs + masks
        y = gate.eval(p, k0, opened, PRG) + gate.eval(p, k1, opened, PRG)
    out = [int(v) for v in y]
    assert out == gate_outputs(spline, p, xs, masks)
    return out


def _edges(spline: Spline) -> np.ndarray:
    """Every breakpoint and one ulp either side, the ring's extremes, zero: those in its domain."""
    ulp = 2.0**-FRAC
    b = np.array(spline.breakpoints)
    x = np.concatenate([b, b - ulp, b + ulp, [-TOP - ulp, TOP, 0.0, -ulp, ulp, -16.0, 1.0, 64.0]])
    return x[(x >= spline.domain[0]) & (x <= spline.domain[1])]


@pytest.mark.parametrize("name", sorted(SPLINES))
def test_each_table_is_within_its_bound_everywhere(name: str) -> None:
    spline, ref = SPLINES[name], REFERENCE[name]
    lo, hi = spline.domain
    dense = np.linspace(max(lo, -40), min(hi, 40), 1_600_001)
    tails = np.concatenate([np.geomspace(40, TOP, 2000), -np.geomspace(40, TOP + 2.0**-16, 2000)])
    tails = tails[(tails >= lo) & (tails <= hi)]
    x = np.concatenate([dense, tails, _edges(spline)])
    assert np.abs(spline(x) - ref(x)).max() <= spline.bound
    fixed = np.rint(x * 2.0**FRAC).astype(np.int64)  # the table as the gate computes it
    scale = 2.0 ** ((spline.degree + 1) * FRAC)
    exact = np.array(_fixed_reference(spline, DEFAULT, fixed), dtype=np.float64) / scale
    assert np.abs(exact - ref(fixed / 2.0**FRAC)).max() <= spline.bound
    assert len(spline.pieces) == len(spline.breakpoints) + 1
    lo, hi = (np.array(spline.domain) * 2.0**FRAC).clip(-(2.0**62), 2.0**62)
    fx = spline.fixed(FRAC)
    for piece, inputs in windows(spline, DEFAULT):  # the right neighbour below each breakpoint
        inputs = inputs[(inputs >= lo) & (inputs <= hi)]
        right = np.array([fx.at(piece, int(v)) for v in inputs], dtype=np.float64) / scale
        assert np.abs(right - ref(inputs / 2.0**FRAC)).max(initial=0.0) <= spline.bound
    assert bool(windows(spline, DEFAULT)) == (spline.comparison_bits is not None)


def test_the_row_reciprocal_is_within_its_relative_bound() -> None:
    x = np.concatenate([np.linspace(1.0, 130.0, 2_000_001), _edges(ROW_RECIPROCAL)])
    fixed = np.rint(x * 2.0**FRAC).astype(np.int64)
    exact = np.array(_fixed_reference(ROW_RECIPROCAL, DEFAULT, fixed), dtype=np.float64)
    assert np.abs(exact / 2.0 ** (2 * FRAC) * fixed / 2.0**FRAC - 1).max() <= 1e-3
    assert len(ROW_RECIPROCAL.breakpoints) == 63 and ROW_RECIPROCAL.domain == (1.0, 130.0)
    fx = ROW_RECIPROCAL.fixed(FRAC)
    for piece, inputs in windows(ROW_RECIPROCAL, DEFAULT):  # the right neighbour's, too
        inputs = inputs[inputs >= 1 << FRAC]
        right = np.array([fx.at(piece, int(v)) for v in inputs], dtype=np.float64)
        assert np.abs(right / 2.0 ** (2 * FRAC) * inputs / 2.0**FRAC - 1).max(initial=0) <= 1e-3
    below = np.linspace(0.997, 1.0, 1001)  # a sum just under 1: the maximum's exp, truncations
    assert np.abs(ROW_RECIPROCAL(below) * below - 1).max() <= 1.1e-3


def test_rsqrt_is_within_its_relative_bound_and_flat_below_its_domain() -> None:
    x = np.concatenate([np.linspace(3 / 128, 160.0, 2_000_001), _edges(RSQRT)])
    fixed = np.rint(x * 2.0**FRAC).astype(np.int64)
    exact = np.array(_fixed_reference(RSQRT, DEFAULT, fixed), dtype=np.float64)
    assert np.abs(exact / 2.0 ** (2 * FRAC) * np.sqrt(fixed / 2.0**FRAC) - 1).max() <= 1e-3
    assert len(RSQRT.breakpoints) == 66 and RSQRT.pieces[0][0] == 0.0
    assert np.all(RSQRT(np.array([-1.0, 0.0, 0.01])) == RSQRT.pieces[0][1])


def test_exp_stays_in_0_1_on_its_domain_as_the_row_sums_range_assumes() -> None:
    # activations.py, row reciprocal: each exp in [0, 1 + 1e-3], so a row sum in [0, 128.2]
    x = np.concatenate([np.linspace(-4096, 0, 400_001), np.linspace(-8, 0, 400_001), _edges(EXP)])
    fixed = np.rint(x * 2.0**FRAC).astype(np.int64)
    ring = np.array(_fixed_reference(EXP, DEFAULT, fixed), dtype=np.float64) / 2.0 ** (3 * FRAC)
    assert ring.min() >= 0 and ring.max() <= 1 + 1e-3


def test_breakpoint_counts_and_bounds_as_documented() -> None:
    tables = (GELU, TANH, SIGMOID, EXP, RECIPROCAL)
    assert [len(s.breakpoints) for s in tables] == [4, 10, 6, 5, 20]
    assert [s.degree for s in tables] == [2, 1, 1, 2, 1]
    assert [s.bound for s in tables] == [1e-2] * 3 + [1e-3] * 2
    assert EXP.domain == (-math.inf, 0.0) and RECIPROCAL.domain == (1.0, 64.0)
    assert GELU.pieces[0] == (0.0, 0.0, 0.0) and GELU.pieces[-1] == (0.0, 1.0, 0.0)
    assert EXP.pieces[0] == (0.0, 0.0, 0.0)  # exact 0 far out; the last piece ends at 0
    assert TANH.pieces[0] == (0.0, -1.0) and SIGMOID.pieces[-1] == (0.0, 1.0)


@pytest.mark.parametrize("name", sorted(SPLINES))
def test_gate_is_the_table_exactly_for_every_input_and_mask_at_a_small_depth(name: str) -> None:
    # inputs in [-2^n, 2^n), d = n + 2 bits (one of headroom): every input with every mask
    # residue mod 2^d (the widest tables: a quarter of the residues, and all those at the
    # wrap edges, where r' has its top bit set or not)
    small = {
        "reciprocal": GateParams(frac_bits=1, depth=7),
        "row_reciprocal": GateParams(1, 8),
        "rsqrt": GateParams(1, 9),
    }
    p = small.get(name, GateParams(2, 5))
    n = SPLINES[name].depth(p)
    inputs, size = 1 << (n + 1), 1 << (n + 2)
    residues = np.arange(size, dtype=np.uint64)
    if size > 512:  # the widest tables: every 4th (16th) residue and every one near a wrap edge
        edges = [0, 1, 2, 3, *(size // 2 + d for d in (-2, -1, 0, 1)), size - 2, size - 1]
        step = 4 if size <= 1024 else 16
        residues = np.unique(np.concatenate([residues[::step], np.array(edges, dtype=np.uint64)]))
    xs = np.repeat(np.arange(-inputs // 2, inputs // 2, dtype=np.int64), residues.size)
    high = RNG.ring(xs.size).view(np.uint64) & ~np.uint64(size - 1)
    r = (high | np.tile(residues, inputs)).view(np.int64)
    assert _gate(SPLINES[name], p, xs, r) == _fixed_reference(SPLINES[name], p, xs)


def _table_or_right_neighbour(spline: Spline, xs: Ring, r: Ring) -> None:
    """The piece the gate selects is the table's, or the next one on ``[b_j - 2^s, b_j)``
    (``xs`` in the range)."""
    fx = spline.fixed(FRAC)
    exact = np.searchsorted(np.array(fx.breakpoints), xs, side="right")
    got = selected_pieces(spline, DEFAULT, xs, r)
    window = np.zeros(xs.shape, dtype=bool)
    for _, inputs in windows(spline, DEFAULT):
        window |= np.isin(xs, inputs)
    assert np.all((got == exact) | (window & (got == exact + 1)))


@pytest.mark.parametrize("name", sorted(SPLINES))
def test_gate_is_the_table_on_its_range_at_the_default_depth_with_wrapping_masks(name: str) -> None:
    spline = SPLINES[name]  # exact mod 2^64 (exp's last piece exceeds it at x > 0, off its domain)
    n, shift = spline.depth(DEFAULT), spline.shift(DEFAULT)
    assert n == spline.range_bits + FRAC < DEFAULT.depth  # the table's range, not the ReLU's
    assert shift == (0 if spline.comparison_bits is None else FRAC - spline.comparison_bits)
    edges = np.rint(_edges(spline) * 2.0**FRAC).astype(np.int64)
    top = 1 << n  # the whole range, its top 2^s included (spline.py, Resolution)
    edges = edges[(edges >= -(1 << n)) & (edges < top)]
    ends = np.array([-(1 << n), -(1 << n) + 1, top - 2, top - 1], dtype=np.int64)
    grid = np.rint(np.linspace(-6, 6, 301) * 2.0**FRAC).astype(np.int64)
    xs = np.concatenate([edges, ends, grid])
    d = n + 2
    residues = [0, 1, (1 << d) - 1, 1 << (d - 1), (1 << (d - 1)) - 1, (1 << shift) - 1]
    for low in residues:  # r' at the wrap edges: o' = u + r' wraps for most or few u
        high = RNG.ring(xs.size).view(np.uint64) & ~np.uint64((1 << d) - 1)
        r = (high | np.uint64(low)).view(np.int64)
        _gate(spline, DEFAULT, xs, r)  # the selected piece under r, applied in the ring
        _table_or_right_neighbour(spline, xs, r)
    # masks that put o' = u + r' mod 2^d at 2^d - 1, 0 and 1: just before, at and after the wrap
    near = np.repeat(np.concatenate([edges, ends]), 3)
    u = near.view(np.uint64) + np.uint64(1 << n)
    step = np.tile(np.array([-1, 0, 1], dtype=np.int64), near.size // 3).view(np.uint64)
    r = ((np.uint64(1 << d) - u + step) & np.uint64((1 << d) - 1)).view(np.int64)
    _gate(spline, DEFAULT, near, r)
    _table_or_right_neighbour(spline, near, r)
    r = RNG.ring(xs.size)
    _gate(spline, DEFAULT, xs, r)  # fresh masks
    _table_or_right_neighbour(spline, xs, r)


def test_dropped_low_bits_change_the_piece_only_below_a_breakpoint_and_only_on_a_carry() -> None:
    # a table on a 2^-1 grid at f = 3, |x| < 2^2: the comparisons drop 2 of the 6 input bits;
    # every input with every mask residue mod 2^7 (every carry and wrap case), exactly as modelled
    p = GateParams(frac_bits=3, depth=5)
    table = Spline("t", (-1.5, 0.5), ((0, 0, 0), (1, 1, 0), (0, 1, 0)), 0.0, comparison_bits=1)
    assert table.depth(p) == 5 and table.shift(p) == 2 and table.key_depth(p) == 5
    size = 1 << 7  # mask residues mod 2^(n + 2)
    xs = np.repeat(np.arange(-32, 32, dtype=np.int64), size)
    high = RNG.ring(xs.size).view(np.uint64) & ~np.uint64(size - 1)
    r = (high | np.tile(np.arange(size, dtype=np.uint64), 64)).view(np.int64)
    _gate(table, p, xs, r)
    fx = table.fixed(3)
    exact = np.searchsorted(np.array(fx.breakpoints), xs, side="right")
    got = selected_pieces(table, p, xs, r)
    moved = got != exact
    below = np.isin(xs, [-15, -14, -13, 1, 2, 3])  # [b - 2^s, b): b = -12 and 4 at 2^3
    assert set(xs[moved].tolist()) == {-15, -14, -13, 1, 2, 3}  # the range's top 2^s too
    assert np.all(got[moved] == exact[moved] + 1)
    assert 0 < moved[below].mean() < 1  # a mask carries for some residues, not others


@pytest.mark.parametrize("name", ["gelu", "exp", "rsqrt"])
def test_outside_its_range_a_gate_applies_a_table_piece_to_the_input(name: str) -> None:
    # documented (spline.py, Range): for x outside [-2^n, 2^n) the gate applies to x the piece
    # of x's representative mod 2^(n+2) in [-2^n, 3 2^n) if that lies in the range; above it,
    # the last piece, or the first when the mask makes the top bits read the wrong wrap
    spline = SPLINES[name]
    n, k = spline.depth(DEFAULT), len(spline.breakpoints)
    fx = spline.fixed(FRAC)
    inner = (np.array([-2.0, -1.0, 0.5, 1.5]) * 2.0**FRAC).astype(np.int64)
    wraps = np.array([1, -3, 5, -1], dtype=np.int64) << np.int64(n + 2)
    xs = np.concatenate([wraps + inner, RNG.ring(64) >> np.int64(33)])  # and random |x| < 2^31
    wrapped = ((xs + (1 << n)) & ((1 << (n + 2)) - 1)) - (1 << n)
    in_range = wrapped < (1 << n)
    r = RNG.ring(xs.size)
    _gate(spline, DEFAULT, xs, r)  # the selected piece applied to the true x (spline_reference)
    _table_or_right_neighbour(spline, wrapped[in_range], r[in_range])
    assert len(set(np.searchsorted(np.array(fx.breakpoints), wrapped[in_range]).tolist())) > 2
    above = np.repeat(np.array([1 << n, (1 << n) + 5, 3 << n, -(1 << n) - 1]), 200)
    r = RNG.ring(above.size)
    _gate(spline, DEFAULT, above, r)
    got = selected_pieces(spline, DEFAULT, above, r)
    assert set(got.tolist()) == {0, k}  # the last piece, or the first under some masks


def test_a_table_refuses_breakpoints_or_a_domain_outside_its_range() -> None:
    with pytest.raises(ValueError, match="range"):
        Spline("t", (-1.0, 4.0), ((0, 0), (1, 0), (0, 4)), 0.0, range_bits=2)  # 4 >= 2^2
    with pytest.raises(ValueError, match="range"):
        Spline("t", (1.0,), ((0, 0), (1, 0)), 0.0, (0.0, 8.0), range_bits=3)
    ok = Spline("t", (-4.0, 3.5), ((0, 0), (1, 0), (0, 4)), 0.0, range_bits=2)
    assert ok.depth(DEFAULT) == 18 and ok.depth(GateParams(16, 10)) == 10  # p's if narrower


def test_a_quadratic_table_keeps_lines_outside_where_its_domain_is_unbounded() -> None:
    parabola = (0.5, 0.0, 0.0)
    with pytest.raises(ValueError, match="outer piece"):  # x^2 / 2 out to the range
        Spline("t", (-1.0,), ((0, 0, 0), parabola), 0.0, range_bits=4)
    with pytest.raises(ValueError, match="one degree"):
        Spline("t", (-1.0,), ((0, 0), parabola), 0.0, range_bits=4)
    with pytest.raises(ValueError, match="one degree"):
        Spline("t", (-1.0,), ((0, 0, 0, 0), (1, 0, 0, 0)), 0.0, range_bits=4)  # cubic
    ok = Spline("t", (-1.0,), ((0, 0, 0), parabola), 0.0, (-math.inf, 2.0), range_bits=4)
    assert ok.degree == 2 and ok(np.array([-3.0, 2.0])).tolist() == [0.0, 2.0]
    fx = ok.fixed(FRAC)
    assert fx.pieces[1] == (1 << 15, 0, 0) and fx.at(1, 2 << FRAC) == 2 << (3 * FRAC)


@pytest.mark.parametrize(
    ("name", "fn", "low", "high", "eps", "inner"),
    [
        ("sigmoid", REFERENCE["sigmoid"], lambda x: 0 * x, lambda x: 0 * x + 1, 0.0095, None),
        ("exp", np.exp, lambda x: 0 * x, 0.0, 0.00095, None),
        ("gelu", spline_fit.gelu, lambda x: 0 * x, lambda x: x, 0.0095, 0.0051),
    ],
)
def test_tables_are_what_the_fitter_makes(
    name: str, fn: spline_fit.Fn, low: object, high: object, eps: float, inner: float | None
) -> None:
    degree = SPLINES[name].degree
    breaks, pieces = spline_fit.table(fn, low, high, eps, None, degree, inner)
    assert tuple(breaks) == SPLINES[name].breakpoints and tuple(pieces) == SPLINES[name].pieces


def test_stacked_and_row_by_row_evaluation_give_the_same_shares(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = SPLINE_GATES["tanh"]
    k0, _ = gate.gen(DEFAULT, 300, RNG, PRG)
    opened = RNG.ring(300)
    stacked = gate.eval(DEFAULT, k0, opened, PRG)  # 11 * 300 points: one evaluation
    monkeypatch.setattr(spline_module, "STACKED_POINTS", 0)
    assert np.array_equal(gate.eval(DEFAULT, k0, opened, PRG), stacked)


def test_key_bytes_per_element_depend_on_the_tables_range_only() -> None:
    for gate in SPLINE_GATES.values():
        k0, k1 = gate.gen(DEFAULT, 100, RNG, PRG)
        d = gate.spline.key_depth(DEFAULT)  # the table's range and headroom less dropped bits
        assert d == gate.spline.range_bits + FRAC + 2 - gate.spline.shift(DEFAULT)
        lanes = gate.spline.degree + 1  # payload (1, r) or (1, r, r^2); r^2's shares: 8 bytes
        per = 8 + 8 * (lanes - 2) + 8 * lanes + 16 + d * (17 + 8 * lanes) + 8 * lanes  # T r^t
        assert k0.nbytes == k1.nbytes == 100 * per + 24
        assert gate.rounds == 0 and GATES[gate.kind] is gate
    gelu = SPLINE_GATES["gelu"].gen(DEFAULT, 1, RNG, PRG)[0]
    assert gelu.nbytes == 900 + 24  # d = 12 + 6 + 2 = 20, three lanes
    assert SPLINE_GATES["tanh"].gen(DEFAULT, 1, RNG, PRG)[0].nbytes == 848 + 24  # d = 24, two
    narrow = SPLINE_GATES["gelu"].gen(GateParams(16, 20), 10, RNG, PRG)[0]
    assert narrow.nbytes == 10 * (8 + 8 + 24 + 16 + 12 * 41 + 24) + 24  # p's range if narrower
    with pytest.raises(ValueError, match="depth"):  # a key of another depth is refused
        SPLINE_GATES["gelu"].eval(GateParams(16, 20), gelu, RNG.ring(1), PRG)


def test_gate_refuses_a_depth_too_small_for_its_breakpoints() -> None:
    small = GateParams(frac_bits=16, depth=17)  # |v| < 2: GELU's breakpoint 2.7 does not fit
    with pytest.raises(ValueError, match="breakpoints"):
        plan_of(ModelSpec((Linear(2, 2), nodes.GELU()), (2,), small))


def _identity_models(spec: ModelSpec) -> tuple[Dealer, bytes, tuple[PartyModel, PartyModel]]:
    """Party models whose every Linear is the identity (no bias), so inputs reach the gates."""
    dealer, key = Dealer(), new_key()
    setups = dealer.model_setup(spec, key)
    eye = [split(encode(np.eye(op.out_features, op.in_features)), RNG) for op in spec.weighted]
    ex = queue_exchanges()

    def party(i: int) -> Callable[[], PartyModel]:
        setup = ModelSetup.from_bytes(setups[i].to_bytes())
        weights = [w[i] for w in eye]
        return lambda: PartyModel.open(spec, setup, weights, [None] * len(eye), ex[i])

    return dealer, key, run_pair(party(0), party(1))


def _stacked() -> ModelSpec:
    """identity -> GELU -> identity -> Tanh, and Sigmoid of the input added to it (a DAG)."""
    layers = (Linear(6, 6, False), nodes.GELU(), Linear(6, 6, False), Tanh(), Sigmoid(), Add())
    return ModelSpec(layers, (6,), inputs=((-1,), (0,), (1,), (2,), (-1,), (3, 4)))


def _stacked_reference(x: np.ndarray) -> np.ndarray:
    return REFERENCE["tanh"](REFERENCE["gelu"](x)) + REFERENCE["sigmoid"](x)


def test_engine_runs_spline_gates_in_the_planned_rounds_within_their_bounds() -> None:
    spec = _stacked()
    plan = plan_of(spec)
    kinds = [g.kind for g in plan.gates]
    assert sorted(k for k in kinds if k != "trunc_top") == [
        "gelu",
        "sigmoid",
        "tanh",
        "trunc_top_wide",
    ]
    gate_steps = [s for s in plan.steps if isinstance(s, steps.Gate)]
    opens = sum(isinstance(s, steps.Open) for s in plan.steps)
    assert plan.rounds == opens + len(gate_steps)  # one opening per gate, nothing more
    scales = {s.kind: plan.values[s.dst].scale for s in gate_steps}  # quadratic GELU: 2^(3f)
    want = {"gelu": steps.FFF, "trunc_top_wide": steps.F, "tanh": steps.FF, "sigmoid": steps.FF}
    assert scales == {**want, "trunc_top": steps.F}, scales
    dealer, key, models = _identity_models(spec)
    x = np.concatenate([np.linspace(-5, 5, 24).reshape(4, 6), np.full((1, 6), 4000.0)])
    pair = dealer.preprocess(spec, key, x.shape[0])
    y, rounds, _ = forward_pair(models, pair, x)
    assert rounds == plan.rounds
    # tanh(GELU) within 1e-2 + 1.1e-2 (tanh' <= 1, input rounding); sigmoid 1e-2; truncations
    assert np.abs(y - _stacked_reference(x)).max() <= 3.1e-2


def test_narrow_gates_between_layers_feed_spline_gates_right_mod_2_to_the_l() -> None:
    narrow = GateParams(16, 31)  # L = 48: truncations between layers are right mod 2^48 only
    layers = (Linear(6, 6, False), nodes.GELU(), Linear(6, 6, False), Sigmoid())
    spec = ModelSpec(layers, (6,), narrow)
    gates = plan_of(spec).gates
    kinds = ["trunc_top", "gelu", "trunc_top_wide", "trunc_top", "sigmoid", "trunc_top"]
    assert [g.kind for g in gates] == kinds
    # GELU squares its input: the truncation feeding it is right mod 2^64 (full lanes)
    assert [g.out_bits for g in gates] == [64, 64, 48, 48, 48, 64]
    dealer, key, models = _identity_models(spec)
    x = np.linspace(-6, 6, 36).reshape(6, 6)
    y, _, _ = forward_pair(models, dealer.preprocess(spec, key, 6), x)
    ref = REFERENCE["sigmoid"](REFERENCE["gelu"](x))
    assert np.abs(y - ref).max() <= 2.1e-2  # sigmoid' <= 1/4: 1e-2 + 1e-2 / 4 + truncations


def test_bundles_cut_stack_serialise_and_keep_a_uniform_view() -> None:
    spec = _stacked()
    dealer, key, models = _identity_models(spec)
    made = dealer.preprocess_many(spec, key, 1, 3)
    stacked = tuple(Bundle.concat([m[b] for m in made[1:]]) for b in (0, 1))
    wired = tuple(Bundle.from_bytes(b.to_bytes()) for b in stacked)
    x = np.array([[-3.0, -0.5, 0.0, 0.25, 1.5, 40.0], [2.703125, -2.703125, 0.765625, 7, -7, 3]])
    ref = _stacked_reference(x)
    y, _, _ = forward_pair(models, (wired[0], wired[1]), x)
    assert np.abs(y - ref).max() <= 3.1e-2
    single, _, _ = forward_pair(models, made[0], x[:1])
    assert np.abs(single - ref[:1]).max() <= 3.1e-2
    head = tuple(b.head(1) for b in wired)
    assert head[0].gates[1].kind == "gelu" and head[0].gates[1].size == 6
    for value in (0.0, 1e5):  # what party 0 receives online has uniform bits either way
        seen: list[Ring] = []
        forward_pair(models, dealer.preprocess(spec, key, 256), np.full((256, 6), value), seen)
        view = np.concatenate([s.reshape(-1) for s in seen])
        freq = np.unpackbits(view.view(np.uint8).reshape(-1, 8), axis=1).mean(axis=0)
        assert np.all(np.abs(freq - 0.5) < 0.02), freq


def test_a_bundle_whose_gate_kinds_differ_from_the_plan_is_refused() -> None:
    spec = ModelSpec((Linear(3, 3), Sigmoid()), (3,))
    other = ModelSpec((Linear(3, 3), Tanh()), (3,))
    dealer, key, models = _identity_models(spec)
    wrong = dealer.preprocess(other, key, 1)[0]
    with pytest.raises(ValueError, match="another model"):
        prepare(models[0], wrong)


def test_wire_round_trip_and_strict_rows() -> None:
    spec = _stacked()
    wire = fast_spec.to_wire(spec)
    assert [r for r in wire[1] if r[0] in SPLINES] == [("gelu",), ("tanh",), ("sigmoid",)]
    assert fast_spec.from_wire(wire) == spec
    chain = ModelSpec((Linear(3, 3), Sigmoid()), (3,))
    assert fast_spec.from_wire(fast_spec.to_wire(chain)) == chain
    bad_rows = (("gelu", 1), ("gelu", True), ("GELU",), ("tanh", "x"), ("sigmoid", None))
    for bad in (*bad_rows, ("softmax", 1), ("layer_norm", 3), ("layer_norm", 3, 1 << 17)):
        with pytest.raises(ValueError):
            fast_spec.from_wire(((3,), (("linear", 3, 3, True), bad)))
    with pytest.raises(ValueError):  # an activation reading two inputs
        fast_spec.from_wire(((3,), (("linear", 3, 3, True), ("gelu",)), ((-1,), (0, -1))))


@pytest.mark.parametrize("layer", [nl.GELU(), nl.Tanh(), nl.Sigmoid(), nl.Softmax()])
def test_fast_model_maps_activations_and_softmax(layer: object) -> None:
    arch = Architecture((dl.Linear(4, 4), layer, dl.Linear(4, 2)), (4,), (2,))
    model = fast_spec.fast_model(arch)
    assert model is not None and model.layer_index == (0, 2)
    assert fast_spec.from_wire(fast_spec.to_wire(model.spec)) == model.spec


def test_fast_model_maps_layer_norm_with_its_parameters_and_refuses_long_softmax_rows() -> None:
    arch = Architecture((dl.Linear(4, 4), nl.LayerNorm(4, 1e-5), dl.Linear(4, 2)), (4,), (2,))
    model = fast_spec.fast_model(arch)
    assert model is not None and model.params == ((1, "weight"), (1, "bias"))
    assert fast_spec.from_wire(fast_spec.to_wire(model.spec)) == model.spec
    long_rows = Architecture((dl.Linear(129, 129), nl.Softmax()), (129,), (129,))
    assert fast_spec.fast_model(long_rows) is None  # rows of at most 128: CrypTen serves it


def test_the_wide_truncation_divides_by_2_to_the_2f_over_its_whole_range() -> None:
    # after a quadratic spline (values at 2^(3f)): z / 2^(2f) stochastically rounded, every z in
    # [-2^62, 2^62), the range the plan's table check (range_bits + 3f <= 62) guarantees
    gate = GATES["trunc_top_wide"]
    ends = [-(1 << 62), (1 << 62) - 1, 0, -1, 1, 12345 << 32, -(4095 << 48), 4095 << 48]
    z = np.concatenate([RNG.ring(4000) >> np.int64(2), np.array(ends, dtype=np.int64)])
    k0, k1 = gate.gen(DEFAULT, z.size, RNG, PRG, DEFAULT.low_bits - 16)  # reads 64 bits anyway
    assert k0.dcf is None and k0.kind == "trunc_top_wide" and k0.nbytes == 24 * z.size
    with np.errstate(over="ignore"):
        opened = z + k0.mask + k1.mask
        y = gate.eval(DEFAULT, k0, opened, PRG) + gate.eval(DEFAULT, k1, opened, PRG)
        narrow = gate.eval(GateParams(16, 31), k0, opened) + gate.eval(
            GateParams(16, 31), k1, opened
        )
    carry = y - (z >> np.int64(2 * FRAC))
    assert set(np.unique(carry).tolist()) == {0, 1}
    assert np.array_equal(narrow, y)  # the wide gate reads all 64 bits whatever the plan's L
