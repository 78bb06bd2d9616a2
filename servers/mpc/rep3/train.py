"""Training on replicated shares: minibatch SGD with softmax cross-entropy, no dealer.

Model: the fast engine's :class:`~ppml.servers.mpc.fast.engine.ModelSpec` with
Linear layers only (each optionally followed by ReLU, Flatten anywhere; the
last layer gives the logits, no ReLU after it), held as the inference
engine's :class:`~ppml.servers.mpc.rep3.engine.SharedModel` (weights in the
``(in, out)`` layout, from :func:`~ppml.servers.mpc.rep3.engine.share_model`).

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
  (8) with its truncation riding along, the kept bit ``[z >= 0]`` made
  arithmetic (2) and multiplied in (1): 12 rounds; the stage's input ``h``
  and the arithmetic bit are kept for backward. The last layer: truncate (2)
  and reshare (1).
* output gradient: ``g = softmax(z) - y`` (:func:`~.nonlinear.softmax`, 98
  rounds for 10 classes; its error bound per probability is the gradient's
  error here; ``1/B`` is folded into the learning rate).
* backward, from the last layer down: ``dW = h^T g`` (local, additive at
  ``2^32``) and ``db = sum_rows g`` (local); the gradient to the layer below
  ``g W^T`` (transposing replicated weights is local), truncated (2),
  reshared (1) and multiplied by the kept ReLU bit (1): 4 rounds, with the
  old weights (all gradients before any update).
* update, beside the next layer's backward (:func:`~.rounds.gather`): the
  public step ``c = round(lr / B * 2^20)`` multiplies ``dW`` and ``db``
  locally, one truncation by ``16 + 20`` (resp. ``20``) bits brings them to
  scale ``2^16`` (2 rounds) and a reshare (1) makes them replicated:
  ``W <- W - c dW / 2^36``. The learning rate is thus ``lr`` to a relative
  ``2^-21 B / lr``, and a step must stay below ``2^10`` per weight (the
  truncation's range at scale ``2^52``).

Rounds per step for 784-128-128-10 (10 classes): forward 27, softmax 98,
backward and updates 11: 136. Nothing is opened; every message is a
reshared product, a truncation's masked opening or a select's masked input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ppml.servers.mpc.fast.engine import ModelSpec
from ppml.servers.mpc.fast.linear import Linear, ring_matmul
from ppml.servers.mpc.fast.prg import Ring
from ppml.servers.mpc.rep3 import trunc
from ppml.servers.mpc.rep3.compare import negative
from ppml.servers.mpc.rep3.engine import FRAC_BITS, SharedModel
from ppml.servers.mpc.rep3.keys import Correlated
from ppml.servers.mpc.rep3.nonlinear import softmax, truncate
from ppml.servers.mpc.rep3.rounds import Steps, gather
from ppml.servers.mpc.rep3.rss import (
    Shared,
    matmul_local,
    mul,
    reshare,
    to_additive,
    xor_public,
)
from ppml.servers.mpc.rep3.select import bit_to_arith
from ppml.training.batches import Batches

LR_BITS = 20


@dataclass(frozen=True)
class Trace:
    """What backward needs from a forward: each stage's input and ReLU bit (or None)."""

    inputs: tuple[Shared, ...]
    kept: tuple[Shared | None, ...]


def check_spec(spec: ModelSpec) -> None:
    """Raise ValueError unless the chain is trainable here (Linear layers, logits last)."""
    if not all(isinstance(stage.op, Linear) for stage in spec.stages):
        raise ValueError("training on replicated shares takes Linear layers only")
    if spec.stages[-1].gate != "trunc":
        raise ValueError("the last layer gives the logits: no ReLU after it")


def step_factor(lr: float, batch: int) -> int:
    """The public integer ``round(lr / batch * 2^LR_BITS)`` that scales a summed gradient."""
    c = round(lr / batch * (1 << LR_BITS))
    if not 0 < c < 1 << 40:
        raise ValueError(f"learning rate {lr} at batch {batch} is outside the fixed-point range")
    return c


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
        z = matmul_local(stage.op.apply, h, model.weights[i])
        bias = model.biases[i]
        if bias is not None:  # each party adds its own component: the three sum to the bias
            z = z + stage.op.bias_term(bias.a) * np.int64(1 << FRAC_BITS)
        if stage.gate == "relu":
            zs = yield from reshare(corr, z)
            below, y = yield from gather(negative(corr, zs), truncate(corr, zs))
            bit = yield from bit_to_arith(corr, xor_public(corr.rank, below, 1))
            h = yield from mul(corr, bit, y)
            kept.append(bit)
        else:
            y_add = yield from trunc.from_additive(corr, z, FRAC_BITS)
            h = yield from reshare(corr, y_add)
            kept.append(None)
    return h, Trace(tuple(inputs), tuple(kept))


def sgd_step(
    corr: Correlated, spec: ModelSpec, model: SharedModel, x: Shared, y: Shared, lr: float
) -> Steps[SharedModel]:
    """One SGD step on the replicated batch ``x`` with one-hot ``y``; the updated model."""
    c = step_factor(lr, x.shape[0])
    logits, trace = yield from forward(corr, spec, model, x)
    p = yield from softmax(corr, logits)
    g = p - y
    weights: list[Shared] = list(model.weights)
    biases: list[Shared | None] = list(model.biases)
    for i in reversed(range(len(spec.stages))):
        update = _update(corr, model.weights[i], model.biases[i], trace.inputs[i], g, c)
        if i == 0:
            weights[i], biases[i] = yield from update
        else:
            below = _backward(corr, model.weights[i], g, trace.kept[i - 1])
            (weights[i], biases[i]), g = yield from gather(update, below)
    return SharedModel(tuple(weights), tuple(biases))


def train(
    corr: Correlated,
    spec: ModelSpec,
    model: SharedModel,
    x: Ring,
    y: Ring,
    *,
    lr: float,
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
    for step in range(epochs * plan.batches_per_epoch):
        rows = plan.indices(step)
        batch_x, batch_y = Shared(xs.a[rows], xs.b[rows]), Shared(ys.a[rows], ys.b[rows])
        model = yield from sgd_step(corr, spec, model, batch_x, batch_y, lr)
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
    corr: Correlated, w: Shared, b: Shared | None, h: Shared, g: Shared, c: int
) -> Steps[tuple[Shared, Shared | None]]:
    """``W - c h^T g / 2^36`` and ``b - c sum(g) / 2^20``: 3 rounds."""
    dw = matmul_local(ring_matmul, h.map(lambda a: np.ascontiguousarray(a.T)), g)
    parts = [_additive_to_shared(corr, dw * np.int64(c), FRAC_BITS + LR_BITS)]
    if b is not None:
        db = g.map(lambda a: a.sum(axis=0)).scale(c)
        parts.append(truncate(corr, db, LR_BITS))
    steps = yield from gather(*parts)
    return w - steps[0], (b - steps[1] if b is not None else None)


def _backward(corr: Correlated, w: Shared, g: Shared, kept: Shared | None) -> Steps[Shared]:
    """The gradient to the layer below, ``(g W^T) * [z >= 0]``: 3 rounds, 4 after a ReLU."""
    gh = matmul_local(ring_matmul, g, w.map(lambda a: np.ascontiguousarray(a.T)))
    below = yield from _additive_to_shared(corr, gh, FRAC_BITS)
    if kept is None:
        return below
    return (yield from mul(corr, kept, below))
