"""The plaintext twin of a secret-shared training job, for comparisons.

Trains a PyTorch model exactly as :mod:`ppml.training.mpc_trainer` does in
MPC (same batch order from the same public seed, same loss, SGD with the
same momentum and weight decay, same standardisation), so tests, the demo
and the benchmark can put the MPC result next to what plaintext training
reaches from the same initial weights.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ppml.proto.jobs import TrainingSpec
from ppml.training.batches import BatchPlan
from ppml.training.mpc_trainer import VARIANCE_FLOOR


def _loss(name: str, output: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    if name == "binary_cross_entropy":
        return nn.functional.binary_cross_entropy_with_logits(output.reshape(-1), labels.float())
    if name == "mse":
        target = nn.functional.one_hot(labels, classes).float()
        return nn.functional.mse_loss(output, target)
    return nn.functional.cross_entropy(output, labels)


def standardizer(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` as the MPC job computes them (population variance plus a floor)."""
    mean = features.mean(0)
    variance = features.var(0, unbiased=False) + VARIANCE_FLOOR
    scale = variance.rsqrt()
    return scale, -mean * scale


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
    if spec.standardize:
        scale, shift = standardizer(x.reshape(len(x), -1))
        x = (x.reshape(len(x), -1) * scale + shift).reshape(x.shape)
    optimiser = torch.optim.SGD(
        model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )
    plan = BatchPlan(len(x), spec.batch_size, spec.seed)
    for step in range(spec.epochs * plan.batches_per_epoch):
        index = torch.from_numpy(plan.indices(step))
        optimiser.zero_grad()
        _loss(spec.loss, model(x[index]), y[index], num_classes).backward()
        optimiser.step()
    model.eval()
    if spec.standardize:
        return nn.Sequential(_Standardize(scale, shift), model).eval()
    return model


class _Standardize(nn.Module):
    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.scale = nn.Parameter(scale, requires_grad=False)
        self.shift = nn.Parameter(shift, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return (x.reshape(len(x), -1) * self.scale + self.shift).reshape(shape)
