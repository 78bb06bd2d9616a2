"""A plan, for one slot layout, as the operations the evaluator runs.

Every weighted layer, the convolution included, is a sparse matrix between
two layouts: entry ``(i, j)`` takes the input feature at ``(ct_in, q)`` to the
output feature at ``(ct_out, p)``. Grouped by diagonal ``d = q - p``, the
product is

    y_out = sum_(ct_in, d) D[ct_in, d] * rot(x_ct_in, d)

computed with baby steps and giant steps: ``d = g*T + b`` with ``0 <= b < T``,
``y = sum_g rot(sum_(ct_in, b) P[ct_in, g, b] * rot(x_ct_in, b), g*T)``
where ``P`` is ``D`` rolled by ``g*T`` (Halevi and Shoup, 2014). ``T`` is
the power of two with the fewest rotations for that layer. Because every
``(i, j)`` pair is an image's own output and input, a read never leaves the
image's region, whatever the rotation.

A layer whose input holds several channel blocks of width ``W`` in one
ciphertext (the convolution's output in the ``single`` layout) is computed
*block-locally* instead: each block's share of the output lands at the start
of that block (few diagonals), and ``log2(blocks)`` rotations fold the blocks
onto block 0.

:func:`simulate` runs the operations on plain slot vectors, which tests use to
check the lowering without any encryption.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ppml.proto.he.layout import InputLayout, pow2
from ppml.proto.he.plan import HePlan, PlanError, Square

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


@dataclass
class OutputCt:
    """One output ciphertext of a linear layer."""

    # (input ciphertext, giant g, baby b) -> weights over all slots (already rolled by g*T)
    terms: dict[tuple[int, int, int], Floats]
    bias: Floats  # over all slots, added after the fold


@dataclass
class LinearOp:
    giant: int  # T
    outputs: list[OutputCt]
    fold: list[int] = field(default_factory=list)  # rotation steps after the rescale

    def rotations(self) -> int:
        """Rotations one evaluation performs (babies, Horner giants, folds)."""
        count = len(self.fold) * len(self.outputs)
        for out in self.outputs:
            babies = {(c, b) for c, _, b in out.terms if b}
            gs = {g for _, g, _ in out.terms}
            count += len(babies) + max(max(gs), 0) + max(-min(gs), 0)
        return count


@dataclass
class SquareOp:
    pass


Op = LinearOp | SquareOp


@dataclass(frozen=True)
class _Where:
    where: Ints  # (features, 2): ciphertext, slot in region
    cts: int
    blocks: tuple[int, int] | None = None  # (channels, W) when channel blocks share ct 0


def lower(plan: HePlan, layout: InputLayout, slots: int) -> list[Op]:
    ops: list[Op] = []
    region = layout.region
    cur = _Where(layout.where, layout.ciphertexts)
    first = True
    for step in plan.steps if plan.conv is None else (None, *plan.steps):
        if isinstance(step, Square):
            ops.append(SquareOp())
            continue
        if step is None:  # the convolution, a sparse matrix from im2col columns
            matrix, bias = _conv_matrix(plan)
            out = _conv_output(plan, layout)
        else:
            matrix, bias = step.matrix, step.bias
            m = matrix.shape[0]
            if m > region:
                raise PlanError(f"a layer of {m} outputs exceeds {region} slots per image")
            out = _Where(np.stack([np.zeros(m, np.int64), np.arange(m)], axis=1), 1)
        ops.append(_linear(matrix, bias, cur, out, region, slots, fold=not first))
        cur = out
        first = False
    return ops


def _conv_matrix(plan: HePlan) -> tuple[Floats, Floats]:
    conv = plan.conv
    assert conv is not None
    channels, windows, k = conv.weight.shape[0], plan.conv_windows, plan.kernel_positions()
    w = conv.weight.reshape(channels, k)
    matrix = np.zeros((channels * windows, k * windows))
    for o in range(channels):
        for kk in range(k):
            idx = np.arange(windows)
            matrix[o * windows + idx, kk * windows + idx] = w[o, kk]
    return matrix, np.repeat(conv.bias, windows)


def _conv_output(plan: HePlan, layout: InputLayout) -> _Where:
    assert plan.conv is not None
    channels, windows = int(plan.conv.weight.shape[0]), plan.conv_windows
    block = layout.channel_block
    o, w = np.meshgrid(np.arange(channels), np.arange(windows), indexing="ij")
    if channels * block <= layout.region:
        where = np.stack([np.zeros(o.size, np.int64), (o * block + w).ravel()], axis=1)
        return _Where(where, 1, (channels, block) if channels > 1 else None)
    return _Where(np.stack([o.ravel(), w.ravel()], axis=1), channels)


def _linear(
    matrix: Floats, bias: Floats, cur: _Where, out: _Where, region: int, slots: int, fold: bool
) -> LinearOp:
    rows, cols = np.nonzero(matrix)
    weights = matrix[rows, cols]
    in_ct, q = cur.where[cols, 0], cur.where[cols, 1]
    out_ct, p = out.where[rows, 0], out.where[rows, 1]
    steps: list[int] = []
    m = matrix.shape[0]
    if fold and cur.blocks is not None and out.cts == 1 and m <= cur.blocks[1]:
        channels, width = cur.blocks
        p = (q // width) * width + p  # each block's share lands at the start of its block
        span = pow2(channels)
        steps = [width * (span >> (s + 1)) for s in range(span.bit_length() - 1)]
    diags: list[dict[tuple[int, int], Floats]] = [
        defaultdict(lambda: np.zeros(region)) for _ in range(out.cts)
    ]
    for oc, pp, ic, qq, wt in zip(out_ct, p, in_ct, q, weights, strict=True):
        diags[oc][(int(ic), int(qq - pp))][pp] += wt
    giant = _best_giant(diags, region)
    outputs = []
    reps = slots // region
    for oc in range(out.cts):
        terms: dict[tuple[int, int, int], Floats] = {}
        for (ic, d), vec in diags[oc].items():
            b = d % giant
            g = (d - b) // giant
            terms[(ic, g, b)] = np.roll(np.tile(vec, reps), g * giant)
        bias_vec = np.zeros(region)
        sel = out.where[:, 0] == oc
        bias_vec[out.where[sel, 1]] = bias[sel]
        outputs.append(OutputCt(terms, np.tile(bias_vec, reps)))
    return LinearOp(giant, outputs, steps)


def _best_giant(diags: list[dict[tuple[int, int], Floats]], region: int) -> int:
    best, best_cost = 1, None
    t = 1
    while t <= 2 * region:
        cost = 0
        for per_out in diags:
            babies = {(ic, d % t) for ic, d in per_out if d % t}
            gs = {(d - d % t) // t for _, d in per_out} or {0}
            cost += len(babies) + max(max(gs), 0) + max(-min(gs), 0)
        if best_cost is None or cost < best_cost:
            best, best_cost = t, cost
        t *= 2
    return best


def simulate(ops: list[Op], inputs: list[Floats]) -> Floats:
    """The operations on plain slot vectors: what the encrypted evaluation computes."""

    def rot(v: Floats, k: int) -> Floats:
        return np.roll(v, -k)

    xs = list(inputs)
    for op in ops:
        if isinstance(op, SquareOp):
            xs = [x * x for x in xs]
            continue
        new = []
        for out in op.outputs:
            inner: dict[int, Floats] = {}
            for (ic, g, b), vec in out.terms.items():
                inner[g] = inner.get(g, 0.0) + vec * rot(xs[ic], b)
            y = sum((rot(v, g * op.giant) for g, v in inner.items()), np.zeros_like(xs[0]))
            for s in op.fold:
                y = y + rot(y, s)
            new.append(y + out.bias)
        xs = new
    return xs[0]
