"""One party's side of a secret-shared training job, step by step.

Runs on a compute server's MPC worker thread, in lockstep with the other
parties (the leader sends every party the same ``TrainStep``). Everything
stays secret-shared: the data sets (concatenated locally, share by share),
the weights, the gradients, the optimiser's velocity. The batch order is
public (:mod:`ppml.training.batches`), except with DP-SGD. Only if the owner asked for metrics
does a run produce, at each epoch's end, this party's *shares* of the mean
training loss and of the validation correct count; nothing is opened here.

With ``standardize`` the features are centred and scaled by a mean and an
inverse standard deviation computed in MPC over every training row; the
trained model then starts with a secret :class:`Affine` layer holding that
scaling, so prediction clients send raw features.

With DP-SGD on (``spec.dp``), each step's gradients come from
:class:`~ppml.servers.mpc.training.dpsgd.DpSgdStep` (per-example clipping, every
party's own noise) instead of CrypTen's autograd; the update is the same SGD,
and the batches are fixed-size samples drawn without replacement from a key
the parties agree on in secret (:class:`~ppml.training.batches.SecretBatches`,
:func:`~ppml.servers.mpc.randomness.prng.joint_secret_key`): the sampling the privacy
accountant assumes. The key lives in this object only.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ppml.proto.domain import architecture as arch
from ppml.proto.domain.jobs import EpochMetrics
from ppml.proto.shares import Ring
from ppml.servers.mpc.core import ttp_plan
from ppml.servers.mpc.core.crypten_compat import crypten
from ppml.servers.mpc.core.model import build_shared_model, parameter_shares
from ppml.servers.mpc.randomness.prng import joint_secret_key
from ppml.servers.mpc.training.dpsgd import DpSgdStep
from ppml.servers.mpc.training.standardize import standardize
from ppml.servers.store.jobs import RunInputs, StepOutcome
from ppml.training import losses
from ppml.training.batches import Batches, BatchPlan, SecretBatches
from ppml.training.losses import accuracy_kind


def _shared(parts: list[Ring], shape: tuple[int, ...]) -> Any:
    from crypten.mpc import MPCTensor

    stacked = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    return MPCTensor.from_shares(torch.from_numpy(stacked.reshape(-1, *shape).copy()))


def count_correct(output: Any, labels: Any, kind: str) -> Any:
    """Share of how many rows the model gets right (an MPCTensor of shape [])."""
    if kind == "sign":
        predicted = output.gt(0)
        truth = labels[:, 1:2]
        return (predicted * truth + (1 - predicted) * (1 - truth)).sum()
    return (output.argmax(dim=1, one_hot=True) * labels).sum()


def _loss_module(name: str, reveal: bool) -> Any:
    loss = losses.get(name)
    module = getattr(crypten.nn, loss.crypten_module)
    return module(skip_forward=not reveal) if loss.skips_forward else module()


def _zero_share() -> Ring:
    return np.zeros((), dtype=np.int64)


class TrainingRun:
    """A job's secret state on this party: model, optimiser, data."""

    def __init__(self, inputs: RunInputs, plan_dealer_requests: bool = True) -> None:
        spec = inputs.spec
        self.spec = spec
        input_shape = inputs.architecture.input_shape
        self._x = _shared(inputs.features, input_shape)
        self._y = _shared(inputs.labels, (inputs.labels[0].shape[1],))
        self._validation = None
        if inputs.validation is not None:
            xv, yv = inputs.validation
            self._validation = (_shared([xv], input_shape), _shared([yv], (yv.shape[1],)))
        self._affine: tuple[Any, Any] | None = None
        if spec.standardize:
            with crypten.no_grad():
                scale, shift = standardize(self._x)
                self._x = self._x * scale + shift
                if self._validation is not None:
                    xv, yv = self._validation
                    self._validation = (xv * scale + shift, yv)
            self._affine = (scale, shift)
        self._architecture = inputs.architecture
        self._model = build_shared_model(inputs.architecture, inputs.initial, trainable=True)
        self._optimizer = crypten.optim.SGD(
            self._model.parameters(),
            lr=spec.lr,
            momentum=spec.momentum,
            weight_decay=spec.weight_decay,
        )
        self._loss = _loss_module(spec.loss, spec.reveal_metrics)
        self._dp: DpSgdStep | None = None
        if spec.dp:
            self._dp = DpSgdStep(
                inputs.architecture, spec.loss, spec.dp_clip_norm, inputs.dp_noise_multiplier
            )
        rows = int(self._x.size(0))
        self._plan: Batches = (
            SecretBatches(rows, spec.batch_size, joint_secret_key())
            if spec.dp
            else BatchPlan(rows, spec.batch_size, spec.seed)
        )
        self._dealer_plans = ttp_plan.Plans(plan_dealer_requests)
        num_classes = int(self._y.size(1))
        self._accuracy = accuracy_kind(inputs.architecture.output_shape, num_classes)
        self._loss_sum: Any = None
        self._epoch_started = time.perf_counter()
        self._epoch_samples = 0
        self.steps_total = spec.epochs * self._plan.batches_per_epoch

    def step(self, step: int) -> StepOutcome:
        epoch, batch = self._plan.locate(step)
        if batch == 0:
            self._loss_sum, self._epoch_samples = None, 0
            self._epoch_started = time.perf_counter()
        index = torch.from_numpy(self._plan.indices(step))
        # forward and backward ask the dealer for the same sizes in every step of a batch size:
        # after the first, those requests are planned ahead (the optimiser's are not: its first
        # step, with no momentum buffers yet, asks for less than the later ones)
        with self._dealer_plans.section(len(index)):
            x, y = self._x[index], self._y[index]
            y = losses.get(self.spec.loss).target(y)
            # pairwise max: one comparison round instead of log2(classes) in softmax
            with crypten.cfg.temp_override({"functions.max_method": "pairwise"}):
                if self._dp is not None:  # no loss: reveal_metrics is refused with DP
                    self._dp.gradients(self._model, x, y)
                else:
                    loss = self._loss(self._model(x), y)
                    self._optimizer.zero_grad()
                    loss.backward()
        self._optimizer.step()
        if self.spec.reveal_metrics:
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._epoch_samples += len(index)
        rate = self._epoch_samples / max(1e-9, time.perf_counter() - self._epoch_started)
        last_of_epoch = batch == self._plan.batches_per_epoch - 1
        metrics = self._epoch_metrics(epoch + 1, batch + 1) if last_of_epoch else None
        return StepOutcome(
            epoch + 1,
            batch + 1,
            len(index),
            rate,
            metrics,
            step + 1 >= self.steps_total,
        )

    def _epoch_metrics(self, epoch: int, batches: int) -> EpochMetrics | None:
        if not self.spec.reveal_metrics:
            return None
        mean_loss = self._loss_sum.div(batches).share.numpy().copy()
        correct, rows = _zero_share(), 0
        if self._validation is not None:
            xv, yv = self._validation
            with crypten.no_grad():
                self._model.eval()
                output = self._model(xv)
                self._model.train()
                correct = count_correct(output, yv, self._accuracy).share.numpy().copy()
            rows = int(xv.size(0))
        return EpochMetrics(epoch, mean_loss, correct, rows)

    def trained(self) -> tuple[arch.Architecture, dict[str, Ring]]:
        """The model to register: architecture and this party's parameter shares."""
        shares = parameter_shares(self._architecture, self._model)
        if self._affine is None:
            return self._architecture, shares
        scale, shift = self._affine
        shape = self._architecture.input_shape
        architecture = arch.Architecture(
            (arch.Affine(shape), *self._architecture.layers),
            shape,
            self._architecture.output_shape,
        )
        out = {"0.scale": scale.share.numpy().copy(), "0.shift": shift.share.numpy().copy()}
        for name, value in shares.items():
            index, param = name.split(".", 1)
            out[f"{int(index) + 1}.{param}"] = value
        return architecture, out


def evaluate(
    model: Any, features: Ring, labels: Ring, kind: str, input_shape: tuple[int, ...]
) -> Ring:
    """This party's share of the number of rows ``model`` classifies correctly."""
    x = _shared([features], input_shape)
    y = _shared([labels], (labels.shape[1],))
    with crypten.no_grad():
        correct = count_correct(model(x), y, kind)
    return correct.share.numpy().copy()
