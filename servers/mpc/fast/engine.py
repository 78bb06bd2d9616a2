"""Dealer-assisted two-party inference on masked wires: dealer preprocessing and party forward.

Model: a :class:`~ppml.servers.mpc.fast.nodes.ModelSpec`, a chain or a DAG
of weighted layers (:class:`Linear`, :class:`Conv2d`), ReLU, residual Add,
average and max pooling and Flatten, and a transformer's linear half
(:mod:`.tensor_ops`: MatMul of two activations, Transpose, Reshape, Scale,
Bias, Mean). :func:`~ppml.servers.mpc.fast.graph.plan_of`
turns it into steps: openings of weighted layers' inputs, local matmuls,
gates (:class:`~ppml.servers.mpc.fast.gates.ReluTrunc` for ReLU and max
comparisons, :class:`~ppml.servers.mpc.fast.gates.TruncTop` where only
truncation is needed, a spline gate of :mod:`.spline` per GELU, Tanh or
Sigmoid; all by name in :mod:`.gate_table`) and local sums, reshapes and window sums.

Protocol for one forward of a batch (parties P0, P1; dealer D):

* once per model: D derives weight masks from a model key and shares them
  (:meth:`Dealer.model_setup`); the parties open ``W^ = W - B``
  (:meth:`PartyModel.open`, one round);
* offline: D makes one :class:`Bundle` per party (:meth:`Dealer.preprocess`):
  per opening a mask ``r``, per weighted layer ``F(B, r)``, per gate a key
  set, per MatMul of two activations a matrix Beaver triple, all shared;
  each party folds it with ``W^`` into per-layer offsets (:func:`prepare`),
  still input-independent;
* online (:func:`forward`), given additive shares of the fixed-point input,
  the plan's steps in order: an opening is one round (``x^ = x + r``); a
  weighted layer is local (``F(W_i, x^)`` plus the offset: shares of the
  pre-activation at ``2^(2f)``); a gate adds its key's mask shares, opens (one
  round) and evaluates (ReLU opens one masked bit: one more round); a max
  tournament level is one ReLU gate over all its comparisons. The output is
  additive shares of the fixed-point last node. For a chain: ``2 * stages``
  rounds plus one per ReLU layer (8 for Network A), each a single
  simultaneous exchange of one int64 array.

Range: with the default :class:`~ppml.servers.mpc.fast.gates.GateParams`
(depth 47, ``L = 64``) the ReLU gate is exact (to stochastic rounding) for
every pre-activation the ring holds, ``|v| < 2^31`` at product scale
``2^32``, and truncation alone for half that range, ``|v| < 2^30`` (gates.py:
one bit of headroom replaces its comparison); a layer whose true output is
larger than the ring holds wraps it in its matmul, as in any engine on this
number format. Each spline gate
has its table's narrower range (activations.py: ``|x| < 4096`` for GELU,
tanh, sigmoid and softmax's exp) and beyond it outputs one of its table's
pieces applied to the input (spline.py, Range).

Security: every opened value is a secret plus a fresh uniform mask known only
to D, used for that one opening (an opening's mask ``r`` is shared by the
weighted layers reading it, but opened once), every share a party receives
is uniform (the other share is fresh), and DCF keys hide their thresholds and
payloads; so each party's view is independent of the input and of the
weights (see linear.py, gates.py and graph.py for the per-step arguments).
D receives nothing from the parties.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ppml.servers.mpc.fast import beaver, steps, tensor_ops
from ppml.servers.mpc.fast.bundle import Bundle, ModelSetup
from ppml.servers.mpc.fast.gate_table import GATES
from ppml.servers.mpc.fast.gates import split
from ppml.servers.mpc.fast.graph import plan_of
from ppml.servers.mpc.fast.linear import Conv2d, Linear, weight_mask
from ppml.servers.mpc.fast.nodes import (
    Add,
    AvgPool,
    Flatten,
    Layer,
    MaxPool,
    ModelSpec,
    ReLU,
    Stage,
)
from ppml.servers.mpc.fast.pooling import window_sums, windows
from ppml.servers.mpc.fast.prg import FixedKeyPRG, KeyedPRG, Ring

__all__ = [
    "Add",
    "AvgPool",
    "Bundle",
    "CommStats",
    "Conv2d",
    "CountingExchange",
    "Dealer",
    "Flatten",
    "Layer",
    "Linear",
    "MaxPool",
    "ModelSetup",
    "ModelSpec",
    "PartyModel",
    "Prepared",
    "ReLU",
    "Stage",
    "forward",
    "prepare",
]

Exchange = Callable[[Ring], Ring]


class Dealer:
    """Makes correlated randomness; sees only architectures, batch sizes and its own keys.

    All randomness comes from one secret AES-CTR stream (256-bit key from
    ``os.urandom`` unless given) and from per-model keys. Not thread-safe.
    """

    def __init__(self, rng: KeyedPRG | None = None) -> None:
        self._rng = rng or KeyedPRG()
        self._prg = FixedKeyPRG()

    def model_setup(self, spec: ModelSpec, model_key: bytes) -> tuple[ModelSetup, ModelSetup]:
        """Shares of every weighted layer's weight mask (one-time, per model)."""
        pairs = [
            split(weight_mask(model_key, i, op), self._rng)
            for i, op in enumerate(plan_of(spec).weighted)
        ]
        return ModelSetup(0, tuple(p[0] for p in pairs)), ModelSetup(1, tuple(p[1] for p in pairs))

    def preprocess(self, spec: ModelSpec, model_key: bytes, batch: int) -> tuple[Bundle, Bundle]:
        """Bundles for one forward of ``batch`` samples (fresh masks and keys)."""
        if batch < 1:
            raise ValueError("batch must be positive")
        plan = plan_of(spec)
        masks = [self._rng.ring((batch, *shape)) for shape in plan.masks]
        products = [
            op.apply(masks[m], op.transpose(weight_mask(model_key, i, op)))
            for i, (op, m) in enumerate(zip(plan.weighted, plan.weighted_mask, strict=True))
        ]
        keys = [
            GATES[g.kind].gen(spec.params, batch * g.per_sample, self._rng, self._prg, g.out_bits)
            for g in plan.gates
        ]
        triples = [
            beaver.deal(batch, a, b, self._rng, plan.is_elementwise(t))
            for t, (a, b) in enumerate(plan.triples)
        ]
        mask_parts = [split(m, self._rng) for m in masks]
        product_parts = [split(p, self._rng) for p in products]

        def part(b: int) -> Bundle:
            return Bundle(
                b,
                batch,
                tuple(m[b] for m in mask_parts),
                tuple(p[b] for p in product_parts),
                tuple(k[b] for k in keys),
                tuple(t[b] for t in triples),
            )

        return part(0), part(1)

    def preprocess_many(
        self, spec: ModelSpec, model_key: bytes, batch: int, count: int
    ) -> list[tuple[Bundle, Bundle]]:
        """``count`` bundle pairs for forwards of ``batch`` samples, made in one pass.

        One :meth:`preprocess` of ``batch * count`` samples, cut into parts
        (:meth:`Bundle.rows`): the same material as ``count`` separate calls,
        but every gate's key generation runs once over all of it (small
        bundles are otherwise dominated by per-level overhead).
        """
        if count < 1:
            raise ValueError("count must be positive")
        both = self.preprocess(spec, model_key, batch * count)
        return [
            (both[0].rows(j * batch, (j + 1) * batch), both[1].rows(j * batch, (j + 1) * batch))
            for j in range(count)
        ]


@dataclass
class CommStats:
    """What one party sent: rounds (exchanges) and bytes."""

    rounds: int = 0
    bytes_sent: int = 0


class CountingExchange:
    """Wraps an ``exchange`` callable and counts rounds and bytes sent."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange
        self.stats = CommStats()

    def __call__(self, mine: Ring) -> Ring:
        mine = np.ascontiguousarray(mine, dtype=np.int64)
        peer = self._exchange(mine)
        if peer.shape != mine.shape:
            raise ValueError(f"peer sent shape {peer.shape}, expected {mine.shape}")
        self.stats.rounds += 1
        self.stats.bytes_sent += mine.nbytes
        return peer

    def open(self, mine: Ring) -> Ring:
        """Reconstruct ``mine + peer`` (mod 2^64): one round."""
        peer = self(mine)
        with np.errstate(over="ignore"):
            return mine + peer


@dataclass(frozen=True)
class PartyModel:
    """What a party keeps per model: its weight/bias shares and the opened ``W^`` (transposed).

    ``params``: its shares of each :class:`~.tensor_ops.Bias` node's parameter
    and each :class:`~.nodes.LayerNorm`'s weight then bias, in node order
    (at 2^f; never opened: a LayerNorm weight enters Beaver products masked
    by fresh triples).
    """

    spec: ModelSpec
    party: int
    weights_t: tuple[Ring, ...]
    biases: tuple[Ring | None, ...]
    masked_t: tuple[Ring, ...]
    params: tuple[Ring, ...] = ()

    @classmethod
    def open(
        cls,
        spec: ModelSpec,
        setup: ModelSetup,
        weights: Sequence[Ring],
        biases: Sequence[Ring | None],
        exchange: Exchange,
        params: Sequence[Ring] = (),
    ) -> PartyModel:
        """One-time: open ``W^ = W - B`` for every layer in one round (all layers concatenated).

        ``weights``/``biases``: this party's additive shares at scale 2^f, one
        per weighted layer (bias ``None`` for a layer without one); ``params``:
        its shares of each Bias node's parameter and each LayerNorm's weight and
        bias, in node order (shapes as ``plan_of(spec).params``).
        """
        plan = plan_of(spec)
        ops = plan.weighted
        if not len(weights) == len(biases) == len(setup.mask_shares) == len(ops):
            raise ValueError("need one weight share, bias share and mask share per layer")
        if len(params) != len(plan.params):
            raise ValueError(f"need {len(plan.params)} Bias parameter shares, got {len(params)}")
        own = tuple(
            np.asarray(p, dtype=np.int64).reshape(shape)
            for p, shape in zip(params, plan.params, strict=True)
        )
        ws = [
            np.asarray(w, dtype=np.int64).reshape(op.weight_shape)
            for w, op in zip(weights, ops, strict=True)
        ]
        with np.errstate(over="ignore"):
            mine = np.concatenate(
                [(w - b).reshape(-1) for w, b in zip(ws, setup.mask_shares, strict=True)]
            )
        flat = CountingExchange(exchange).open(mine)
        masked, at = [], 0
        for w, op in zip(ws, ops, strict=True):
            masked.append(op.transpose(flat[at : at + w.size]))
            at += w.size
        return cls(
            spec,
            setup.party,
            tuple(op.transpose(w) for w, op in zip(ws, ops, strict=True)),
            tuple(None if b is None else np.asarray(b, dtype=np.int64) for b in biases),
            tuple(masked),
            own,
        )


@dataclass(frozen=True)
class Prepared:
    """A bundle folded with ``W^``: per weighted layer, the offset added to ``F(W_i, x^)``."""

    bundle: Bundle
    offsets: tuple[Ring, ...]


def prepare(model: PartyModel, bundle: Bundle) -> Prepared:
    """Input-independent party work: ``offset = bias_i 2^f - F(W^, r_i) - F(B, r)_i``."""
    if bundle.party != model.party:
        raise ValueError("bundle is for the other party")
    plan = plan_of(model.spec)
    if (len(bundle.masks), len(bundle.products), len(bundle.gates), len(bundle.triples)) != (
        len(plan.masks),
        len(plan.weighted),
        len(plan.gates),
        len(plan.triples),
    ) or any(k.kind != g.kind for k, g in zip(bundle.gates, plan.gates, strict=True)):
        raise ValueError("bundle is for another model")
    offsets = []
    f = model.spec.params.frac_bits
    with np.errstate(over="ignore"):
        for i, op in enumerate(plan.weighted):
            off = -bundle.products[i] - op.apply(
                bundle.masks[plan.weighted_mask[i]], model.masked_t[i]
            )
            bias = model.biases[i]
            if bias is not None:
                off += op.bias_term(bias) << np.int64(f)
            offsets.append(off)
    return Prepared(bundle, tuple(offsets))


class _Run:
    """One party's state during one forward: value shares, opened inputs, the exchange."""

    def __init__(
        self, model: PartyModel, prep: Prepared, ex: CountingExchange, prg: FixedKeyPRG
    ) -> None:
        self.model, self.prep, self.ex, self.prg = model, prep, ex, prg
        self.bundle = prep.bundle
        self.plan = plan_of(model.spec)
        self.lift = np.int64(1 << model.spec.params.frac_bits)
        self.values: dict[int, Ring] = {}
        self.opened: dict[int, Ring] = {}

    def gate(self, index: int, v: Ring) -> Ring:
        """Open ``v + r`` with gate ``index``'s mask and evaluate: shares, shaped like ``v``."""
        key = self.bundle.gates[index]
        opened = self.ex.open(v.reshape(-1) + key.mask)
        y = GATES[key.kind].eval(self.model.spec.params, key, opened, self.prg, self.ex)
        return y.reshape(v.shape)

    def step(self, s: steps.Step) -> None:
        vals, batch = self.values, self.bundle.batch
        if isinstance(s, steps.Open):
            x = vals[s.src].reshape(batch, -1) + self.bundle.masks[s.mask].reshape(batch, -1)
            self.opened[s.mask] = self.ex.open(x)
        elif isinstance(s, steps.Matmul):
            op = self.plan.weighted[s.layer]
            z = op.apply(self.opened[s.mask], self.model.weights_t[s.layer])
            vals[s.dst] = z + self.prep.offsets[s.layer]
        elif isinstance(s, steps.Gate):
            vals[s.dst] = self.gate(s.gate, vals[s.src] * self.lift if s.lift else vals[s.src])
        elif isinstance(s, steps.Sum):
            a = vals[s.a] * self.lift if s.lift_a else vals[s.a]
            b = vals[s.b] * self.lift if s.lift_b else vals[s.b]
            vals[s.dst] = a.reshape(b.shape) + b
        elif isinstance(s, steps.Reshape):
            vals[s.dst] = vals[s.src].reshape(batch, *self.plan.values[s.dst].shape)
        elif isinstance(s, steps.Permute):
            vals[s.dst] = tensor_ops.permute(vals[s.src], s.perm)
        elif isinstance(s, steps.Pick):
            vals[s.dst] = tensor_ops.select(vals[s.src], s.axis, s.index)
        elif isinstance(s, steps.Join):
            a = vals[s.a] * self.lift if s.lift_a else vals[s.a]
            b = vals[s.b] * self.lift if s.lift_b else vals[s.b]
            vals[s.dst] = tensor_ops.concat(a, b, s.axis)
        elif isinstance(s, steps.Product):
            triple = self.bundle.triples[s.triple]
            opened = self.ex.open(beaver.masked(vals[s.a], vals[s.b], triple))
            vals[s.dst] = beaver.product(self.model.party, opened, triple)
        elif isinstance(s, steps.Hadamard):
            triple = self.bundle.triples[s.triple]
            opened = self.ex.open(beaver.masked(vals[s.a], vals[s.b], triple))
            vals[s.dst] = beaver.hadamard(self.model.party, opened, triple).reshape(
                batch, *self.plan.values[s.dst].shape
            )
        elif isinstance(s, steps.Center):
            row = vals[s.sub].reshape(*vals[s.sub].shape, 1)
            vals[s.dst] = vals[s.src] - row
        elif isinstance(s, steps.RowMax):
            shape = self.plan.values[s.src].shape
            cand = vals[s.src].reshape(batch, -1, shape[-1])
            vals[s.dst] = self.tournament(cand, s.gates).reshape(batch, *shape[:-1])
        elif isinstance(s, steps.Shift):
            vals[s.dst] = vals[s.src] + np.int64(s.const if self.model.party == 0 else 0)
        elif isinstance(s, steps.Load):
            param = self.model.params[s.param]
            vals[s.dst] = np.ascontiguousarray(np.broadcast_to(param, (batch, *param.shape)))
        elif isinstance(s, steps.Multiply):
            x = vals[s.src] if s.axis is None else tensor_ops.axis_sum(vals[s.src], s.axis)
            vals[s.dst] = x * np.int64(s.factor)
        elif isinstance(s, steps.AddParam):
            param = self.model.params[s.param]
            vals[s.dst] = vals[s.src] + (param * self.lift if s.lift else param)
        elif isinstance(s, steps.Average):
            shape = self.plan.values[s.src].shape
            vals[s.dst] = window_sums(vals[s.src], shape, s.kernel, s.stride) * np.int64(s.factor)
        else:
            vals[s.dst] = self.maximum(s)

    def maximum(self, s: steps.Maximum) -> Ring:
        """Each window's maximum: per level, ``max(a, b) = b + ReLU(a - b)`` for all pairs."""
        cand = windows(self.values[s.src], self.plan.values[s.src].shape, s.kernel, s.stride)
        cand = self.tournament(cand, s.gates)
        return cand.reshape(cand.shape[0], *self.plan.values[s.dst].shape)

    def tournament(self, cand: Ring, gates: tuple[int, ...]) -> Ring:
        """(batch, positions, 1): the maximum of each (batch, position, :) row of ``cand``."""
        for g in gates:
            pairs = cand.shape[2] // 2
            a, b = cand[:, :, 0 : 2 * pairs : 2], cand[:, :, 1 : 2 * pairs : 2]
            best = b + self.gate(g, (a - b) * self.lift)
            cand = np.concatenate([best, cand[:, :, 2 * pairs :]], axis=2)
        return cand


def forward(
    model: PartyModel,
    material: Bundle | Prepared,
    x_share: Ring,
    exchange: Exchange,
    prg: FixedKeyPRG | None = None,
) -> tuple[Ring, CommStats]:
    """Online forward: this party's shares of the fixed-point outputs, and what it sent.

    ``x_share``: (batch, *input_shape) additive share of the input at scale
    2^f. ``exchange(mine) -> peer``: one round with the other party, same
    shape both ways. Both parties must call this with matching bundles.
    """
    prep = material if isinstance(material, Prepared) else prepare(model, material)
    spec = model.spec
    x_share = np.asarray(x_share, dtype=np.int64)
    if x_share.shape != (prep.bundle.batch, *spec.input_shape):
        raise ValueError(
            f"input share has shape {x_share.shape}, bundle is for {prep.bundle.batch}"
        )
    run = _Run(model, prep, CountingExchange(exchange), prg or FixedKeyPRG())
    run.values[0] = x_share
    with np.errstate(over="ignore"):
        for step in run.plan.steps:
            run.step(step)
    return run.values[run.plan.output], run.ex.stats
