"""Dealer-assisted two-party inference on masked wires: dealer preprocessing and party forward.

Model: a chain of weighted layers (:class:`Linear`, :class:`Conv2d`), each
optionally followed by :class:`ReLU`; :class:`Flatten` may appear anywhere and
only reshapes. A *stage* is one weighted layer plus its gate: ReLU with
truncation (:class:`~ppml.servers.mpc.fast.gates.ReluTrunc`) if a ReLU follows,
else truncation alone (:class:`~ppml.servers.mpc.fast.gates.Trunc`).

Protocol for one forward of a batch (parties P0, P1; dealer D):

* once per model: D derives weight masks from a model key and shares them
  (:meth:`Dealer.model_setup`); the parties open ``W^ = W - B``
  (:meth:`PartyModel.open`, one round);
* offline: D makes one :class:`Bundle` per party (:meth:`Dealer.preprocess`);
  each party folds it with ``W^`` into per-stage offsets (:func:`prepare`),
  still input-independent;
* online (:func:`forward`), given additive shares of the fixed-point input:
  open ``x^ = x + r_0`` (1 round); then per stage: local matmul giving shares
  of ``z + r_z``, open (1 round), gate to shares of the output (a ReLU gate
  opens one masked bit per element: 1 round), and unless it is the last stage
  add shares of the next mask and open (1 round). The output is additive
  shares of the fixed-point logits. Rounds: ``2 * stages`` plus one per ReLU
  layer (8 for Network A), each a single simultaneous exchange of one int64
  array.

Range: with the default :class:`~ppml.servers.mpc.fast.gates.GateParams`
(depth 47, ``L = 64``) the gates are exact (to stochastic rounding) for every
pre-activation the ring holds, ``|v| < 2^31`` at product scale ``2^32``; a
layer whose true output is larger wraps the ring in its matmul, as in any
engine on this number format.

Security: every opened value is a secret plus a fresh uniform mask known only
to D, every share a party receives is uniform (the other share is fresh), and
DCF keys hide their thresholds and payloads; so each party's view is
independent of the input and of the weights (see linear.py and gates.py for
the per-gate arguments). D receives nothing from the parties.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ppml.servers.mpc.fast.bundle import Bundle, ModelSetup, StageBundle
from ppml.servers.mpc.fast.gates import GATES, GateParams, split
from ppml.servers.mpc.fast.linear import Conv2d, Linear, WeightedOp, weight_mask
from ppml.servers.mpc.fast.prg import FixedKeyPRG, KeyedPRG, Ring

Exchange = Callable[[Ring], Ring]


@dataclass(frozen=True)
class ReLU:
    """Marks a ReLU after the previous weighted layer."""


@dataclass(frozen=True)
class Flatten:
    """Reshape to (batch, -1); no computation."""


Layer = Linear | Conv2d | ReLU | Flatten


@dataclass(frozen=True)
class Stage:
    """One weighted layer and the gate after it (``relu`` or ``trunc``)."""

    op: WeightedOp
    gate: str


@dataclass(frozen=True)
class ModelSpec:
    """Public architecture: layers, per-sample input shape, fixed-point parameters."""

    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...]
    params: GateParams = field(default_factory=GateParams)

    @cached_property
    def stages(self) -> tuple[Stage, ...]:
        """Validated stages; raises ValueError for an unsupported chain or shape mismatch."""
        stages: list[Stage] = []
        size = int(np.prod(self.input_shape))
        for layer in self.layers:
            if isinstance(layer, Flatten):
                continue
            if isinstance(layer, ReLU):
                if not stages or stages[-1].gate == "relu":
                    raise ValueError("ReLU must follow a Linear or Conv2d layer")
                stages[-1] = Stage(stages[-1].op, "relu")
                continue
            if int(np.prod(layer.in_shape)) != size:
                raise ValueError(f"{layer} expects {layer.in_shape}, gets {size} values")
            stages.append(Stage(layer, "trunc"))
            size = int(np.prod(layer.out_shape))
        if not stages:
            raise ValueError("the model has no Linear or Conv2d layer")
        return tuple(stages)


class Dealer:
    """Makes correlated randomness; sees only architectures, batch sizes and its own keys.

    All randomness comes from one secret AES-CTR stream (256-bit key from
    ``os.urandom`` unless given) and from per-model keys. Not thread-safe.
    """

    def __init__(self, rng: KeyedPRG | None = None) -> None:
        self._rng = rng or KeyedPRG()
        self._prg = FixedKeyPRG()

    def model_setup(self, spec: ModelSpec, model_key: bytes) -> tuple[ModelSetup, ModelSetup]:
        """Shares of every layer's weight mask (one-time, per model)."""
        pairs = [
            split(weight_mask(model_key, i, st.op), self._rng) for i, st in enumerate(spec.stages)
        ]
        return tuple(  # type: ignore[return-value]
            ModelSetup(b, tuple(p[b] for p in pairs)) for b in (0, 1)
        )

    def preprocess(self, spec: ModelSpec, model_key: bytes, batch: int) -> tuple[Bundle, Bundle]:
        """Bundles for one forward of ``batch`` samples (fresh masks and keys)."""
        if batch < 1:
            raise ValueError("batch must be positive")
        out: tuple[list[StageBundle], list[StageBundle]] = ([], [])
        for i, st in enumerate(spec.stages):
            r = self._rng.ring((batch, *st.op.in_shape))
            fbr = st.op.apply(r, st.op.transpose(weight_mask(model_key, i, st.op)))
            n = int(np.prod(fbr.shape))
            out_bits = 64 if i + 1 == len(spec.stages) else spec.params.low_bits
            keys = GATES[st.gate].gen(spec.params, n, self._rng, self._prg, out_bits)
            for b, (rb, fb) in enumerate(
                zip(split(r, self._rng), split(fbr, self._rng), strict=True)
            ):
                out[b].append(StageBundle(rb, fb, keys[b]))
        return Bundle(0, batch, tuple(out[0])), Bundle(1, batch, tuple(out[1]))

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
    """What a party keeps per model: its weight/bias shares and the opened ``W^`` (transposed)."""

    spec: ModelSpec
    party: int
    weights_t: tuple[Ring, ...]
    biases: tuple[Ring | None, ...]
    masked_t: tuple[Ring, ...]

    @classmethod
    def open(
        cls,
        spec: ModelSpec,
        setup: ModelSetup,
        weights: Sequence[Ring],
        biases: Sequence[Ring | None],
        exchange: Exchange,
    ) -> PartyModel:
        """One-time: open ``W^ = W - B`` for every layer in one round (all layers concatenated).

        ``weights``/``biases``: this party's additive shares at scale 2^f, one
        per weighted layer (bias ``None`` for a layer without one).
        """
        stages = spec.stages
        if not len(weights) == len(biases) == len(setup.mask_shares) == len(stages):
            raise ValueError("need one weight share, bias share and mask share per layer")
        ws = [
            np.asarray(w, dtype=np.int64).reshape(st.op.weight_shape)
            for w, st in zip(weights, stages, strict=True)
        ]
        with np.errstate(over="ignore"):
            mine = np.concatenate(
                [(w - b).reshape(-1) for w, b in zip(ws, setup.mask_shares, strict=True)]
            )
        flat = CountingExchange(exchange).open(mine)
        masked, at = [], 0
        for w, st in zip(ws, stages, strict=True):
            masked.append(st.op.transpose(flat[at : at + w.size]))
            at += w.size
        return cls(
            spec,
            setup.party,
            tuple(st.op.transpose(w) for w, st in zip(ws, stages, strict=True)),
            tuple(None if b is None else np.asarray(b, dtype=np.int64) for b in biases),
            tuple(masked),
        )


@dataclass(frozen=True)
class Prepared:
    """A bundle folded with ``W^``: per stage, the offset added to ``F(W_i, x^)``."""

    bundle: Bundle
    offsets: tuple[Ring, ...]


def prepare(model: PartyModel, bundle: Bundle) -> Prepared:
    """Input-independent party work: ``offset = bias_i 2^f - F(W^, r_i) - F(B, r)_i + r_z,i``."""
    if bundle.party != model.party:
        raise ValueError("bundle is for the other party")
    offsets = []
    f = model.spec.params.frac_bits
    with np.errstate(over="ignore"):
        for st, sb, masked, bias in zip(
            model.spec.stages, bundle.stages, model.masked_t, model.biases, strict=True
        ):
            off = sb.gate.mask.reshape(bundle.batch, *st.op.out_shape) - sb.weight_mask_product
            off -= st.op.apply(sb.in_mask, masked)
            if bias is not None:
                off += st.op.bias_term(bias) << np.int64(f)
            offsets.append(off)
    return Prepared(bundle, tuple(offsets))


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
    bundle, spec = prep.bundle, model.spec
    x_share = np.asarray(x_share, dtype=np.int64)
    if x_share.shape != (bundle.batch, *spec.input_shape):
        raise ValueError(f"input share has shape {x_share.shape}, bundle is for {bundle.batch}")
    ex = CountingExchange(exchange)
    prg = prg or FixedKeyPRG()
    stages = spec.stages
    with np.errstate(over="ignore"):
        mine = x_share.reshape(bundle.batch, -1) + bundle.stages[0].in_mask.reshape(
            bundle.batch, -1
        )
        x_hat = ex.open(mine)
        for i, (st, sb) in enumerate(zip(stages, bundle.stages, strict=True)):
            z_masked = st.op.apply(x_hat, model.weights_t[i]) + prep.offsets[i]
            opened = ex.open(z_masked)
            y = GATES[st.gate].eval(spec.params, sb.gate, opened, prg, ex)
            y = y.reshape(z_masked.shape)
            if i + 1 == len(stages):
                return y, ex.stats
            nxt = bundle.stages[i + 1].in_mask
            x_hat = ex.open(y.reshape(nxt.shape) + nxt)
    raise AssertionError("unreachable")
