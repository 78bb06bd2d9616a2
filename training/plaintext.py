"""The plaintext twin of a secret-shared training job, for comparisons.

Trains a PyTorch model exactly as the MPC trainer (``ppml.servers.mpc.training.trainer``)
does on secret shares (same batch order from the same public seed, same
loss from :mod:`ppml.training.losses`, SGD with the same momentum and weight
decay, same standardisation), so tests, the demo and the benchmark can put
the MPC result next to what plaintext training reaches from the same initial
weights.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ppml.proto.domain.jobs import TrainingSpec
from ppml.proto.domain.layers import Affine
from ppml.training import losses
from ppml.training.batches import BatchPlan
from ppml.training.standardize import standardizer


def train_plaintext(
    model: nn.Module,
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    spec: TrainingSpec,
    num_classes: int,
) -> nn.Module:
    """A trained copy of ``model`` (the argument is left untouched)."""
    model = copy.deepcopy(model).train()
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    loss = losses.get(spec.loss)
    target = loss.target(nn.functional.one_hot(y, num_classes).float())
    standardize = None
    if spec.standardize:
        scale, shift = standardizer(x.reshape(len(x), -1))
        standardize = Affine(tuple(x.shape[1:])).module(nn)
        standardize.load_state_dict(
            {"scale": scale.reshape(x.shape[1:]), "shift": shift.reshape(x.shape[1:])}
        )
        with torch.no_grad():
            x = standardize(x)
    optimiser = torch.optim.SGD(
        model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )
    plan = BatchPlan(len(x), spec.batch_size, spec.seed)
    for step in range(spec.epochs * plan.batches_per_epoch):
        index = torch.from_numpy(plan.indices(step))
        optimiser.zero_grad()
        loss.torch_loss(model(x[index]), target[index]).backward()
        optimiser.step()
    model.eval()
    if standardize is not None:
        return nn.Sequential(standardize, model).eval()
    return model
