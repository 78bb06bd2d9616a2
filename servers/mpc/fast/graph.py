"""The plan of a fast-engine model: which values are opened, which gates run, in what order.

:func:`plan_of` compiles a :class:`~ppml.servers.mpc.fast.nodes.ModelSpec`
(a chain or a DAG) into a straight-line list of steps over *values* (value 0
is the model input), and lists the dealer material one forward needs:
opening masks, weight-mask products, gate keys, Beaver triples. Dealer and parties derive
the same plan from the same public spec.

Scales. Every value carries its fixed-point scale: ``2^f`` (the input, a
gate's output, sums and maxima of those) or ``2^(2f)`` (a weighted layer's
or an average's output, before truncation). Truncation is lazy: a value
stays at ``2^(2f)`` until something needs ``2^f``:

* a weighted layer needs its input at ``2^f``, opened once as ``x^ = x + r``
  (:class:`Open`); every weighted layer reading the same value shares that
  opening and mask (a ResNet block's conv and 1x1 shortcut conv) and gets its
  own ``F(B, r)`` product shares;
* ReLU of a ``2^(2f)`` value is the fused ReLU + truncation gate; of a
  ``2^f`` value, the same gate on the value lifted locally by ``2^f`` (shares
  times ``2^f``);
* Add of a ``2^(2f)`` and a ``2^f`` value lifts the latter locally, so a
  residual block's ``ReLU(conv(...) + x)`` is one gate;
* average and max pooling and the model output need ``2^f``: a ``2^(2f)``
  value gets a truncation gate first (one per value, shared by its readers);
* so do both operands of a MatMul of two activations (:class:`Product`, a
  Beaver triple: one opening of both masked operands), a Scale and a Mean
  (each a public fixed-point multiplier: output at ``2^(2f)``);
* a GELU, Tanh or Sigmoid is a spline gate (spline.py, activations.py):
  input at ``2^f`` (a ``2^(2f)`` value is truncated first: one more gate and
  round), output at ``2^(2f)`` (slopes at ``2^f`` times the input), so its
  readers truncate lazily like a weighted layer's; a quadratic table's
  (GELU's, and softmax's exp) output is at ``2^(3f)`` (:data:`FFF`) and is
  truncated by ``2f`` at once (a ``trunc_top_wide`` gate, gates.py: one
  round, as the readers' lazy truncation was, unless a reader took
  ``2^(2f)``, an Add or Concat with a weighted layer's output);
* an element-wise product of two activations (:class:`Hadamard`, the second
  broadcast to the first) is an element-wise Beaver triple: operands at
  ``2^f``, output at ``2^(2f)``, one opening of both, exact in the ring;
* a Softmax over the last axis (rows of ``n <= 128``): the input at ``2^f``;
  each row's maximum by a ReLU tournament along the row (:class:`RowMax`, as
  max pooling's: ``ceil(log2 n)`` levels, exact); ``x - max`` (local,
  ``<= 0``); the exp spline (truncated to ``2^f``); the row sum (local,
  ``2^f``); the row-reciprocal spline (activations.py, relative error
  ``<= 1e-3`` on ``[1, 130]``: the sum is at least the maximum's exp, about
  1, and at most ``n (1 + 1e-3)``), truncated; the entries times their row's
  reciprocal (an element-wise product). Rounds: ``2 ceil(log2 n) + 5``
  (plus the input's truncation if it is at ``2^(2f)``): 19 for 128 entries.
  Error per entry ``p_i`` of a row with sum ``s``: with ``delta_j`` the exp's
  error on entry ``j`` plus ``2^-f`` (``1e-3``, or ``e^d`` where the table is
  0, below -6.97) and ``D = sum_j delta_j``, ``|p^_i - p_i| <= (delta_i + p_i
  D) / (s - D) (1 + rho) + rho p_i + 3 2^-f``, ``rho = 1.1e-3``
  (tests/unit/test_fast_softmax.py; measured at most 1.6e-3 on rows of 8
  and 1.1e-3 on rows of 128 with spreads up to 40, 1.5e-5 on flat rows of 128);
* a LayerNorm over the last dim ``d`` (weight ``w`` and bias ``b`` secret
  parameters, PartyModel.params): the input at ``2^f``; the row mean (local
  sum times ``round(2^f / d)``), truncated; ``c = x - mean`` (local); ``c *
  c`` (an element-wise product), summed (local), truncated, times ``1/d``,
  truncated (``var``); ``+ eps`` (a public constant party 0 adds,
  :class:`Shift`); the rsqrt spline (activations.py: relative error ``<=
  1e-3`` on ``[3/128, 160]``, flat below), truncated; ``c`` times it (an
  element-wise product, the row's factor broadcast), truncated; times ``w``
  (an element-wise product with the weight's shares loaded per sample,
  :class:`Load`: a fresh triple hides ``w`` at each opening); ``+ b``
  (:class:`AddParam`, lifted). 10 rounds (plus the input's truncation).
  Error per entry, for ``v + eps`` in ``[3/128, 160]``, ``z = c r``, ``r = 1 /
  sqrt(v + eps)``: ``|y^ - y| <= |w| (|z| (1e-3 + 3 2^-f / (2 (v + eps))) +
  2^-f (2 r + |c| + 2)) + 2^-f`` (tests/unit/test_fast_layer_norm.py;
  measured at most 2.9e-3 on rows of 8 and 128 with ``|w| <= 2``, i.e. about
  6e-4 relative to ``|w| (|z| + 1)``); a row whose variance is below 3/128
  gets the factor 6.53 (nothing promised);
* Transpose, Reshape and Select keep the scale; a Concat joins at the
  larger of its operands' scales, lifting a ``2^f`` operand locally (as Add);
  a Bias's shares (at ``2^f``) are
  lifted by ``2^f`` onto a ``2^(2f)`` value.

Gate masks. Every gate opens ``v + r`` with its own fresh uniform ``r``
(shares in the gate key, added locally before the opening: no extra round),
whatever ``v`` is: a weighted layer's output, a sum, a lifted value or a
difference of two values.

Output width. Gates read only ``o mod 2^L`` (:mod:`.gates`), so a gate's
output needs to be right only mod ``2^L`` unless it reaches the model output
through local steps alone (sum, reshape, transpose, average, max, bias), or
the input of a gate that uses all 64 bits (:data:`FULL_INPUT`: a quadratic
spline squares its input, ``trunc_top_wide`` reads it whole); those gates get
64-bit output lanes (:attr:`GateSpec.out_bits`). At the default ``L = 64``
every gate has them anyway.

Rounds: one per :class:`Open`, one per :class:`Gate` plus the gate's own
(ReLU: one more; a spline gate: none), two per level of a max tournament
(pooling's or a row's), one per :class:`Product` or :class:`Hadamard`. A
chain's plan is exactly the chain engine's: per weighted layer an opening
and a gate. A ResNet basic block is 6 rounds (open, ReLU, open, ReLU after
the Add); independent gates at the same depth are not
merged into one exchange.

Security, per step (per party; the dealer receives nothing):

* :class:`Open`: ``x + r`` with ``r`` fresh, uniform over Z_2^64 and used for
  this one opening, so the opened value is uniform; the weighted layers
  reading it each get their own ``F(B_j, r)`` shares (uniform: the other
  share is fresh), never ``r`` or ``B_j`` in the clear (linear.py);
* :class:`Gate` (also each tournament level): ``v + r`` with its gate key's
  own fresh uniform ``r``, whatever ``v`` is (a product, a sum, a lifted
  value, a difference), then the gate's own argument (gates.py); two gates on
  one value open it under independent masks, which reveals only their
  difference ``r - r'``, independent of the value;
* :class:`Product`, :class:`Hadamard`: ``X - A`` and ``Y - B`` with the
  triple's fresh uniform ``A, B`` (beaver.py);
* :class:`Sum`, :class:`Reshape`, :class:`Permute`, :class:`Pick`, :class:`Join`,
  :class:`Average`,
  :class:`Multiply`, :class:`AddParam`, :class:`Center`, :class:`Shift`,
  :class:`Load`, lifting: local linear maps of each
  party's own shares (public constants only; a Bias adds the party's share of
  a secret): nothing is sent.

Error, per step (units of the real value): a truncation (either gate) is
stochastic rounding, ``< 2^-f``, unbiased; a spline gate is exact in the ring
for its fixed-point table, within its documented bound of the activation
(1e-2 for GELU, tanh and sigmoid, activations.py); a lifted value's low ``f`` bits
are 0, so ReLU of it and each max comparison (``ReLU(lift(a - b))``) add no
error at all; an average over ``k x k`` multiplies by ``round(2^f / k^2) /
2^f``, a relative error of at most ``k^2 / 2^(f+1)`` (0 for 2x2, 4x4, 8x8,
about 7e-5 for 3x3 at ``f = 16``), likewise a Mean over ``n`` (``n / 2^(f+1)``)
and a Scale (``2^-(f+1) / |factor|``, see tensor_ops.py); a Product is exact
but multiplies its operands' errors by the other operand; sums add their
inputs' errors. So a network's error is the chain engine's (one ulp per
truncation, carried through the following layers' weights) plus the
averages' relative error: on the order of 1e-4 for a ResNet-20 on
unit-scale inputs with O(1) activations (bench/fast_resnet.py measures
3e-5), 3.4e-5 for an attention block without softmax
(tests/unit/test_fast_tensor_ops.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ppml.servers.mpc.fast import tensor_ops as tops
from ppml.servers.mpc.fast.activations import SPLINES
from ppml.servers.mpc.fast.gate_table import GATES
from ppml.servers.mpc.fast.linear import Conv2d, Linear, WeightedOp
from ppml.servers.mpc.fast.nodes import (
    GELU,
    MAX_ROW,
    MODEL_INPUT,
    Add,
    AvgPool,
    Flatten,
    LayerNorm,
    MaxPool,
    ModelSpec,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
    arity,
)
from ppml.servers.mpc.fast.pooling import average_factor, pooled_shape, tournament
from ppml.servers.mpc.fast.spline import BIT_SUFFIX
from ppml.servers.mpc.fast.steps import (
    FF,
    FFF,
    AddParam,
    Average,
    Center,
    F,
    Gate,
    Hadamard,
    Join,
    Load,
    Matmul,
    Maximum,
    Multiply,
    Open,
    Permute,
    Pick,
    Product,
    Reshape,
    RowMax,
    Shift,
    Step,
    Sum,
    Value,
)


@dataclass(frozen=True)
class GateSpec:
    """One gate key set: its kind, instances per sample, output lanes' width."""

    kind: str
    per_sample: int
    out_bits: int


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    values: tuple[Value, ...]
    masks: tuple[tuple[int, ...], ...]  # per-sample shape of each opening's mask
    weighted: tuple[WeightedOp, ...]
    weighted_mask: tuple[int, ...]  # the opening each weighted layer reads
    gates: tuple[GateSpec, ...]
    output: int
    triples: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()  # operand shapes
    params: tuple[tuple[int, ...], ...] = ()  # each Bias's parameter shape
    elementwise: tuple[bool, ...] = ()  # per triple: C = A * B (else A @ B)

    def is_elementwise(self, index: int) -> bool:
        return bool(self.elementwise) and self.elementwise[index]

    def triple_shapes(self, index: int) -> tuple[tuple[int, ...], ...]:
        """Per-sample shapes of triple ``index``'s ``A``, ``B`` and ``C = A @ B`` (or ``A * B``)."""
        a, b = self.triples[index]
        return a, b, a if self.is_elementwise(index) else tops.MatMul.out_shape(a, b)

    @property
    def rounds(self) -> int:
        """Online exchanges of one forward."""
        total = 0
        for s in self.steps:
            if isinstance(s, Open):
                total += 1
            elif isinstance(s, Gate):
                total += 1 + GATES[s.kind].rounds
            elif isinstance(s, Maximum | RowMax):
                total += 2 * len(s.gates)
            elif isinstance(s, Product | Hadamard):
                total += 1
        return total

    def elements_per_sample(self) -> int:
        """Dealer-made values per sample: openings, triples' elements, gate instances."""
        triples = sum(_size(s) for t in range(len(self.triples)) for s in self.triple_shapes(t))
        return sum(_size(m) for m in self.masks) + triples + sum(g.per_sample for g in self.gates)


BIT_SPLINE_POINTS = 8192
"""Values times the table's pieces (its breakpoints plus one) per sample from which a spline
is a ``<name>_bit`` gate (spline.py): one more round, for smaller keys and far less evaluation
per comparison (a quarter for a quadratic spline); below it, ``<name>``. A transformer's GELU,
exp, rsqrt and row reciprocal are bit gates; a small layer's activation is not. (Every
truncation is a ``trunc_top`` gate, gates.py: no DCF, no extra round.)"""


class _Builder:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.values: list[Value] = [Value(tuple(spec.input_shape), F)]
        self.steps: list[Step] = []
        self.masks: list[tuple[int, ...]] = []
        self.weighted: list[WeightedOp] = []
        self.weighted_mask: list[int] = []
        self.gates: list[tuple[str, int]] = []
        self.triples: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self.params: list[tuple[int, ...]] = []
        self.elementwise: list[bool] = []
        self._opened: dict[int, int] = {}
        self._truncated: dict[int, int] = {}

    def value(self, shape: tuple[int, ...], scale: int) -> int:
        self.values.append(Value(tuple(shape), scale))
        return len(self.values) - 1

    def gate(self, kind: str, src: int) -> int:
        v = self.values[src]
        self.gates.append((kind, _size(v.shape)))
        dst = self.value(v.shape, F)
        self.steps.append(Gate(dst, src, len(self.gates) - 1, kind, v.scale == F))
        return dst

    def spline(self, kind: str, src: int) -> int:
        """A spline gate (spline.py): input at 2^f (truncated first if need be).

        Degree 1: output at 2^(2f), truncated lazily; degree 2: output at 2^(3f),
        truncated at once to 2^f by a ``trunc_top_wide`` gate (gates.py).
        """
        p, table = self.spec.params, SPLINES[kind]
        if any(abs(b) >= 1 << p.depth for b in table.fixed(p.frac_bits).breakpoints):
            raise ValueError(f"{kind}'s breakpoints lie outside the gate range of depth {p.depth}")
        if table.degree > 1 and table.range_bits + 3 * p.frac_bits > 62:
            raise ValueError(f"{kind}'s values at 2^(3f) do not fit the ring at f = {p.frac_bits}")
        src = self.at_f(src)
        shape = self.values[src].shape
        points = _size(shape) * len(table.pieces)
        large = points >= BIT_SPLINE_POINTS  # comparisons from one-bit DCFs (spline.py)
        self.gates.append((f"{kind}{BIT_SUFFIX}" if large else kind, _size(shape)))
        dst = self.value(shape, FF if table.degree == 1 else FFF)
        self.steps.append(Gate(dst, src, len(self.gates) - 1, self.gates[-1][0], False))
        if table.degree == 1:
            return dst
        return self.gate("trunc_top_wide", dst)

    def at_f(self, src: int) -> int:
        """``src`` at scale 2^f: itself, or its (shared) truncation."""
        if self.values[src].scale == F:
            return src
        if src not in self._truncated:
            self._truncated[src] = self.gate("trunc_top", src)
        return self._truncated[src]

    def opened(self, src: int) -> int:
        """The opening of ``src`` at 2^f (one per value, shared by its weighted readers)."""
        src = self.at_f(src)
        if src not in self._opened:
            self.masks.append(self.values[src].shape)
            self._opened[src] = len(self.masks) - 1
            self.steps.append(Open(src, self._opened[src]))
        return self._opened[src]

    def node(self, node: object, srcs: list[int]) -> int:
        shapes = [self.values[s].shape for s in srcs]
        if isinstance(node, Linear | Conv2d):
            if _size(node.in_shape) != _size(shapes[0]) or (
                isinstance(node, Linear) and node.lead and node.in_shape != shapes[0]
            ):
                raise ValueError(f"{node} expects {node.in_shape}, gets {shapes[0]}")
            mask = self.opened(srcs[0])
            self.weighted.append(node)
            self.weighted_mask.append(mask)
            dst = self.value(node.out_shape, FF)
            self.steps.append(Matmul(dst, len(self.weighted) - 1, mask))
            return dst
        if isinstance(node, ReLU):
            return self.gate("relu", srcs[0])
        if isinstance(node, GELU | Tanh | Sigmoid):
            return self.spline(node.kind, srcs[0])
        if isinstance(node, Flatten):
            dst = self.value((_size(shapes[0]),), self.values[srcs[0]].scale)
            self.steps.append(Reshape(dst, srcs[0]))
            return dst
        if isinstance(node, Add):
            if shapes[0] != shapes[1]:
                raise ValueError(f"Add of shapes {shapes[0]} and {shapes[1]}")
            sa, sb = (self.values[s].scale for s in srcs)
            dst = self.value(shapes[0], max(sa, sb))
            self.steps.append(Sum(dst, srcs[0], srcs[1], sa < sb, sb < sa))
            return dst
        if isinstance(node, AvgPool | MaxPool):
            return self.pool(node, srcs[0])
        if isinstance(node, Softmax):
            return self.softmax(srcs[0])
        if isinstance(node, LayerNorm):
            return self.layer_norm(node, srcs[0])
        return self.tensor(node, srcs)

    def hadamard(self, a: int, b: int) -> int:
        """``a * b`` element-wise (``b`` broadcast to ``a``), both at 2^f: a Beaver triple."""
        a, b = self.at_f(a), self.at_f(b)
        sa, sb = self.values[a].shape, self.values[b].shape
        if len(sa) != len(sb) or any(y not in (1, x) for x, y in zip(sa, sb, strict=True)):
            raise ValueError(f"cannot multiply {sa} by {sb} element-wise")
        self.triples.append((sa, sb))
        self.elementwise.append(True)
        dst = self.value(sa, FF)
        self.steps.append(Hadamard(dst, a, b, len(self.triples) - 1))
        return dst

    def row_max(self, src: int) -> int:
        """Each row's maximum over the last axis (at 2^f): a ReLU tournament."""
        shape = self.values[src].shape
        first = len(self.gates)
        for pairs in tournament(shape[-1]):
            self.gates.append(("relu_row", _size(shape[:-1]) * pairs))  # gates.RowMaxRelu
        dst = self.value(shape[:-1], F)
        self.steps.append(RowMax(dst, src, tuple(range(first, len(self.gates)))))
        return dst

    def softmax(self, src: int) -> int:
        """``exp(x - max) / sum`` over the last axis (graph doc, Softmax)."""
        x = self.at_f(src)
        shape = self.values[x].shape
        if not 1 <= shape[-1] <= MAX_ROW:
            raise ValueError(f"softmax rows of {shape[-1]} entries (at most {MAX_ROW})")
        centred = self.value(shape, F)
        self.steps.append(Center(centred, x, self.row_max(x)))
        e = self.at_f(self.spline("exp", centred))
        total = self.value(shape[:-1], F)
        self.steps.append(Multiply(total, e, 1, len(shape) - 1))
        inv = self.at_f(self.spline("row_reciprocal", total))
        column = self.value((*shape[:-1], 1), F)
        self.steps.append(Reshape(column, inv))
        return self.hadamard(e, column)

    def layer_norm(self, node: LayerNorm, src: int) -> int:
        """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last dim (graph doc)."""
        f = self.spec.params.frac_bits
        x = self.at_f(src)
        shape = self.values[x].shape
        if shape[-1] != node.dim or not 0 <= node.eps <= 1:
            raise ValueError(f"LayerNorm({node.dim}, eps={node.eps}) of shape {shape}")
        rows, last, inverse = shape[:-1], len(shape) - 1, tops.reciprocal(node.dim, f)
        mean = self.value(rows, FF)
        self.steps.append(Multiply(mean, x, inverse, last))
        centred = self.value(shape, F)
        self.steps.append(Center(centred, x, self.at_f(mean)))
        total = self.value(rows, FF)
        self.steps.append(Multiply(total, self.hadamard(centred, centred), 1, last))
        var = self.value(rows, FF)
        self.steps.append(Multiply(var, self.at_f(total), inverse, None))
        shifted = self.value(rows, F)
        self.steps.append(Shift(shifted, self.at_f(var), round(node.eps * (1 << f))))
        column = self.value((*rows, 1), F)
        self.steps.append(Reshape(column, self.at_f(self.spline("rsqrt", shifted))))
        normed = self.hadamard(centred, column)
        param = (1,) * last + (node.dim,)
        self.params.append(param)
        weight = self.value(param, F)
        self.steps.append(Load(weight, len(self.params) - 1))
        scaled = self.hadamard(normed, weight)
        self.params.append(param)
        dst = self.value(shape, FF)
        self.steps.append(AddParam(dst, scaled, len(self.params) - 1, True))
        return dst

    def tensor(self, node: object, srcs: list[int]) -> int:
        """A transformer's tensor node (tensor_ops.py)."""
        src = srcs[0]
        shape, scale = self.values[src].shape, self.values[src].scale
        if isinstance(node, tops.MatMul):
            a, b = self.at_f(srcs[0]), self.at_f(srcs[1])
            operands = (self.values[a].shape, self.values[b].shape)
            dst = self.value(node.out_shape(*operands), FF)
            self.triples.append(operands)
            self.elementwise.append(False)
            self.steps.append(Product(dst, a, b, len(self.triples) - 1))
            return dst
        if isinstance(node, tops.Reshape):
            dst = self.value(node.out_shape(shape), scale)
            self.steps.append(Reshape(dst, src))
            return dst
        if isinstance(node, tops.Transpose):
            dst = self.value(node.out_shape(shape), scale)
            self.steps.append(Permute(dst, src, node.perm))
            return dst
        if isinstance(node, tops.Select):
            dst = self.value(node.out_shape(shape), scale)
            self.steps.append(Pick(dst, src, node.axis, node.index))
            return dst
        if isinstance(node, tops.Concat):
            sa, sb = (self.values[s].scale for s in srcs)
            dst = self.value(node.join(shape, self.values[srcs[1]].shape), max(sa, sb))
            self.steps.append(Join(dst, srcs[0], srcs[1], node.axis, sa < sb, sb < sa))
            return dst
        if isinstance(node, tops.Bias):
            dst = self.value(node.out_shape(shape), scale)
            self.params.append(node.shape)
            self.steps.append(AddParam(dst, src, len(self.params) - 1, scale == FF))
            return dst
        if isinstance(node, tops.Scale | tops.Mean):
            out = node.out_shape(shape)
            at_f = self.at_f(src)
            if isinstance(node, tops.Scale):
                factor, axis = node.multiplier, None
            else:
                factor = tops.reciprocal(shape[node.axis], self.spec.params.frac_bits)
                axis = node.axis
            dst = self.value(out, FF)
            self.steps.append(Multiply(dst, at_f, factor, axis))
            return dst
        raise ValueError(f"the fast engine has no node {type(node).__name__}")

    def pool(self, node: AvgPool | MaxPool, src: int) -> int:
        src = self.at_f(src)
        shape = pooled_shape(self.values[src].shape, node.kernel, node.stride)
        if isinstance(node, AvgPool):
            factor = average_factor(node.kernel, self.spec.params.frac_bits)
            dst = self.value(shape, FF)
            self.steps.append(Average(dst, src, node.kernel, node.stride, factor))
            return dst
        positions = _size(shape)
        first = len(self.gates)
        for pairs in tournament(node.kernel * node.kernel):
            self.gates.append(("relu", positions * pairs))
        dst = self.value(shape, F)
        gates = tuple(range(first, len(self.gates)))
        self.steps.append(Maximum(dst, src, node.kernel, node.stride, gates))
        return dst


def _check_sources(spec: ModelSpec) -> None:
    if spec.inputs and len(spec.inputs) != len(spec.layers):
        raise ValueError(f"{len(spec.inputs)} input lists for {len(spec.layers)} nodes")
    for i, node in enumerate(spec.layers):
        srcs = spec.sources(i)
        if len(srcs) != arity(node):
            raise ValueError(f"node {i} takes {arity(node)} inputs, given {len(srcs)}")
        if not all(type(s) is int and MODEL_INPUT <= s < i for s in srcs):
            raise ValueError(f"node {i} reads {srcs}: each must be an earlier node or -1")


FULL_INPUT = frozenset(
    {
        "trunc_top_wide",
        *(k + x for k, s in SPLINES.items() if s.degree > 1 for x in ("", BIT_SUFFIX)),
    }
)
"""Gates that use their input's every bit (quadratic splines square it; trunc_top_wide reads 64)."""


def _full_width(plan_steps: list[Step], output: int) -> tuple[set[int], set[int]]:
    """Values and gates whose outputs must be right mod 2^64: those reaching the model output,
    or the input of a :data:`FULL_INPUT` gate, through local steps only."""
    values, gates = {output}, set[int]()
    for s in reversed(plan_steps):
        if isinstance(s, Sum | Join) and s.dst in values:
            values |= {s.a, s.b}
        elif isinstance(s, Reshape | Average | Permute | Multiply | AddParam | Shift | Pick) and (
            s.dst in values
        ):
            values.add(s.src)
        elif isinstance(s, Center) and s.dst in values:
            values |= {s.src, s.sub}
        elif isinstance(s, Maximum | RowMax) and s.dst in values:
            values.add(s.src)
            gates.update(s.gates)
        elif isinstance(s, Gate):
            if s.dst in values:
                gates.add(s.gate)
            if s.kind in FULL_INPUT:
                values.add(s.src)
    return values, gates


@lru_cache(maxsize=128)
def plan_of(spec: ModelSpec) -> Plan:
    """The plan of ``spec``; ValueError if the engine cannot run it (bad graph or shapes)."""
    if not spec.layers:
        raise ValueError("the model has no nodes")
    _check_sources(spec)
    b = _Builder(spec)
    node_value: dict[int, int] = {MODEL_INPUT: 0}
    for i, node in enumerate(spec.layers):
        node_value[i] = b.node(node, [node_value[s] for s in spec.sources(i)])
    if not b.weighted:
        raise ValueError("the model has no Linear or Conv2d layer")
    output = b.at_f(node_value[len(spec.layers) - 1])
    _, full = _full_width(b.steps, output)
    low = spec.params.low_bits
    gates = tuple(
        GateSpec(kind, n, 64 if g in full else low) for g, (kind, n) in enumerate(b.gates)
    )
    return Plan(
        tuple(b.steps),
        tuple(b.values),
        tuple(b.masks),
        tuple(b.weighted),
        tuple(b.weighted_mask),
        gates,
        output,
        tuple(b.triples),
        tuple(b.params),
        tuple(b.elementwise),
    )


def _size(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out
