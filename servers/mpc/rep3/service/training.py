"""A server's side of a training job on the replicated engine, step by step.

The same contract as the CrypTen path's
:class:`~ppml.servers.mpc.training.trainer.TrainingRun` (the ``train`` kind
drives either): one mini-batch per ``step``, the job's secret state in this
object between steps, the trained model's additive shares at the end. The
first step makes the job's data and initial model replicated (one round);
the batch order is public (:class:`~ppml.training.batches.BatchPlan`, from
the job's seed). The protocol is :mod:`ppml.servers.mpc.rep3.train`.

What the engine trains (checked when the job is submitted,
:func:`unsupported_training`): chains of Linear and Conv2d layers, each
optionally followed by ReLU, ending in a Linear layer, with softmax
cross-entropy and SGD (momentum and weight decay allowed). With
``reveal_metrics`` each epoch hands the owner shares of its mean training
loss (:func:`~ppml.servers.mpc.rep3.metrics.mean_cross_entropy`, computed
beside each step's backward pass) and of the validation set's correct
count (:func:`~ppml.servers.mpc.rep3.metrics.correct_count`), as the
CrypTen path does; nothing is opened on the servers. DP-SGD, standardising
and other losses or optimisers need a cluster with a dealer for now; such a
job is refused with that reason.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ppml.proto.domain.architecture import Architecture, AvgPool2d, MaxPool2d
from ppml.proto.domain.jobs import EpochMetrics, TrainingSpec
from ppml.proto.shares import Ring
from ppml.servers.mpc.fast.service import spec as fast_spec
from ppml.servers.mpc.rep3 import metrics, train, trunc
from ppml.servers.mpc.rep3.engine import SharedModel, share_model
from ppml.servers.mpc.rep3.keys import Correlated
from ppml.servers.mpc.rep3.rounds import Steps, run
from ppml.servers.mpc.rep3.rss import Shared
from ppml.servers.mpc.rep3.service.party import CommNet, ReplicatedInference
from ppml.servers.mpc.rep3.service.spec import unsupported
from ppml.servers.store.jobs import RunInputs, StepOutcome
from ppml.training.batches import BatchPlan

ENGINE = "this cluster's engine (engine = 'replicated')"
_MEAN_BITS = 20


def unsupported_training(architecture: Architecture, spec: TrainingSpec) -> str | None:
    """Why the replicated engine cannot run this training job (None: it can)."""
    why = unsupported(architecture)
    if why is not None:
        return why
    if any(isinstance(layer, MaxPool2d | AvgPool2d) for layer in architecture.layers):
        return f"pooling layers do not train on {ENGINE} yet (they serve)"
    model = fast_spec.fast_model(architecture)
    if model is None:
        return f"this model does not train on {ENGINE}"
    try:
        train.check_spec(model.spec)
        train.Sgd(spec.lr, spec.momentum, spec.weight_decay)
    except ValueError as exc:
        return f"{exc} on {ENGINE}"
    options = [
        (spec.loss != "cross_entropy", f"loss {spec.loss!r} (it trains with cross_entropy)"),
        (spec.optimizer != "sgd", f"optimizer {spec.optimizer!r} (it trains with sgd)"),
        (spec.dp, "DP-SGD"),
        (spec.standardize, "standardize"),
    ]
    for refused, what in options:
        if refused:
            return f"{what} does not run on {ENGINE} yet; use a cluster with a dealer for it"
    return None


class ReplicatedTrainingRun:
    """A job's secret state on this server: replicated model, data, last step (momentum)."""

    def __init__(self, inputs: RunInputs, engine: ReplicatedInference) -> None:
        model = fast_spec.fast_model(inputs.architecture)
        if model is None:  # refused at submission
            raise RuntimeError("the job's model does not run on the replicated engine")
        self._fm = model
        self._inputs = inputs
        self._engine = engine
        self.spec = inputs.spec
        self._sgd = train.Sgd(self.spec.lr, self.spec.momentum, self.spec.weight_decay)
        self._rows = sum(int(f.shape[0]) for f in inputs.features)
        self._plan = BatchPlan(self._rows, self.spec.batch_size, self.spec.seed)
        self.steps_total = self.spec.epochs * self._plan.batches_per_epoch
        self._data: tuple[Shared, Shared] | None = None
        self._model: SharedModel | None = None
        self._last: SharedModel | None = None
        self._epoch_started = time.perf_counter()
        self._epoch_samples = 0
        self._loss_sum: Ring | None = None  # additive share of the epoch's summed batch losses
        self._validation: tuple[Shared, Shared] | None = None

    def _start(self, net: CommNet) -> tuple[tuple[Shared, Shared], SharedModel]:
        corr = self._engine.correlated(net)
        spec, index = self._fm.spec, self._fm.layer_index
        initial = self._inputs.initial
        weights = [initial[f"{i}.weight"] for i in index]
        biases = [initial.get(f"{i}.bias") for i in index]
        features = np.concatenate(self._inputs.features, axis=0)
        labels = np.concatenate(self._inputs.labels, axis=0)
        model = run(net, share_model(corr, spec, weights, biases))
        shape = (self._rows, *self._inputs.architecture.input_shape)
        data = run(net, train.share_data(corr, features.reshape(shape), labels))
        if self.spec.reveal_metrics and self._inputs.validation is not None:
            xv, yv = self._inputs.validation
            shape = (int(xv.shape[0]), *self._inputs.architecture.input_shape)
            self._validation = run(net, train.share_data(corr, xv.reshape(shape), yv))
        return data, model

    def step(self, step: int) -> StepOutcome:
        net = CommNet()
        if self._data is None or self._model is None:
            self._data, self._model = self._start(net)
        corr = self._engine.correlated(net)
        epoch, batch = self._plan.locate(step)
        if batch == 0:
            self._epoch_started, self._epoch_samples = time.perf_counter(), 0
            self._loss_sum = None
        rows = self._plan.indices(step)
        xs, ys = self._data
        x, y = Shared(xs.a[rows], xs.b[rows]), Shared(ys.a[rows], ys.b[rows])
        spec = self._fm.spec
        if self.spec.reveal_metrics:
            self._model, self._last, loss = run(
                net, train.sgd_step_with_loss(corr, spec, self._model, x, y, self._sgd, self._last)
            )
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        else:
            self._model, self._last = run(
                net, train.sgd_step(corr, spec, self._model, x, y, self._sgd, self._last)
            )
        self._epoch_samples += len(rows)
        rate = self._epoch_samples / max(1e-9, time.perf_counter() - self._epoch_started)
        last_of_epoch = batch == self._plan.batches_per_epoch - 1
        found = None
        if self.spec.reveal_metrics and last_of_epoch:
            found = self._epoch_metrics(net, corr, epoch + 1, batch + 1)
        return StepOutcome(
            epoch + 1, batch + 1, len(rows), rate, found, step + 1 >= self.steps_total
        )

    def _epoch_metrics(
        self, net: CommNet, corr: Correlated, epoch: int, batches: int
    ) -> EpochMetrics:
        """Shares of the epoch's mean loss and the validation correct count (nothing opened)."""
        assert self._loss_sum is not None and self._model is not None
        mean_loss = run(net, _mean(corr, self._loss_sum, batches))
        correct, rows = np.zeros((), dtype=np.int64), 0
        if self._validation is not None:
            xv, yv = self._validation
            logits, _ = run(net, train.forward(corr, self._fm.spec, self._model, xv))
            correct = run(net, metrics.correct_count(corr, logits, yv))
            rows = int(xv.shape[0])
        return EpochMetrics(epoch, mean_loss, correct, rows)

    def trained(self) -> tuple[Architecture, dict[str, Ring]]:
        """The model to register: architecture and this server's additive parameter shares."""
        if self._model is None:
            raise RuntimeError("the job has taken no step")
        corr = self._engine.correlated(CommNet())
        weights, biases = train.export(corr, self._fm.spec, self._model)
        out: dict[str, Any] = {}
        for i, w, b in zip(self._fm.layer_index, weights, biases, strict=True):
            out[f"{i}.weight"] = w
            if b is not None:
                out[f"{i}.bias"] = b
        return self._inputs.architecture, out


def _mean(corr: Correlated, total: Ring, count: int) -> Steps[Ring]:
    """An additive share of ``total / count`` (public count): one product, one truncation."""
    factor = np.int64(round((1 << _MEAN_BITS) / count))
    scaled = np.asarray(total, dtype=np.int64).reshape(1) * factor
    mean = yield from trunc.from_additive(corr, scaled, _MEAN_BITS)
    out: Ring = (mean + corr.zero(mean.shape)).reshape(())
    return out
