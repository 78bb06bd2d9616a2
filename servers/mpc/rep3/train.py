"""Training on replicated shares: minibatch SGD with softmax cross-entropy, no dealer.

Model: the fast engine's :class:`~ppml.servers.mpc.fast.engine.ModelSpec`, a
chain of Linear and Conv2d layers, each optionally followed by ReLU, Flatten
anywhere; the last layer, a Linear without ReLU, gives the logits. It is held
as the inference engine's :class:`~ppml.servers.mpc.rep3.engine.SharedModel`
(weights in the ``(in, out)`` layout, from
:func:`~ppml.servers.mpc.rep3.engine.share_model`).

Inputs, all in the SDK's wire form (each server one additive share, 16
fractional bits): the initial weights and biases, the features
``(rows, *input_shape)`` and the one-hot labels ``(rows, classes)`` (several
owners' rows concatenated share by share). The batch order is public
(:class:`~ppml.training.batches.BatchPlan`, from the job's seed), so picking
a batch's rows is local. Output: the trained model, replicated;
:func:`export` hands each server's additive share back in the SDK's layout.

One step on a batch of ``B`` rows (:func:`sgd_step`):

* forward, per layer ``i``: ``z = h W + b`` as three additive shares at scale
  ``2^32`` (local); with ReLU: reshare (1 round), the sign circuit of ``z``
  (8) with its truncation riding along, then side by side the kept bit
  ``[z >= 0]`` made arithmetic and the select of the truncated value (2):
  11 rounds; the stage's input ``h``
  and the arithmetic bit are kept for backward (the derivative is taken as 1
  at ``z = 0``; PyTorch takes 0 there). The last layer: truncate (2) and
  reshare (1).
* output gradient: ``g = softmax(z) - y`` (:func:`~.nonlinear.softmax`, 94
  rounds for 10 classes; its error bound per probability is the gradient's
  error here; ``1/B`` is folded into the learning rate).
* backward, from the last layer down: ``dW = P^T G`` (local, additive at
  ``2^32``; ``P`` the input's patches, ``G`` the output gradient as one row per
  output position, :mod:`.patches`: for Linear the rows themselves, for
  Conv2d im2col's) and ``db`` the column sums of ``G`` (local); the gradient
  to the layer below ``G W^T`` (transposing replicated weights is local; for
  Conv2d then col2im, local too), truncated (2),
  reshared (1) and multiplied by the kept ReLU bit (1): 4 rounds, with the
  old weights (all gradients before any update).
* update, beside the next layer's backward (:func:`~.rounds.gather`), as
  PyTorch's SGD with momentum ``mu`` and weight decay ``wd`` (:class:`Sgd`),
  kept as the step ``u = lr * buffer``: ``u <- mu u + lr/B dW + lr wd W`` and
  ``W <- W - u``. The three terms are summed locally at scale ``2^52``
  (``dW`` at ``2^32`` times the public ``round(lr / B * 2^20)``, ``u`` and
  ``W`` at ``2^16`` times ``round(mu 2^36)`` and ``round(lr wd 2^36)``), one
  truncation by 36 bits brings ``u`` to ``2^16`` (2 rounds) and a reshare
  (1) makes it replicated; biases likewise at ``2^36``, truncated by 20. No
  round is added by momentum or weight decay. The learning rate is thus
  ``lr`` to a relative ``2^-21 B / lr``, and ``|u|`` must stay below
  ``2^10`` per parameter (the truncation's range at scale ``2^52``).

Rounds per step for 784-128-128-10 (10 classes): forward 25, softmax 94,
backward and updates 11: 130. :func:`sgd_step_with_loss` also hands out a
share of the batch's mean loss (:mod:`.metrics`) computed beside the
backward pass: 86 rounds where the backward took 11, 205 in all. Nothing is
opened; every message is a reshared product, a truncation's masked opening
or a select's masked input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ppml.servers.mpc.fast.engine import ModelSpec
from ppml.servers.mpc.fast.linear import Linear, WeightedOp
from ppml.servers.mpc.fast.prg import Ring
from ppml.servers.mpc.rep3 import trunc
from ppml.servers.mpc.rep3.compare import negative
from ppml.servers.mpc.rep3.engine import FRAC_BITS, SharedModel
from ppml.servers.mpc.rep3.keys import Correlated
from ppml.servers.mpc.rep3.metrics import mean_cross_entropy
from ppml.servers.mpc.rep3.nonlinear import softmax, softmax_parts, truncate
from ppml.servers.mpc.rep3.patches import out_rows, patches, patches_adjoint
from ppml.servers.mpc.rep3.ringmm import ring_matmul
from ppml.servers.mpc.rep3.rounds import Steps, gather
from ppml.servers.mpc.rep3.rss import Shared, mul, reshare, to_additive, xor_public
from ppml.servers.mpc.rep3.select import bit_to_arith, select
from ppml.training.batches import Batches

LR_BITS = 20


@dataclass(frozen=True)
class Trace:
    """What backward needs from a forward: each stage's input and ReLU bit (or None)."""

    inputs: tuple[Shared, ...]
    kept: tuple[Shared | None, ...]


def check_spec(spec: ModelSpec) -> None:
    """Raise ValueError unless the chain is trainable here (logits from a Linear layer last)."""
    if not isinstance(spec.stages[-1].op, Linear):
        raise ValueError("the last layer gives the logits: it must be Linear")
    if spec.stages[-1].gate != "trunc":
        raise ValueError("the last layer gives the logits: no ReLU after it")


@dataclass(frozen=True)
class Sgd:
    """Public hyperparameters, as PyTorch's SGD (no dampening, no Nesterov)."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.lr < 1 << 10:
            raise ValueError(f"the learning rate must lie in (0, 1024), got {self.lr}")
        if not 0 <= self.momentum < 1 or not 0 <= self.weight_decay < 1:
            raise ValueError("momentum and weight decay must lie in [0, 1)")

    def factors(self, batch: int, bits: int) -> tuple[int, int, int]:
        """The public integers ``(lr / batch, momentum, lr * weight_decay)`` in fixed point.

        The first has ``LR_BITS`` fractional bits (it multiplies a gradient
        summed over the batch), the other two ``bits``.
        """
        c = round(self.lr / batch * (1 << LR_BITS))
        if c < 1:
            raise ValueError(f"learning rate {self.lr} at batch {batch} rounds to 0")
        one = 1 << bits
        return c, round(self.momentum * one), round(self.lr * self.weight_decay * one)


def share_data(corr: Correlated, x: Ring, y: Ring) -> Steps[tuple[Shared, Shared]]:
    """This server's additive shares of features and one-hot labels, made replicated: 1 round."""
    if x.shape[0] != y.shape[0] or y.ndim != 2:
        raise ValueError("features (rows, ...) and one-hot labels (rows, classes) must match")
    xs, ys = yield from gather(
        reshare(corr, np.ascontiguousarray(x, dtype=np.int64)),
        reshare(corr, np.ascontiguousarray(y, dtype=np.int64)),
    )
    return xs, ys


def forward(
    corr: Correlated, spec: ModelSpec, model: SharedModel, x: Shared
) -> Steps[tuple[Shared, Trace]]:
    """Replicated logits of replicated rows ``x``, and the trace backward needs."""
    h = x.map(lambda a: a.reshape(a.shape[0], -1))
    inputs: list[Shared] = []
    kept: list[Shared | None] = []
    for i, stage in enumerate(spec.stages):
        inputs.append(h)
        z = model.local_product(i, stage.op, h)
        bias = model.biases[i]
        if bias is not None:  # each party adds its own component: the three sum to the bias
            z = z + stage.op.bias_term(bias.a) * np.int64(1 << FRAC_BITS)
        if stage.gate == "relu":
            zs = yield from reshare(corr, z)
            below, y = yield from gather(negative(corr, zs), truncate(corr, zs))
            keep = xor_public(corr.rank, below, 1)
            # the kept bit for backward and the ReLU's output, side by side: 2 rounds
            bit, h = yield from gather(bit_to_arith(corr, keep), select(corr, keep, y))
            kept.append(bit)
        else:
            y_add = yield from trunc.from_additive(corr, z, FRAC_BITS)
            h = yield from reshare(corr, y_add)
            kept.append(None)
    return h, Trace(tuple(inputs), tuple(kept))


def sgd_step(
    corr: Correlated,
    spec: ModelSpec,
    model: SharedModel,
    x: Shared,
    y: Shared,
    sgd: Sgd,
    last: SharedModel | None = None,
) -> Steps[tuple[SharedModel, SharedModel | None]]:
    """One step on the replicated batch ``x`` with one-hot ``y``: the model and this step.

    ``last`` is the previous step (``lr`` times the momentum buffer, one per
    parameter), needed only with momentum; None before the first.
    """
    logits, trace = yield from forward(corr, spec, model, x)
    p = yield from softmax(corr, logits)
    return (yield from _descend(corr, spec, model, trace, p - y, sgd, last))


def sgd_step_with_loss(
    corr: Correlated,
    spec: ModelSpec,
    model: SharedModel,
    x: Shared,
    y: Shared,
    sgd: Sgd,
    last: SharedModel | None = None,
) -> Steps[tuple[SharedModel, SharedModel | None, Ring]]:
    """:func:`sgd_step`, and this server's share of the batch's mean loss before the step.

    The loss (:func:`~.metrics.mean_cross_entropy`, from the softmax's own
    maximum and sum, 86 rounds) runs beside the backward pass.
    """
    logits, trace = yield from forward(corr, spec, model, x)
    p, top, total = yield from softmax_parts(corr, logits)
    (trained, taken), loss = yield from gather(
        _descend(corr, spec, model, trace, p - y, sgd, last),
        mean_cross_entropy(corr, logits, y, top, total),
    )
    return trained, taken, loss


def _descend(
    corr: Correlated,
    spec: ModelSpec,
    model: SharedModel,
    trace: Trace,
    g: Shared,
    sgd: Sgd,
    last: SharedModel | None,
) -> Steps[tuple[SharedModel, SharedModel | None]]:
    """Backward from the logits' gradient ``g``, each layer's update beside the next's backward."""
    batch = g.shape[0]
    n = len(spec.stages)
    weights, biases = list(model.weights), list(model.biases)
    steps_w: list[Shared] = list(model.weights)  # placeholders until each layer's update
    steps_b: list[Shared | None] = [None] * n
    for i in reversed(range(n)):
        before = (None, None) if last is None else (last.weights[i], last.biases[i])
        op = spec.stages[i].op
        update = _update(corr, op, (weights[i], biases[i]), before, trace.inputs[i], g, sgd, batch)
        if i == 0:
            done = yield from update
        else:
            below = _backward(corr, op, model.weights[i], g, trace.kept[i - 1])
            done, g = yield from gather(update, below)
        weights[i], biases[i], steps_w[i], steps_b[i] = done
    trained = SharedModel(tuple(weights), tuple(biases))
    return trained, (SharedModel(tuple(steps_w), tuple(steps_b)) if sgd.momentum else None)


def train(
    corr: Correlated,
    spec: ModelSpec,
    model: SharedModel,
    x: Ring,
    y: Ring,
    *,
    sgd: Sgd,
    plan: Batches,
    epochs: int,
) -> Steps[SharedModel]:
    """``epochs`` epochs of SGD over additive shares ``x``, ``y`` in the public order ``plan``."""
    check_spec(spec)
    if tuple(x.shape[1:]) != tuple(spec.input_shape):
        raise ValueError(
            f"features have shape {x.shape}, the model takes (rows, *{spec.input_shape})"
        )
    if y.shape[1:] != spec.stages[-1].op.out_shape:
        raise ValueError(
            f"labels have shape {y.shape}, the model gives {spec.stages[-1].op.out_shape}"
        )
    xs, ys = yield from share_data(corr, x, y)
    last: SharedModel | None = None
    for step in range(epochs * plan.batches_per_epoch):
        rows = plan.indices(step)
        batch_x, batch_y = Shared(xs.a[rows], xs.b[rows]), Shared(ys.a[rows], ys.b[rows])
        model, last = yield from sgd_step(corr, spec, model, batch_x, batch_y, sgd, last)
    return model


def export(
    corr: Correlated, spec: ModelSpec, model: SharedModel
) -> tuple[list[Ring], list[Ring | None]]:
    """This server's additive shares of every weight ``(out, in)`` and bias, freshly masked."""
    weights = [
        np.ascontiguousarray(to_additive(corr, w).T.reshape(stage.op.weight_shape))
        for stage, w in zip(spec.stages, model.weights, strict=True)
    ]
    biases = [None if b is None else to_additive(corr, b) for b in model.biases]
    return weights, biases


def _additive_to_shared(corr: Correlated, z: Ring, m: int) -> Steps[Shared]:
    y = yield from trunc.from_additive(corr, z, m)
    return (yield from reshare(corr, y))


def _update(
    corr: Correlated,
    op: WeightedOp,
    param: tuple[Shared, Shared | None],
    last: tuple[Shared | None, Shared | None],
    h: Shared,
    g: Shared,
    sgd: Sgd,
    batch: int,
) -> Steps[tuple[Shared, Shared | None, Shared, Shared | None]]:
    """New weight and bias, and the steps taken: ``u = mu u' + lr/B dW + lr wd W``; 3 rounds.

    The weight's terms are summed at scale ``2^52`` (``dW`` at ``2^32`` times
    ``lr/B`` at ``2^20``; ``u'`` and ``W`` at ``2^16`` times factors at ``2^36``)
    and truncated once by 36 bits; the bias's at ``2^36``, truncated by 20.
    """
    w, b = param
    c, mu, decay = sgd.factors(batch, FRAC_BITS + LR_BITS)
    rows = g.map(lambda a: out_rows(op, a))  # one row per output position
    dw = _product(h.map(lambda a: patches(op, a).T), rows)
    z: Ring = dw * np.int64(c)
    for term, factor in ((last[0], mu), (w, decay)):
        if term is not None and factor:
            mine: Ring = term.a * np.int64(factor)  # component ``rank``: the three sum to it
            z = z + mine
    parts = [_additive_to_shared(corr, z, FRAC_BITS + LR_BITS)]
    if b is not None:
        _, mu_b, decay_b = sgd.factors(batch, LR_BITS)
        db = rows.map(lambda a: a.sum(axis=0)).scale(c)
        for term_b, factor in ((last[1], mu_b), (b, decay_b)):
            if term_b is not None and factor:
                db = db + term_b.scale(factor)
        parts.append(truncate(corr, db, LR_BITS))
    steps = yield from gather(*parts)
    step_b = steps[1] if b is not None else None
    return (
        w - steps[0],
        (b - step_b if b is not None and step_b is not None else None),
        steps[0],
        step_b,
    )


def _backward(
    corr: Correlated, op: WeightedOp, w: Shared, g: Shared, kept: Shared | None
) -> Steps[Shared]:
    """The gradient to the layer below, ``(g W^T) * [z >= 0]``: 3 rounds, 4 after a ReLU."""
    cols = _product(g.map(lambda a: out_rows(op, a)), w.map(np.transpose))
    gh = patches_adjoint(op, cols, g.shape[0])  # linear: on additive shares as they are
    below = yield from _additive_to_shared(corr, gh, FRAC_BITS)
    if kept is None:
        return below
    shape = kept.shape  # the layer below's output (a Flatten may lie between)
    return (yield from mul(corr, kept, below.map(lambda a: a.reshape(shape))))


def _product(x: Shared, w: Shared) -> Ring:
    """Additive share of ``x @ w`` (2-D): ``x_a (w_a + w_b) + x_b w_a`` as one ring product."""
    return ring_matmul(np.concatenate([x.a, x.b], axis=1), np.concatenate([w.a + w.b, w.a]))
