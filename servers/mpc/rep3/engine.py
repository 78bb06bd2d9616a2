"""Three-party inference on replicated shares: model setup and forward, no dealer.

Model: the fast engine's public spec (:class:`~ppml.servers.mpc.fast.engine.ModelSpec`,
a chain of Linear / Conv2d layers, each optionally followed by ReLU, Flatten
anywhere); its layer objects give the bilinear ``apply``.

* Setup, once per model and session (:func:`share_model`, 1 round): each
  server holds additive shares of the weights and biases (the SDK's wire
  form); they are reshared into replicated form and kept.
* Forward (:func:`forward`), from additive input shares:

  - input to replicated (1 round);
  - per weighted layer: local product ``x W^T`` as three additive shares
    (:func:`~ppml.servers.mpc.rep3.rss.matmul_local`) plus the bias at product
    scale;
  - followed by ReLU: reshare (1), then sign circuit with the truncation
    alongside (8), then select (2): 11 rounds;
  - a hidden layer without ReLU: truncate (2), reshare (1);
  - the last layer: truncate (2); each party hands back its additive share
    plus a fresh zero share.

  Network A (784-128-128-10, ReLU): 1 + 11 + 11 + 2 = 25 rounds.

Fixed point: 16 fractional bits (the wire contract); products at scale
``2^32`` are truncated back, exact to one unit for values below ``2^30``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ppml.servers.mpc.fast.engine import ModelSpec
from ppml.servers.mpc.fast.linear import Linear, WeightedOp
from ppml.servers.mpc.fast.prg import Ring
from ppml.servers.mpc.rep3 import pool as pooling
from ppml.servers.mpc.rep3 import trunc
from ppml.servers.mpc.rep3.keys import Correlated
from ppml.servers.mpc.rep3.ringmm import RingMatrix
from ppml.servers.mpc.rep3.rounds import Steps, gather
from ppml.servers.mpc.rep3.rss import Shared, reshare, to_additive
from ppml.servers.mpc.rep3.select import relu_trunc

FRAC_BITS = 16


@dataclass(frozen=True)
class Stage:
    """A weighted layer, its gate (``relu`` or ``trunc``) and the pooling after it, if any."""

    op: WeightedOp
    gate: str
    pool: pooling.Pool | None = None


@dataclass(frozen=True)
class Chain:
    """What this engine runs: the fast engine's stages, each optionally followed by pooling."""

    stages: tuple[Stage, ...]
    input_shape: tuple[int, ...]


def as_chain(spec: ModelSpec | Chain) -> Chain:
    """A fast-engine spec (no pooling) as a :class:`Chain`; a chain as it is."""
    if isinstance(spec, Chain):
        return spec
    return Chain(tuple(Stage(s.op, s.gate) for s in spec.stages), tuple(spec.input_shape))


@dataclass(frozen=True)
class SharedModel:
    """Replicated weights (in the layout ``op.apply`` takes) and biases, per stage.

    Never changed in place (a training step makes a new model): what
    :meth:`local_product` derives from the weights is kept with them.
    """

    weights: tuple[Shared, ...]
    biases: tuple[Shared | None, ...]

    @cached_property
    def _stacked(self) -> dict[int, RingMatrix]:
        return {}

    @cached_property
    def _sums(self) -> dict[int, Ring]:
        return {}

    def local_product(self, i: int, op: WeightedOp, h: Shared) -> Ring:
        """This party's additive share of stage ``i``'s product, as ``matmul_local`` gives it.

        ``x_a (w_a + w_b) + x_b w_a``, with what depends on the weights only made
        on first use: for a Linear stage the stacked ``[[w_a + w_b], [w_a]]``
        (one ring product of ``[x_a, x_b]``), for others ``w_a + w_b``.
        """
        w = self.weights[i]
        if isinstance(op, Linear):
            if i not in self._stacked:
                self._stacked[i] = RingMatrix(np.concatenate([w.a + w.b, w.a]))
            b = h.shape[0]
            x = np.concatenate([h.a.reshape(b, -1), h.b.reshape(b, -1)], axis=1)
            return self._stacked[i].left_mul(x)
        if i not in self._sums:
            self._sums[i] = w.a + w.b
        out: Ring = op.apply(h.a, self._sums[i]) + op.apply(h.b, w.a)
        return out


def share_model(
    corr: Correlated, spec: ModelSpec | Chain, weights: list[Ring], biases: list[Ring | None]
) -> Steps[SharedModel]:
    """This server's additive shares of every stage's weight and bias, made replicated: 1 round."""
    spec = as_chain(spec)
    if len(weights) != len(spec.stages) or len(biases) != len(spec.stages):
        raise ValueError("one weight and one bias (or None) per weighted layer")
    parts = []
    for stage, w, b in zip(spec.stages, weights, biases, strict=True):
        parts.append(reshare(corr, stage.op.transpose(np.asarray(w, dtype=np.int64))))
        if b is not None:
            parts.append(reshare(corr, np.asarray(b, dtype=np.int64).reshape(-1)))
    shared = yield from gather(*parts)
    out_w: list[Shared] = []
    out_b: list[Shared | None] = []
    it = iter(shared)
    for b in biases:
        out_w.append(next(it))
        out_b.append(next(it) if b is not None else None)
    return SharedModel(tuple(out_w), tuple(out_b))


def forward(corr: Correlated, spec: ModelSpec | Chain, model: SharedModel, x: Ring) -> Steps[Ring]:
    """Additive output shares (batch, *out) from additive input shares (batch, *input_shape)."""
    spec = as_chain(spec)
    if tuple(x.shape[1:]) != tuple(spec.input_shape):
        raise ValueError(f"input has shape {x.shape}, the model takes (batch, *{spec.input_shape})")
    h = yield from reshare(corr, np.ascontiguousarray(x, dtype=np.int64))
    last = len(spec.stages) - 1
    for i, stage in enumerate(spec.stages):
        op = stage.op
        z = model.local_product(i, op, h)
        bias = model.biases[i]
        if bias is not None:  # each party adds its own component: the three sum to the bias
            z = z + op.bias_term(bias.a) * np.int64(1 << FRAC_BITS)
        if stage.gate == "relu":
            zs = yield from reshare(corr, z)
            h = yield from relu_trunc(corr, zs, FRAC_BITS)
        elif i == last and stage.pool is None:
            y = yield from trunc.from_additive(corr, z, FRAC_BITS)
            out: Ring = y + corr.zero(y.shape)
            return out
        else:
            y = yield from trunc.from_additive(corr, z, FRAC_BITS)
            h = yield from reshare(corr, y)
        if stage.pool is not None:
            h = yield from pooling.apply(corr, stage.pool, h)
        if i == last:
            return to_additive(corr, h)
    raise AssertionError("unreachable: a spec has at least one stage")
